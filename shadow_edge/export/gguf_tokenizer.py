"""The tokenizer files of a GGUF base: converted by transformers' own GGUF code, checked, then kept in memory.

A GGUF file carries its tokenizer as metadata (`tokenizer.ggml.*`: vocabulary, merges, token types,
special ids, chat template). transformers turns that into a `tokenizers` backend
(`AutoTokenizer.from_pretrained(dir, gguf_file=NAME)`, integrations/gguf/gguf_tokenizer_mapping.py);
we call exactly that and save it, so the artifact's tokenizer.json gives transformers' ids. The
special ids go into generation_config.json as transformers' config carries them. The files are
written to a private temporary directory, checked there like a HF base's (export/tokenizer_files.py),
read into memory and the directory is removed at once: nothing is left behind on any path.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from shadow_edge.core.gguf_reader import TOKEN_IDS, read_gguf
from shadow_edge.errors import CheckpointError
from shadow_edge.export.tokenizer_files import TokenizerFiles, read_tokenizer_files

LINK_NAME = "model.gguf"  # the file as transformers sees it: alone in a directory, so no other file is picked up


@dataclass(frozen=True)
class GgufTokenizerFiles(TokenizerFiles):
    """Tokenizer files made from a GGUF's metadata, held in memory until the artifact is written."""

    contents: dict[str, bytes] = field(default_factory=dict)

    def copy_to(self, out_dir: Path) -> None:
        for name in self.files:
            (Path(out_dir) / name).write_bytes(self.contents[name])


def _convert(gguf: Path, out: Path, tokenizer_type: str) -> None:
    """transformers' GGUF tokenizer, saved into `out` (tokenizer.json, tokenizer_config.json, chat template)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    src = out.parent / "src"
    src.mkdir()
    (src / LINK_NAME).symlink_to(gguf.resolve())
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # its notes on unparsed keys are not the user's business
    try:
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=LINK_NAME, local_files_only=True)
        tok.save_pretrained(str(out))
    except Exception as e:  # transformers raises ValueError/KeyError/... for tokenizers it cannot build
        raise CheckpointError(f"{gguf}: its tokenizer (tokenizer.ggml.model {tokenizer_type!r}) cannot be converted "
                              f"by transformers ({type(e).__name__}: {str(e)[:200]}); export the model's Hugging Face "
                              "checkpoint instead") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def read_gguf_tokenizer_files(gguf: Path, vocab_size: int) -> TokenizerFiles:
    """The artifact's tokenizer files for a GGUF base, checked as `read_tokenizer_files` checks a directory's."""
    gguf = Path(gguf)
    base = read_gguf(gguf)
    ids = {field_: base.raw_config[field_] for field_ in TOKEN_IDS.values()
           if field_ in base.raw_config and field_ != "unk_token_id"}
    tokenizer_type = base.meta.get("tokenizer.ggml.model")
    del base  # its mapped file
    with tempfile.TemporaryDirectory(prefix="shadow-edge-gguf-") as tmp:
        out = Path(tmp) / "files"
        out.mkdir()
        if tokenizer_type is not None:
            _convert(gguf, out, tokenizer_type)
        if ids:
            (out / "generation_config.json").write_text(json.dumps(ids, indent=2))
        try:
            checked = read_tokenizer_files(out, vocab_size)
        except CheckpointError as e:  # name the user's file, not our temporary one
            raise CheckpointError(str(e).replace(str(out), f"{gguf} (its converted tokenizer)")) from None
        contents = {name: (out / name).read_bytes() for name in checked.files}
    return GgufTokenizerFiles(gguf, checked.files, checked.section, contents)

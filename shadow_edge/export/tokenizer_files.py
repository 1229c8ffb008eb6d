"""The tokenizer, chat template and generation config an artifact carries: checked at export, then copied.

`read_tokenizer_files` refuses at export what the runtime could not use later: a
tokenizer.json that `tokenizers` cannot load, a tokenizer_config.json or
generation_config.json that is not a JSON object or has special tokens of the wrong type,
token ids outside the vocabulary, a chat template that does not compile, and files that are
symlinks out of the base directory (core/safetensors_io.contained_file).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from shadow_edge.core.config_values import token_ids
from shadow_edge.core.safetensors_io import contained_file
from shadow_edge.errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


@dataclass(frozen=True)
class TokenizerFiles:
    """What an artifact gets from the base directory: files to copy and the manifest's `tokenizer` section."""

    base_dir: Path
    files: tuple[str, ...]
    section: dict

    def copy_to(self, out_dir: Path) -> None:
        for name in self.files:
            shutil.copyfile(self.base_dir / name, out_dir / name)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); re-save the tokenizer with save_pretrained") from None


def _object(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); re-save the tokenizer with save_pretrained") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, expected a JSON object; re-save it with "
                              "save_pretrained")
    return data


def _token_text(cfg: dict, key: str, where: Path) -> str | None:
    value = cfg.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise CheckpointError(f"{where}: field `{key}` is {cfg.get(key)!r}; expected a token string, "
                              '{"content": "..."} or null')
    return value


def _chat_template(base_dir: Path, tok_cfg: dict, files: list[str]) -> tuple[str | None, str | None]:
    """(file the template comes from, its source), checked to compile in the runtime's sandbox."""
    from shadow_edge.runtime.chat import compile_template

    if "chat_template.jinja" in files:
        where, source = base_dir / "chat_template.jinja", _text(base_dir / "chat_template.jinja")
    elif "chat_template" in tok_cfg and tok_cfg["chat_template"] is not None:
        where, source = base_dir / "tokenizer_config.json", tok_cfg["chat_template"]
        if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
            if not all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in source):
                raise CheckpointError(f"{where}: field `chat_template` is a list whose items are not "
                                      '{"name": ..., "template": "..."}; fix or remove it')
            named = {t.get("name"): t["template"] for t in source}
            source = named.get("default") or next(iter(named.values()), None)
        if not isinstance(source, str):
            raise CheckpointError(f"{where}: field `chat_template` is {source!r}; expected a Jinja template string")
    else:
        return None, None
    try:
        compile_template(source)
    except Exception as e:  # jinja2.TemplateSyntaxError and friends
        raise CheckpointError(f"{where}: the chat template does not compile ({type(e).__name__}: {str(e)[:200]}); "
                              "fix the template or remove it") from None
    return where.name, source


def read_tokenizer_files(base_dir: Path, vocab_size: int) -> TokenizerFiles:
    """Check what exists of TOKENIZER_FILES in `base_dir`; the special ids come from generation_config.json,
    then config.json, then the tokenizer's own token strings."""
    base_dir = Path(base_dir)
    files = [name for name in TOKENIZER_FILES if (base_dir / name).is_file()]
    for name in files:
        contained_file(base_dir / name, base_dir)
    gen_file, cfg_file, tok_cfg_file = (base_dir / n for n in ("generation_config.json", "config.json",
                                                              "tokenizer_config.json"))
    gen, cfg, tok_cfg = _object(gen_file), _object(cfg_file), _object(tok_cfg_file)
    _object(base_dir / "special_tokens_map.json")
    vocab: dict[str, int] = {}
    if "tokenizer.json" in files:
        try:
            vocab = Tokenizer.from_file(str(base_dir / "tokenizer.json")).get_vocab(with_added_tokens=True)
        except Exception as e:  # tokenizers raises plain Exception
            raise CheckpointError(f"{base_dir / 'tokenizer.json'}: not a tokenizer the runtime can load ({str(e)[:200]}); "
                                  "re-save it with the tokenizer's save_pretrained") from None

    def ids(key: str) -> list[int]:
        where = gen_file if key in gen else cfg_file
        found = token_ids(gen[key] if key in gen else cfg.get(key), str(where), key)
        for i in found:
            if i >= vocab_size:
                raise CheckpointError(f"{where}: `{key}` {i} is outside the model's vocabulary (vocab_size "
                                      f"{vocab_size}); fix the id")
        return found

    tokens = {key: _token_text(tok_cfg, key, tok_cfg_file) for key in SPECIAL_TOKENS}

    def from_tokenizer(key: str) -> list[int]:
        if tokens[key] not in vocab:
            return []
        i = vocab[tokens[key]]
        if i >= vocab_size:
            raise CheckpointError(f"{tok_cfg_file}: `{key}` {tokens[key]!r} is token {i} of tokenizer.json, outside "
                                  f"the model's vocabulary (vocab_size {vocab_size}); the tokenizer does not belong "
                                  "to this model")
        return [i]

    eos = ids("eos_token_id") or from_tokenizer("eos_token")
    pad = ids("pad_token_id")[:1] or from_tokenizer("pad_token")
    bos = ids("bos_token_id")[:1]
    template_file, _ = _chat_template(base_dir, tok_cfg, files)
    return TokenizerFiles(base_dir, tuple(files), {
        "files": files,
        "has_tokenizer": "tokenizer.json" in files,
        "eos_token_ids": eos,
        "pad_token_id": pad[0] if pad else (eos[0] if eos else 0),
        "bos_token_id": bos[0] if bos else None,
        "has_chat_template": template_file is not None,
        "chat_template_file": template_file,
    })

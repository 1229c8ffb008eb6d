"""Text in and out: the artifact's tokenizer, streaming detokenization and stop strings.

Streaming never emits U+FFFD for a multibyte character split across byte-level BPE tokens:
text that ends in an incomplete character is held back until the character completes,
and text that could be the start of a stop string is held back until it cannot. The
pieces a `TextStream` emits always join to exactly the final text.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from shadow_edge.errors import ArtifactError, InputError
from shadow_edge.manifest import member_path

REPLACEMENT = "\ufffd"


def _token_text(value) -> str | None:
    """tokenizer_config stores special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class TextCodec:
    """The artifact's tokenizer (`tokenizer.json`) plus its config (`tokenizer_config.json`)."""

    def __init__(self, tokenizer: Tokenizer, config: dict):
        self.tokenizer, self.config = tokenizer, config
        self.chat_template: str | None = config.get("chat_template")
        if isinstance(self.chat_template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in self.chat_template if isinstance(t, dict)}
            self.chat_template = named.get("default") or next(iter(named.values()), None)
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.pad_token = _token_text(config.get("pad_token"))

    @classmethod
    def load(cls, art_dir: str | Path, listed) -> "TextCodec | None":
        """The artifact's tokenizer, or None when it has no tokenizer.json (token ids only).

        Only files in `listed` (the manifest's file table, whose hashes `verify` checked) are read:
        a tokenizer or chat template dropped into the artifact afterwards is ignored.
        """
        art_dir = Path(art_dir)
        tok_path, cfg_path, jinja_path = (member_path(art_dir, n) if n in listed else None
                                          for n in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"))
        if tok_path is None or not tok_path.is_file():
            return None
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as e:  # tokenizers raises plain Exception
            raise ArtifactError(f"{tok_path}: cannot load the tokenizer ({e}); re-export the artifact") from None
        config = {}
        try:
            if cfg_path is not None and cfg_path.is_file():
                config = json.loads(cfg_path.read_text(encoding="utf-8"))
                if not isinstance(config, dict):
                    raise ArtifactError(f"{cfg_path}: holds a {type(config).__name__}, expected a JSON object; "
                                        "re-export the artifact")
            if jinja_path is not None and jinja_path.is_file():  # transformers 5 keeps the template beside
                config["chat_template"] = jinja_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{cfg_path}: unreadable ({e}); re-export the artifact") from None
        return cls(tokenizer, config)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # The batch entry points release the GIL while they tokenize (`Tokenizer.encode` holds it: a 4 MB prompt
        # froze the server's event loop for 10 s); `encode_batch_fast` (tokenizers >= 0.21) skips the offsets.
        # Same ids as `encode`.
        batch = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        return batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


class NoTokenizer:
    """Stands in for `TextCodec` when the artifact has no tokenizer.json: ids in, ids out, no text."""

    chat_template = bos_token = eos_token = pad_token = None
    config: dict = {}
    MESSAGE = ("the artifact has no tokenizer.json (the base model directory had none), so {what} is "
               "unavailable; pass token ids (--input-ids 1,2,3) or re-export from a base with a tokenizer")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise InputError(self.MESSAGE.format(what="text input"))

    def decode(self, ids: list[int]) -> str:
        return ""


def find_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the earliest stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def stop_holdback(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class TextStream:
    """Incremental text of one row: `push(token)` returns the new safe text; `finish()` the rest.

    Decodes the row's whole new-token list each time (exact by construction; the tokenizer
    decodes thousands of tokens in well under a millisecond).
    """

    def __init__(self, codec: "TextCodec | NoTokenizer", stops: tuple[str, ...] = (), incremental: bool = True):
        self.codec, self.stops = codec, stops
        self.lazy = not incremental and not stops  # nothing to emit or check per token: decode once at the end
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False  # a stop string appeared; the text is final

    def text(self) -> str:
        """The row's text so far, cut before the first stop string."""
        full = self.codec.decode(self.ids)
        cut = find_stop(full, self.stops) if self.stops else -1
        return full if cut < 0 else full[:cut]

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        if self.lazy:
            return ""
        full = self.codec.decode(self.ids)
        if self.stops:
            cut = find_stop(full, self.stops)
            if cut >= 0:
                self.stopped = True
                return self._emit(full[:cut])
        safe = full.rstrip(REPLACEMENT)  # an incomplete UTF-8 character decodes to U+FFFD
        if self.stops:
            safe = safe[:len(safe) - stop_holdback(safe, self.stops)]
        return self._emit(safe)

    def finish(self) -> str:
        return self._emit(self.text(), final=True)

    def _emit(self, safe: str, final: bool = False) -> str:
        if not safe.startswith(self.emitted):
            # Decoding is not prefix-stable here (rare normalizers); wait for the final text.
            if not final:
                return ""
            piece = safe[len(self.emitted):]  # best effort: cannot unsay emitted text
        else:
            piece = safe[len(self.emitted):]
        self.emitted += piece
        return piece

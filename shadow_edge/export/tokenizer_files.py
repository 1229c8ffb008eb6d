"""Copy the tokenizer, chat template and generation config next to the graphs; read special ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def copy_tokenizer_files(base_dir: Path, out_dir: Path) -> dict:
    """Copy what exists of TOKENIZER_FILES; return the manifest's `tokenizer` section."""
    copied = [name for name in TOKENIZER_FILES if (base_dir / name).is_file()]
    for name in copied:
        shutil.copyfile(base_dir / name, out_dir / name)
    gen, cfg = _read(base_dir / "generation_config.json"), _read(base_dir / "config.json")
    tok_cfg = _read(base_dir / "tokenizer_config.json")
    vocab = _token_ids(base_dir / "tokenizer.json")
    eos = _ids(gen.get("eos_token_id", cfg.get("eos_token_id")))
    if not eos and isinstance(tok_cfg.get("eos_token"), str) and tok_cfg["eos_token"] in vocab:
        eos = [vocab[tok_cfg["eos_token"]]]
    pad = gen.get("pad_token_id", cfg.get("pad_token_id"))
    if pad is None and isinstance(tok_cfg.get("pad_token"), str):
        pad = vocab.get(tok_cfg["pad_token"])
    template = None
    if "chat_template.jinja" in copied:
        template = "chat_template.jinja"
    elif isinstance(tok_cfg.get("chat_template"), str):
        template = "tokenizer_config.json"
    return {
        "files": copied,
        "has_tokenizer": "tokenizer.json" in copied,
        "eos_token_ids": eos,
        "pad_token_id": int(pad) if pad is not None else (eos[0] if eos else 0),
        "bos_token_id": _ids(gen.get("bos_token_id", cfg.get("bos_token_id")))[:1][0]
        if _ids(gen.get("bos_token_id", cfg.get("bos_token_id"))) else None,
        "has_chat_template": template is not None,
        "chat_template_file": template,
    }


def _token_ids(tokenizer_json: Path) -> dict[str, int]:
    data = _read(tokenizer_json)
    ids = {t["content"]: t["id"] for t in data.get("added_tokens", []) if "content" in t}
    vocab = data.get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        ids = {**vocab, **ids}
    return ids

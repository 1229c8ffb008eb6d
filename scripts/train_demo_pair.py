"""Train the demo pair: a small Qwen3 base on the KJV + WordNet's English + a shadow-peft adapter on fortunes.

The recipe behind `shadow_edge/demo_model/` (see README, "The demo model"). One script, fixed
seeds, CPU only:

  1. corpora: for the base, the KJV text of Debian's `bible-kjv-text` (dumped with the `bible`
     program of `bible-kjv`) and the glosses and example sentences of Debian's `wordnet-base`
     (modern English); for the adapter, the cookie files of Debian's `fortunes`. Or UTF-8 text
     files instead (`--base-text`, repeatable, and `--adapter-text`). Each corpus is split into
     train / held-out deterministically;
  2. a byte-level BPE tokenizer (`tokenizers`) trained on the base corpora;
  3. a Qwen3ForCausalLM base trained from scratch on the base corpora (plain AdamW loop; each
     window comes from one corpus picked uniformly, so the corpora weigh equally whatever their size);
  4. a ShadowPEFT adapter trained with shadow-peft itself (`get_shadow_model` +
     `ShadowForCausalLM`) on the adapter corpus, backbone frozen;
  5. both saved as users get them: HF base dir (config, model.safetensors, tokenizer files)
     and a shadow-peft adapter dir; held-out samples written next to them.

    apt-get install -y bible-kjv wordnet-base fortunes
    nice python scripts/train_demo_pair.py --out shadow_edge/demo_model --force

`--base DIR` skips steps 2-3 and reuses a base this script trained (tokenizer and weights copied
unchanged); the adapter is seeded on its own, so it comes out the same as in the full run.

Export side only (torch, transformers, shadow-peft); never imported by the runtime.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from shadow_edge.core.tiny import CHAT_TEMPLATE, train_bpe

FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_PER_DOC = 8  # WordNet entries per document (neighbouring synsets share a topic)
# Cookie files of `fortunes` used for the adapter: prose and one-liners (no ascii art, code or edgy files).
FORTUNE_FILES = ("computers", "cookie", "definitions", "education", "food", "fortunes", "goedel", "humorists",
                 "kids", "law", "linux", "literature", "love", "magic", "medicine", "miscellaneous", "news",
                 "paradoxum", "people", "pets", "platitudes", "riddles", "science", "songs-poems", "sports",
                 "startrek", "tao", "wisdom", "work", "zippy")
HELDOUT_EVERY = 20  # every 20th document (KJV: chapter, WordNet: WORDNET_PER_DOC entries, fortunes: cookie) is held out
SAMPLE_CHARS = 12_000  # size of each committed held-out sample
OUTPUTS = ("base", "adapter", "heldout", "recipe.json")  # what the script writes into --out
BASE_CORPORA = ("kjv", "wordnet")  # default base corpora (see BASE_CORPUS_READERS)
KNOBS = ("vocab_size", "hidden_size", "num_layers", "intermediate_size", "context", "base_steps", "base_batch",
         "base_lr", "adapter_steps", "adapter_batch", "adapter_lr", "num_shadow_layers", "injection_hidden_size",
         "gate_hidden_size", "threads")  # Recipe fields settable on the command line


@dataclass(frozen=True)
class Recipe:
    """Every knob of the recipe (written to recipe.json next to the checkpoints)."""

    seed: int = 1611
    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    context: int = 256
    base_steps: int = 1300
    base_batch: int = 12
    base_lr: float = 3e-3
    adapter_steps: int = 900
    adapter_batch: int = 8
    adapter_lr: float = 3e-3
    num_shadow_layers: int = 2
    injection_hidden_size: int = 64
    gate_hidden_size: int = 64
    alpha: float = 0.1
    shadow_loss_weight: float = 1.0
    threads: int = 1

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, (int, float)) and value <= 0 and name != "seed":
                raise ValueError(f"recipe field {name} is {value}; expected > 0")
        if self.num_shadow_layers >= self.num_layers:
            raise ValueError(f"num_shadow_layers {self.num_shadow_layers} must be < num_layers {self.num_layers}")


# ---------------------------------------------------------------- corpora


def kjv_chapters() -> list[str]:
    """The KJV from Debian's bible-kjv (`bible` program), one document per chapter, verse numbers dropped."""
    if shutil.which("bible") is None:
        sys.exit("error: the `bible` program is missing; apt-get install -y bible-kjv (or pass --base-text FILE)")
    text = subprocess.run(["bible", "-l0", "gen1:1-rev22:21"], check=True, capture_output=True,
                          text=True).stdout
    chapters, cur = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        if head.isdigit() and rest:
            cur.append(rest)
        elif cur:  # a chapter heading ("Genesis 2") ends the previous chapter
            chapters.append("\n".join(cur))
            cur = []
    if cur:
        chapters.append("\n".join(cur))
    return chapters


def fortune_cookies() -> list[str]:
    """The cookies of Debian's `fortunes` (FORTUNE_FILES), one document each, whitespace collapsed.

    The files indent and wrap text with runs of spaces and tabs; kept, those runs dominate
    the token stream and a small model learns to emit whitespace."""
    if not FORTUNE_DIR.is_dir():
        sys.exit(f"error: {FORTUNE_DIR} is missing; apt-get install -y fortunes (or pass --adapter-text FILE)")
    docs = []
    for name in FORTUNE_FILES:
        raw = (FORTUNE_DIR / name).read_text(encoding="utf-8", errors="replace")
        docs += [" ".join(d.split()) for d in raw.split("\n%\n") if d.strip()]  # one line, single spaces
    return docs


def wordnet_docs() -> list[str]:
    """Debian's WordNet 3.0 (`wordnet-base`) as English prose: per synset "word: gloss. Example sentences."

    One entry per synset of data.{noun,verb,adj,adv} in file order; WORDNET_PER_DOC neighbouring
    entries (same lexicographer file, so one topic) make one document."""
    if not (WORDNET_DIR / "data.noun").is_file():
        sys.exit(f"error: {WORDNET_DIR}/data.noun is missing; apt-get install -y wordnet-base "
                 "(or pass --base-text FILE)")
    entries = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET_DIR / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
            head, sep, gloss = line.partition(" | ")
            if line.startswith("  ") or not sep:  # the license header, or a synset without a gloss
                continue
            word = re.sub(r"\(.*\)$", "", head.split()[4]).replace("_", " ")  # "dog", "big(a)" -> "big"
            parts = [part.strip() for part in gloss.strip().split(";") if part.strip()]
            definition = "; ".join(part for part in parts if not part.startswith('"'))
            examples = [part.strip('"').strip() for part in parts if part.startswith('"')]
            sentences = [e[0].upper() + e[1:] + ("" if e[-1] in ".!?" else ".") for e in examples if e]
            entries.append(" ".join([f"{word}: {definition}.", *sentences]))
    return ["\n".join(entries[i:i + WORDNET_PER_DOC]) for i in range(0, len(entries), WORDNET_PER_DOC)]


BASE_CORPUS_READERS = {"kjv": kjv_chapters, "wordnet": wordnet_docs}  # --base-corpora NAME -> documents


def text_file_docs(path: str) -> list[str]:
    """Documents of a UTF-8 text file: paragraphs separated by blank lines."""
    return [d.strip("\n") for d in Path(path).read_text(encoding="utf-8").split("\n\n") if d.strip()]


def split_docs(docs: list[str]) -> tuple[list[str], list[str]]:
    """Deterministic train / held-out split: every HELDOUT_EVERY-th document is held out."""
    held = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    train = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    return train, held or docs[-1:]


# ---------------------------------------------------------------- tokenizer + data


def token_stream(tok, docs: list[str]) -> torch.Tensor:
    """All documents as one id stream, each followed by <|endoftext|>."""
    eot = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids += enc.ids + [eot]
    return torch.tensor(ids, dtype=torch.long)


def batches(streams: list[torch.Tensor], batch: int, context: int, gen: torch.Generator):
    """Random windows of `context` tokens: yields (input_ids [b, ctx], labels [b, ctx]) forever.

    Each window comes from one stream picked uniformly (corpora weigh equally, whatever their
    size). Labels equal the inputs: transformers and shadow-peft shift them inside their losses."""
    span = context
    streams = [s.repeat(span // len(s) + 2) if len(s) <= span else s for s in streams]
    while True:
        picks = torch.randint(0, len(streams), (batch,), generator=gen).tolist()
        wins = []
        for k in picks:
            start = int(torch.randint(0, len(streams[k]) - span, (1,), generator=gen))
            wins.append(streams[k][start:start + span])
        win = torch.stack(wins)  # [b, ctx]
        yield win, win


# ---------------------------------------------------------------- training


def lr_at(step: int, steps: int, peak: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))


def train_loop(name: str, params, loss_fn, data, steps: int, peak_lr: float, log, loads: list[float]) -> float:
    """AdamW with warmup + cosine decay; returns the seconds it took and appends the 1-minute load
    average every 25 steps to `loads` (the machine may be shared: recipe.json reports it)."""
    opt = torch.optim.AdamW(params, lr=peak_lr, betas=(0.9, 0.95), weight_decay=0.1)
    t0, loss = time.perf_counter(), float("nan")
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr)
        x, labels = next(data)
        out = loss_fn(x, labels)
        opt.zero_grad(set_to_none=True)
        out.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss = out.item()
        if step % 25 == 0 or step == steps - 1:
            loads.append(os.getloadavg()[0])
            log(f"{name} step {step + 1}/{steps} loss {loss:.3f} ({time.perf_counter() - t0:.0f}s)")
    return time.perf_counter() - t0


def build_base(recipe: Recipe, tok):
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    eot, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    cfg = Qwen3Config(hidden_size=recipe.hidden_size, num_hidden_layers=recipe.num_layers,
                      num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_kv_heads,
                      head_dim=recipe.head_dim, intermediate_size=recipe.intermediate_size,
                      vocab_size=tok.get_vocab_size(), tie_word_embeddings=True,
                      max_position_embeddings=recipe.context, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[eot, im_end], pad_token_id=eot)
    return model


def save_base(model, tok, recipe: Recipe, out: Path) -> None:
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False,
               "model_max_length": recipe.context, "chat_template": CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")


def load_base(path: Path, recipe: Recipe):
    """A base this script trained: (model, tokenizer, record) with the base knobs of DIR/../recipe.json.

    The returned record's "recipe" is `recipe` with the base's knobs (architecture, tokenizer, base
    training) replaced by the ones that trained it; the other entries are the base's measured figures."""
    from tokenizers import Tokenizer
    from transformers import Qwen3ForCausalLM

    prev_path = path / ".." / "recipe.json"
    if not (path / "config.json").is_file() or not prev_path.is_file():
        sys.exit(f"error: --base {path}: expected a base directory this script wrote (config.json, and "
                 f"recipe.json next to it); found none")
    prev = json.loads(prev_path.read_text(encoding="utf-8"))
    adapter_knobs = {"adapter_steps", "adapter_batch", "adapter_lr", "num_shadow_layers", "injection_hidden_size",
                     "gate_hidden_size", "alpha", "shadow_loss_weight", "threads"}
    knobs = {k: v for k, v in prev["recipe"].items() if k not in adapter_knobs}
    record = {"recipe": Recipe(**{**asdict(recipe), **knobs}), "base_reused_from": str(path),
              **{k: prev[k] for k in ("tokenizer_seconds", "base_train_seconds", "base_steps_per_second", "torch")
                 if k in prev}}
    if "torch" in record:
        record["base_torch"] = record.pop("torch")
    model = Qwen3ForCausalLM.from_pretrained(path)
    model.eval()
    return model, Tokenizer.from_file(str(path / "tokenizer.json")), record


def train_adapter(recipe: Recipe, base, stream: torch.Tensor, gen: torch.Generator, log, loads: list[float]):
    """shadow-peft's own adapter: implicit shadow initialized from the base's first layers, backbone frozen."""
    from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model

    cfg = ShadowConfig(num_shadow_layers=recipe.num_shadow_layers,
                       injection_hidden_size=recipe.injection_hidden_size,
                       gate_hidden_size=recipe.gate_hidden_size, alpha=recipe.alpha, dropout=0.1)
    # Start the shadow from the base's first layers and final norm (shadow-peft initializes it at random).
    first = [{k: v.clone() for k, v in base.model.layers[i].state_dict().items()}
             for i in range(recipe.num_shadow_layers)]
    norm = {k: v.clone() for k, v in base.model.norm.state_dict().items()}
    peft = get_shadow_model(base, cfg)  # wraps the base's layers
    for i, state in enumerate(first):
        peft.shadow_model.layers[i].load_state_dict(state)
    peft.shadow_model.norm.load_state_dict(norm)
    model = ShadowForCausalLM(peft, shadow_loss_weight=recipe.shadow_loss_weight)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    log(f"adapter: {sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters")

    def loss_fn(x, labels):
        return model(input_ids=x, labels=labels).loss

    seconds = train_loop("adapter", params, loss_fn, batches([stream], recipe.adapter_batch, recipe.context, gen),
                         recipe.adapter_steps, recipe.adapter_lr, log, loads)
    model.eval()
    return model, seconds


def write_sample(docs: list[str], path: Path) -> None:
    text, out = "", []
    for d in docs:
        if len(text) + len(d) > SAMPLE_CHARS:
            break
        out.append(d)
        text = "\n\n".join(out)
    path.write_text(text + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python scripts/train_demo_pair.py --out shadow_edge/demo_model --force")
    p.add_argument("--out", required=True, help="directory for base/, adapter/, heldout/ and recipe.json")
    p.add_argument("--base-corpora", default=",".join(BASE_CORPORA),
                   help=f"comma-separated base corpora, of {', '.join(BASE_CORPUS_READERS)} (default %(default)s)")
    p.add_argument("--base-text", action="append", metavar="FILE",
                   help="UTF-8 text for the base instead of --base-corpora; repeat for several corpora (each "
                        "weighs equally; its held-out sample is heldout/<file stem>.txt)")
    p.add_argument("--adapter-text", help="UTF-8 text for the adapter (default: Debian fortunes)")
    for f in KNOBS:
        default = getattr(Recipe, f)
        p.add_argument("--" + f.replace("_", "-"), type=type(default), default=default, help=f"default %(default)s")
    p.add_argument("--base", metavar="DIR",
                   help="reuse a base this script trained (e.g. shadow_edge/demo_model/base): its tokenizer and "
                        "weights are copied unchanged and only the adapter is trained; the base's knobs and "
                        "training time come from DIR/../recipe.json")
    p.add_argument("--force", action="store_true",
                   help="replace base/, adapter/, heldout/ and recipe.json in --out (nothing else is touched)")
    args = p.parse_args(argv)
    recipe = Recipe(**{f: getattr(args, f) for f in KNOBS})
    out = Path(args.out)
    ours = [out / name for name in OUTPUTS if (out / name).exists()]
    if ours and not args.force:
        sys.exit(f"error: {out} already holds {', '.join(p_.name for p_ in ours)}; pass --force to replace them")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    torch.set_num_threads(recipe.threads)
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    t_start = time.perf_counter()
    if args.base_text:
        base_docs = {Path(f).stem: text_file_docs(f) for f in args.base_text}
        if len(base_docs) < len(args.base_text):
            sys.exit(f"error: --base-text files {args.base_text} share a file stem; their held-out samples "
                     "(heldout/<stem>.txt) would collide: rename one")
    else:
        names = [n for n in args.base_corpora.split(",") if n]
        unknown = [n for n in names if n not in BASE_CORPUS_READERS]
        if unknown or not names:
            sys.exit(f"error: --base-corpora {args.base_corpora!r}: expected comma-separated names of "
                     f"{', '.join(BASE_CORPUS_READERS)}")
        base_docs = {n: BASE_CORPUS_READERS[n]() for n in names}
    adapter_name = "adapter" if args.adapter_text else "fortunes"
    if adapter_name in base_docs:
        sys.exit(f"error: a base corpus is named {adapter_name!r} like the adapter's held-out sample: rename it")
    adapter_docs = text_file_docs(args.adapter_text) if args.adapter_text else fortune_cookies()
    random.Random(recipe.seed).shuffle(adapter_docs)
    base_split = {n: split_docs(docs) for n, docs in base_docs.items()}  # name -> (train, held-out)
    adapter_train, adapter_held = split_docs(adapter_docs)
    loads: list[float] = []  # 1-minute load averages sampled while training

    if args.base:  # reuse a trained base: its tokenizer and weights, copied byte for byte
        base, tok, base_record = load_base(Path(args.base), recipe)
        recipe = base_record.pop("recipe")
        base_s = tok_s = 0.0
        base_streams = [token_stream(tok, train) for train, _ in base_split.values()]
    else:
        t_tok = time.perf_counter()
        tok = train_bpe([d for train, _ in base_split.values() for d in train], recipe.vocab_size)
        tok_s = time.perf_counter() - t_tok
        base_streams = [token_stream(tok, train) for train, _ in base_split.values()]
        base = build_base(recipe, tok)
        base.train()
        log(f"base: {sum(p.numel() for p in base.parameters()) / 1e6:.2f}M parameters")
        base_params = [p for p in base.parameters() if p.requires_grad]
        base_s = train_loop("base", base_params, lambda x, labels: base(input_ids=x, labels=labels).loss,
                            batches(base_streams, recipe.base_batch, recipe.context, gen), recipe.base_steps,
                            recipe.base_lr, log, loads)
        base.eval()
        base_record = {"tokenizer_seconds": round(tok_s, 1), "base_train_seconds": round(base_s, 1),
                       "base_steps_per_second": round(recipe.base_steps / base_s, 3)}
    adapter_stream = token_stream(tok, adapter_train)
    base_tokens = {n: len(s_) for n, s_ in zip(base_split, base_streams)}
    log(f"tokens: base train {base_tokens}, adapter train {len(adapter_stream)}, vocab {tok.get_vocab_size()}")

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".train-", dir=out))
    try:
        if args.base:
            shutil.copytree(args.base, tmp / "base")
        else:
            save_base(base, tok, recipe, tmp / "base")
        for p_ in base.parameters():
            p_.requires_grad_(False)
        # The adapter's own seed: the same adapter whether the base was just trained or reused (--base).
        torch.manual_seed(recipe.seed + 1)
        adapter_gen = torch.Generator().manual_seed(recipe.seed + 1)
        shadow_model, adapter_s = train_adapter(recipe, base, adapter_stream, adapter_gen, log, loads)
        shadow_model.save_pretrained(tmp / "adapter")
        (tmp / "heldout").mkdir()
        for name, (_, held) in base_split.items():
            write_sample(held, tmp / "heldout" / f"{name}.txt")
        write_sample(adapter_held, tmp / "heldout" / f"{adapter_name}.txt")
        total = time.perf_counter() - t_start
        loads.sort()
        record = {"recipe": asdict(recipe), "base_corpora": list(base_split), **base_record,
                  "adapter_train_seconds": round(adapter_s, 1),
                  "adapter_steps_per_second": round(recipe.adapter_steps / adapter_s, 3),
                  "total_seconds": round(total, 1),
                  "load_average_while_training": {k: round(v, 2) for k, v in (
                      ("min", loads[0]), ("median", loads[len(loads) // 2]), ("max", loads[-1]))},
                  "base_train_tokens": base_tokens, "adapter_train_tokens": len(adapter_stream),
                  "torch": torch.__version__}
        (tmp / "recipe.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for name in OUTPUTS:  # replace only what this script writes (e.g. not the package's __init__.py)
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            (tmp / name).replace(out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # emptied on success; a partial result on failure
    log(f"wrote {out} in {total:.0f}s (base {base_s:.0f}s, adapter {adapter_s:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The embedded default model: a tiny Qwen3 base + shadow-peft adapter, written offline and deterministically.

`write_tiny_default(out_dir)` builds everything from fixed seeds and an embedded corpus:
`out_dir/base/` (HF Qwen3ForCausalLM, byte-level BPE tokenizer, ChatML template,
generation config) and `out_dir/adapter/` (`shadow_config.json` +
`shadow_adapter.safetensors` with the exact keys shadow-peft writes; every weight random
and non-zero, so the injection is live). Used by the tests (the demo runs the trained pair in
`shadow_edge/demo_model`).
shadow-peft itself is not imported: it is a dev-only dependency.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from shadow_edge.errors import CheckpointError

SEED = 20240611
VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SHADOW_CONFIG = {  # shadow-peft's ShadowConfig.to_dict() for a 1-layer implicit shadow
    "alpha": 0.1, "dropout": 0.2, "gate_hidden_size": 10, "injection_hidden_size": 16, "modules_to_save": [],
    "num_shadow_layers": 1, "shadow_head_dim": None, "shadow_intermediate_size": None,
    "shadow_num_attention_heads": None, "shadow_num_key_value_heads": None,
}
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
BASE_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
ADAPTER_FILES = ("shadow_config.json", "shadow_adapter.safetensors")

CORPUS = """\
The small model lives on the edge of the network, close to the people who use it.
A shadow network runs beside a large frozen model and learns what the large model misses.
When the device is offline, the shadow answers alone; when the cloud is near, both work together.
Every morning the baker opens the shop, lights the oven and sets out bread for the street.
The river runs past the old mill, under the stone bridge, and down to the quiet harbour.
Children walk to school along the river, counting boats and talking about the weather.
In the evening the lights come on one by one, and the town grows calm and warm.
A good engineer measures first, changes one thing at a time, and writes down what she finds.
Memory bandwidth decides how fast a model can decode, because every token reads every weight.
The cache keeps the keys and values of earlier tokens, so each new token costs only one step.
Questions are welcome. Answers should be short, clear and correct, and say what they do not know.
The weather today is sunny with a light wind from the west; tomorrow it may rain in the hills.
She opened the window, listened to the birds, and started to write a letter to her brother.
He asked for a cup of tea, a slice of cake, and a table near the window with a view of the sea.
Trains leave the station every hour, and the last one returns just before midnight.
The library is open from nine to five, and the reading room is the quietest place in town.
A tokenizer turns text into numbers, and a model turns numbers into the next word.
Small models are fast and cheap; large models know more; a shadow lets you have a little of both.
Please tell me a story about a fox, a crow and a piece of cheese on a summer afternoon.
Once upon a time there was a little robot who wanted to learn how to paint the sky.
The garden has roses, tomatoes, beans and a tall sunflower that leans toward the light.
Numbers like one, two, three, ten, twenty and one hundred appear in many simple sentences.
What is the capital of France? Paris is the capital of France, and it stands on the Seine.
How are you today? I am well, thank you, and I hope that you are well too.
"""


@dataclass(frozen=True)
class TinyDefault:
    """Where the embedded default model was written."""

    base_dir: Path
    adapter_dir: Path


def train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `texts`; the special tokens get the first ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_tokenizer() -> Tokenizer:
    """The tiny default's tokenizer (~512 tokens), trained on the embedded corpus."""
    return train_bpe(CORPUS.splitlines() * 4, VOCAB_SIZE)


def _write_base(base_dir: Path, tok: Tokenizer) -> None:
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM
    from transformers.utils import logging

    eot, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    cfg = Qwen3Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=32, intermediate_size=128, vocab_size=tok.get_vocab_size(), tie_word_embeddings=True,
                      initializer_range=0.2, max_position_embeddings=512, bos_token_id=eot, eos_token_id=im_end,
                      pad_token_id=eot)
    model = Qwen3ForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    bars_were_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model.save_pretrained(base_dir)
    finally:
        if bars_were_on:
            logging.enable_progress_bar()
    tok.save(str(base_dir / "tokenizer.json"))
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False,
               "model_max_length": 512, "chat_template": CHAT_TEMPLATE}
    (base_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")


def adapter_tensors(base_state: dict[str, torch.Tensor], num_layers: int, hidden: int,
                    gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random shadow-peft adapter tensors for an implicit shadow (layer shapes copied from the base's first layers)."""
    sc = SHADOW_CONFIG
    n, k, g = num_layers - 1, sc["injection_hidden_size"], sc["gate_hidden_size"]

    def rand(*shape: int, around: float = 0.0) -> torch.Tensor:
        return around + 0.2 * torch.randn(*shape, generator=gen)

    out: dict[str, torch.Tensor] = {}
    for name, t in sorted(base_state.items()):
        for i in range(sc["num_shadow_layers"]):
            if name.startswith(f"model.layers.{i}."):
                out["shadow_model." + name[len("model."):]] = rand(*t.shape, around=1.0 if "norm" in name else 0.0)
    out["shadow_model.norm.weight"] = rand(hidden, around=1.0)
    out["shadow_injection_model.injection_downs"] = rand(n, hidden, k)
    out["shadow_injection_model.injection_ups"] = rand(n, k, hidden)
    u = "shadow_update_model."
    for i in range(n):
        out[f"{u}update_gates.{i}.0.weight"] = rand(g, hidden)
        out[f"{u}update_gates.{i}.2.weight"] = rand(hidden, g)
        out[f"{u}update_transforms.{i}.0.weight"] = rand(g, hidden)
        out[f"{u}update_transforms.{i}.3.weight"] = rand(hidden, g)
    out[f"{u}hidden_norm.weight"] = rand(hidden, around=1.0)
    out[f"{u}hidden_norm.bias"] = rand(hidden)
    return {name: t.contiguous() for name, t in out.items()}


def _write_adapter(adapter_dir: Path, base_dir: Path, gen: torch.Generator) -> None:
    from safetensors.torch import load_file

    cfg = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    tensors = adapter_tensors(load_file(str(base_dir / "model.safetensors")), cfg["num_hidden_layers"],
                              cfg["hidden_size"], gen)
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "shadow_config.json").write_text(json.dumps(SHADOW_CONFIG, indent=2, sort_keys=True) + "\n",
                                                    encoding="utf-8")
    save_file(tensors, str(adapter_dir / "shadow_adapter.safetensors"))


def _is_complete(out_dir: Path) -> bool:
    return (all((out_dir / "base" / f).is_file() for f in BASE_FILES)
            and all((out_dir / "adapter" / f).is_file() for f in ADAPTER_FILES))


def _remove_leftover(out_dir: Path) -> None:
    """Remove an incomplete earlier write; refuse to touch a directory holding anything else."""
    names = {p.name for p in out_dir.iterdir()}
    if not names <= {"base", "adapter"}:
        raise CheckpointError(f"{out_dir}: exists and is not a tiny default model (found {sorted(names)}); "
                              "choose an empty or new directory")
    shutil.rmtree(out_dir)


def write_tiny_default(out_dir: str | Path) -> TinyDefault:
    """Write (or reuse, when already complete) the tiny default model under `out_dir`."""
    out_dir = Path(out_dir)
    result = TinyDefault(base_dir=out_dir / "base", adapter_dir=out_dir / "adapter")
    if _is_complete(out_dir):
        return result
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)  # HF initializes weights from the global generator
            _write_base(tmp / "base", build_tokenizer())
        _write_adapter(tmp / "adapter", tmp / "base", torch.Generator().manual_seed(SEED + 1))
        if out_dir.exists() and not _is_complete(out_dir):  # complete = a concurrent writer finished first
            _remove_leftover(out_dir)
        try:
            tmp.rename(out_dir)
        except OSError:
            if not _is_complete(out_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result

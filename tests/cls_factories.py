"""Sequence-classification cases of both trainers, with randomized adapters and heads, and their oracles.

shadow-peft: `ShadowForSequenceClassification` on a *ForSequenceClassification base (trained
`classifier_head` and `shadow_classifier_head` in shadow_modules.safetensors). PEFT: Shadow with
task_type SEQ_CLS (trained `score` via modules_to_save, `shadow_head`). Oracles return label
logits [b, labels] for right-padded batches (the padding both trainers pool correctly).
"""

from __future__ import annotations

import json
import shutil
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from factories import ARCHS, COMMON, randomize_adapter
from peft_factories import LLAMA, QWEN3, randomize_peft

ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}


@dataclass(frozen=True)
class ClsRecipe:
    trainer: str  # "shadow-peft" or "peft"
    arch: str
    base: dict
    config: dict
    with_tokenizer: bool = False  # the tiny default's tokenizer (base vocab follows it): for --text tests


CLS_RECIPES = {
    "sp_qwen3": ClsRecipe("shadow-peft", "qwen3", QWEN3, dict(num_shadow_layers=1, injection_hidden_size=8,
                                                              gate_hidden_size=6), with_tokenizer=True),
    "sp_llama": ClsRecipe("shadow-peft", "llama", LLAMA, dict(num_shadow_layers=2, injection_hidden_size=4,
                                                              gate_hidden_size=4)),
    "peft_qwen3": ClsRecipe("peft", "qwen3", QWEN3, dict(r=4, update_hidden_size=6)),
    "peft_llama_narrow": ClsRecipe("peft", "llama", LLAMA, dict(r=4, shadow_hidden_size=32,
                                                                shadow_num_attention_heads=2)),
}
CLS_CASE_NAMES = tuple(CLS_RECIPES)


@dataclass
class ClsCase:
    name: str
    trainer: str
    base_dir: Path
    adapter_dir: Path
    vocab_size: int
    _oracles: dict = field(default_factory=dict, repr=False)

    @torch.no_grad()
    def oracle_logits(self, mode: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Label logits [b, labels] of the trainer itself; `ids` right-padded with pad id 0."""
        return self._oracle(mode)(input_ids=ids, attention_mask=mask).logits

    def _oracle(self, mode: str):
        if mode not in self._oracles:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                base = transformers.AutoModelForSequenceClassification.from_pretrained(self.base_dir).eval()
                if self.trainer == "shadow-peft":
                    from shadow_peft import ShadowForSequenceClassification

                    self._oracles[mode] = ShadowForSequenceClassification.from_pretrained(
                        base, self.adapter_dir, inference_mode=mode).eval()
                else:
                    from peft import PeftModel

                    attached = PeftModel.from_pretrained(base, self.adapter_dir).eval()
                    self._oracles["base_shadow"] = attached
                    self._oracles["shadow_only"] = attached.base_model.unload_shadow(copy=True).eval()
        return self._oracles[mode]


def _base(recipe: ClsRecipe, seed: int, vocab: int) -> transformers.PreTrainedModel:
    config_cls = getattr(transformers, ARCHS[recipe.arch][0])
    model_cls = getattr(transformers, ARCHS[recipe.arch][1].replace("ForCausalLM", "ForSequenceClassification"))
    cfg = config_cls(**{**COMMON, **recipe.base, "vocab_size": vocab, "pad_token_id": 0, "num_labels": 3,
                        "id2label": ID2LABEL, "label2id": {v: k for k, v in ID2LABEL.items()}})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(cfg).eval()


def make_cls_case(root: Path, name: str, tokenizer_dir: Path | None = None) -> ClsCase:
    """Build case `name` under `root/name`; `tokenizer_dir` supplies tokenizer files for recipes that want them."""
    recipe, seed = CLS_RECIPES[name], zlib.crc32(name.encode())
    out = Path(root) / name
    vocab = recipe.base["vocab_size"]
    if recipe.with_tokenizer:
        vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    base = _base(recipe, seed, vocab)
    base.save_pretrained(out / "base")
    if recipe.with_tokenizer:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_dir / f, out / "base" / f)
    _write_adapter(recipe, base, out / "adapter", seed + 2)
    return ClsCase(name, recipe.trainer, out / "base", out / "adapter", vocab)


def make_cls_adapter(case: ClsCase, out: Path, seed: int) -> ClsCase:
    """Another randomized adapter (heads included) of the case's recipe on the same base, as a case of its own."""
    base = transformers.AutoModelForSequenceClassification.from_pretrained(case.base_dir).eval()
    _write_adapter(CLS_RECIPES[case.name], base, out, seed)
    return ClsCase(case.name, case.trainer, case.base_dir, out, case.vocab_size)


def _write_adapter(recipe: ClsRecipe, base, out: Path, seed: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if recipe.trainer == "shadow-peft":
            from shadow_peft import ShadowConfig, ShadowForSequenceClassification, get_shadow_model

            wrapper = ShadowForSequenceClassification(get_shadow_model(base, ShadowConfig(**recipe.config)))
            randomize_adapter(wrapper.peft_model, seed)
            gen = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():
                for p in (*wrapper.classifier_head.parameters(), *wrapper.shadow_classifier_head.parameters()):
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            wrapper.save_pretrained(out)
        else:
            from peft import ShadowConfig, get_peft_model

            model = get_peft_model(base, ShadowConfig(task_type="SEQ_CLS", **recipe.config))
            randomize_peft(model, seed)
            model.save_pretrained(out)

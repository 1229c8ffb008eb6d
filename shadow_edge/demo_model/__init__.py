"""The shipped demo pair: a small trained Qwen3 base (KJV + WordNet) + a shadow-peft adapter (fortunes), held-out text.

Files (written by scripts/train_demo_pair.py; README, "The demo model"):
  base/      Hugging Face Qwen3ForCausalLM directory (config, model.safetensors, tokenizer files)
  adapter/   shadow-peft adapter directory (shadow_config.json, shadow_adapter.safetensors)
  heldout/   held-out samples of each corpus (never trained on): kjv.txt, wordnet.txt (base), fortunes.txt (adapter)
  recipe.json  the recipe's settings, token counts and measured training time
Paths only (standard library): the runtime may import this.
"""

from pathlib import Path

DEMO_MODEL = Path(__file__).resolve().parent
HELDOUT = {name: DEMO_MODEL / "heldout" / f"{name}.txt" for name in ("kjv", "wordnet", "fortunes")}

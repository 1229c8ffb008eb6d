"""The shipped demo pair: a small trained Qwen3 base (KJV) + a shadow-peft adapter (fortunes), and held-out text.

Files (written by scripts/train_demo_pair.py; README, "The demo model"):
  base/      Hugging Face Qwen3ForCausalLM directory (config, model.safetensors, tokenizer files)
  adapter/   shadow-peft adapter directory (shadow_config.json, shadow_adapter.safetensors)
  heldout/   held-out samples of both domains (never trained on): kjv.txt, fortunes.txt
  recipe.json  the recipe's settings, token counts and measured training time
Paths only (standard library): the runtime may import this.
"""

from pathlib import Path

DEMO_MODEL = Path(__file__).resolve().parent
HELDOUT = {"kjv": DEMO_MODEL / "heldout" / "kjv.txt", "fortunes": DEMO_MODEL / "heldout" / "fortunes.txt"}

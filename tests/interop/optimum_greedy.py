"""Greedy generation with optimum's ORTModelForCausalLM; run in the separate optimum venv by test_interop.py.

usage: python optimum_greedy.py MAX_NEW_TOKENS '[[ART, FILE_NAME|null, [[ids...], ...]], ...]'
For each job: loads ART with `from_pretrained(ART)` (or `file_name=FILE_NAME`), left-pads the
prompts into one batch and generates greedily. Prints one JSON list: per job, the new tokens of each row.
"""

import json
import sys

import torch
from optimum.onnxruntime import ORTModelForCausalLM

max_new, jobs = int(sys.argv[1]), json.loads(sys.argv[2])
results, models = [], {}
for art, file_name, prompts in jobs:
    if (art, file_name) not in models:
        models[art, file_name] = ORTModelForCausalLM.from_pretrained(art, **({"file_name": file_name} if file_name else {}))
    model = models[art, file_name]
    pad = model.generation_config.pad_token_id or 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # [b, width], left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False)
    results.append(out[:, width:].tolist())
print(json.dumps(results))

#!/usr/bin/env bash
# Perplexity drift of quantized variants of the demo pair against its fp32 export, on held-out chats (assistant
# turns): each variant exported without validation (to measure the drift even where validation would refuse it).
# Usage: bash benchmarks/suites/quant_variants.sh FP32_ART OUT_DIR [CHATS]      (FP32_ART: the demo pair exported at fp32)
set -euo pipefail
cd "$(dirname "$0")/../.."
fp32=$1; out=$2; chats=${3:-24}
py=.venv/bin/python
base=$($py -c "from shadow_edge.core.smollm2 import smollm2_checkpoint; print(smollm2_checkpoint())")
mkdir -p "$out"
for v in "int8 32 int8" "int8 16 int8" "int4 32 float32" "int4 32 int8" "int4 16 int8"; do
  set -- $v
  art="$out/$1-b$2-$3"
  [ -d "$art" ] || $py -m shadow_edge.cli export --base "$base" --adapter shadow_edge/demo_model/adapter --out "$art" \
      --quantize "$1" --block-size "$2" --quant-compute "$3" --no-validate --plain-backbone
  echo "== $v"
  $py -m shadow_edge.cli eval "$fp32" --chat shadow_edge/demo_model/heldout/wordnet-chat.jsonl --max-chats "$chats" \
      --compare "$art" --quiet --json "$art.json" | grep -A5 "^drift"
done

#!/usr/bin/env bash
# Create (once) the separate virtual environment with optimum-onnx that tests/interop/test_interop.py runs
# optimum in, and print its python. optimum-onnx 0.1.0 pins transformers < 4.58; shadow-edge needs 5.
# Location: $SHADOW_EDGE_OPTIMUM_VENV, else ~/.cache/shadow-edge/optimum-venv-<hash of the constraints>,
# shared by every clone on the machine and reused across runs (a changed constraints file makes a new one).
# Usage: bash scripts/optimum-venv.sh          -> creates it if needed; prints e.g. /root/.cache/shadow-edge/optimum-venv-1a2b/bin/python
#        bash scripts/optimum-venv.sh --check  -> prints its python if it is ready, else exits 1 (creates nothing; the tests use this)
# `bash scripts/setup.sh ...,optimum` (CI's set-up) runs it.
set -euo pipefail
check=0
[ "${1:-}" != "--check" ] || check=1
cd "$(dirname "$0")/.."
constraints="$PWD/requirements/optimum-constraints.txt"
key="$( (cat "$constraints"; python3 --version) | sha256sum | cut -c1-12)"
venv="${SHADOW_EDGE_OPTIMUM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/shadow-edge/optimum-venv-$key}"
if [ "$check" = 1 ]; then
  [ -f "$venv/.complete" ] || { echo "optimum venv not prepared at $venv: run bash scripts/setup.sh export,dev,optimum" >&2; exit 1; }
  echo "$venv/bin/python"; exit 0
fi
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9  # concurrent test runs wait for one creation
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  started=$SECONDS
  python3 -m venv "$venv"
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints")
  # The CPU build of torch must come first: a plain `torch` requirement can pull a multi-GB CUDA build.
  "${pip[@]}" "torch==2.13.0" >&2
  "${pip[@]}" "optimum-onnx==0.1.0" "onnxruntime" >&2
  touch "$venv/.complete"
  echo "optimum venv created in $((SECONDS - started)) s: $venv" >&2
fi
echo "$venv/bin/python"

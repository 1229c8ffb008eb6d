#!/usr/bin/env bash
# Install what `shadow-edge web` and its browser tests need, skipping what is already there:
# Debian's Chromium (apt-get), Node.js >= 20 + npm (apt-get, if missing) and web/'s pinned npm packages (npm ci).
# Usage: bash scripts/setup-web.sh        (also run by `bash scripts/setup.sh ...,web`; apt-get needs root or sudo)
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local run=()
  [ "$(id -u)" = 0 ] || run=(sudo)
  "${run[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${run[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
{ command -v node && command -v npm; } >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-web: apt-get install ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "error: Node.js $(node --version) is too old for transformers.js 4 (need >= 20); install Node.js 20 or newer" >&2
  exit 2
fi
# npm ci reinstalls from the lock file; skip it while node_modules was installed from this very lock file.
stamp=web/node_modules/.shadow-edge-lock
if ! cmp -s web/package-lock.json "$stamp" 2>/dev/null; then
  echo "setup-web: npm ci in web/" >&2
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
  cp web/package-lock.json "$stamp"
fi

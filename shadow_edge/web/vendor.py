"""The page's JavaScript dependencies, copied from an npm `node_modules` into the site (no CDN at run time).

`web/package.json` + `web/package-lock.json` in the shadow-edge checkout pin them; `bash scripts/setup-web.sh`
runs `npm ci` there. The page imports transformers.js's browser build (`transformers.web.min.js`, which
imports onnxruntime-web by name; index.html's import map points that name at onnxruntime-web's WASM-only
bundle) and onnxruntime-web's WASM binary. The WASM-only build is half the bytes of the WebGPU one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from shadow_edge.errors import InputError

ENV_NODE_MODULES = "SHADOW_EDGE_WEB_NODE_MODULES"
TRANSFORMERS = "@huggingface/transformers"
ORT_WEB = "onnxruntime-web"
VENDOR_DIR = "vendor"


@dataclass(frozen=True)
class Vendored:
    """One file the page needs: its package, its path inside the package, its name under vendor/."""

    package: str
    path: str
    name: str


FILES = (
    Vendored(TRANSFORMERS, "dist/transformers.web.min.js", "transformers.web.min.js"),
    Vendored(ORT_WEB, "dist/ort.wasm.bundle.min.mjs", "ort.wasm.bundle.min.mjs"),
    Vendored(ORT_WEB, "dist/ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.wasm"),
    Vendored(TRANSFORMERS, "LICENSE", "LICENSE.transformers.js.txt"),
)
NOTICE = "NOTICE.txt"  # each vendored package's name, version and license (onnxruntime-web ships no LICENSE file)


def default_node_modules() -> Path:
    """$SHADOW_EDGE_WEB_NODE_MODULES, else `web/node_modules` of the checkout this package lives in."""
    env = os.environ.get(ENV_NODE_MODULES)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "web" / "node_modules"


def package_dir(node_modules: Path, name: str) -> Path:
    """Where Node would resolve `name` from transformers.js: its own node_modules first, then the top level."""
    nested = node_modules / TRANSFORMERS / "node_modules" / name
    return nested if name != TRANSFORMERS and nested.is_dir() else node_modules / name


def versions(node_modules: Path) -> dict[str, str]:
    """The vendored packages' versions; InputError naming the fix when they are not installed."""
    out = {}
    for name in (TRANSFORMERS, ORT_WEB):
        meta = package_dir(node_modules, name) / "package.json"
        try:
            out[name] = _package_json(meta)["version"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"{meta}: not found or unreadable, so the page's JavaScript dependencies are not "
                             f"installed in {node_modules}; run `bash scripts/setup-web.sh` in the shadow-edge "
                             f"checkout (npm ci in web/), or pass --node-modules DIR / set {ENV_NODE_MODULES}") \
                from None
    wanted = _dependency(node_modules, ORT_WEB)
    if wanted and wanted != out[ORT_WEB]:
        raise InputError(f"{node_modules}: {TRANSFORMERS} {out[TRANSFORMERS]} was built against {ORT_WEB} {wanted} "
                         f"but {out[ORT_WEB]} is installed; run `npm ci` in web/ (the lock file pins matching "
                         "versions)")
    return out


def _package_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _dependency(node_modules: Path, name: str) -> str | None:
    try:
        meta = json.loads((node_modules / TRANSFORMERS / "package.json").read_text(encoding="utf-8"))
        return meta.get("dependencies", {}).get(name)
    except (OSError, ValueError):
        return None


def copy_vendor(node_modules: Path, dest: Path) -> dict[str, str]:
    """Copy FILES into `dest` (created); returns the packages' versions."""
    found = versions(node_modules)
    dest.mkdir(parents=True)
    for f in FILES:
        src = package_dir(node_modules, f.package) / f.path
        if not src.is_file():
            raise InputError(f"{src}: missing from {f.package} {found[f.package]}; run `npm ci` in web/ "
                             "(the lock file pins the versions the page was written for)")
        shutil.copyfile(src, dest / f.name)
    lines = [f"{name} {version}, license {_package_json(package_dir(node_modules, name) / 'package.json').get('license')}"
             " (npm registry)" for name, version in found.items()]
    (dest / NOTICE).write_text("Vendored by `shadow-edge web`:\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return found

"""The exporter's fingerprint: a sha256 over the source that decides what an export contains (standard library only).

A cache of exported artifacts (the demo's, the benchmarks') stores it beside each artifact and re-exports when it
changes, so a changed default or graph builder never leaves a stale artifact in use.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# The source that decides what an export contains, relative to the package (adapter_pack.py: which weights are an
# adapter's, which the graphs store in the form a pack replaces; manifest_schema.py, target.py: what the manifest says).
EXPORT_SOURCES = ("core", "export", "io_spec.py", "manifest.py", "manifest_schema.py", "adapter_pack.py", "target.py",
                  "__init__.py")


def exporter_fingerprint() -> str:
    h = hashlib.sha256()
    for rel in EXPORT_SOURCES:
        p = PACKAGE / rel
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(PACKAGE).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]

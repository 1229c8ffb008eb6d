"""The docs site builds with `mkdocs build --strict` (broken links and anchors fail), and the README stays its entry.

The README is the short entry point: at most 200 lines, every relative link resolves, every docs page is linked
from it, and its test set-up command is exactly what CI (.ci/run) runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from .doc_blocks import DOCS, REPO

README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-5000:]}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "export" / "index.html").is_file()


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200, "README.md grew past 200 lines: move the detail into a docs/ page"
    targets = [t for t in LINK.findall(text) if "://" not in t]
    missing = [t for t in targets if not (REPO / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    pages = {p.relative_to(REPO).as_posix() for p in DOCS.glob("*.md")}
    unlinked = pages - {t.split("#")[0] for t in targets}
    assert not unlinked, f"docs pages the README does not link (a newcomer could not find them): {sorted(unlinked)}"


def test_readme_test_command_is_what_ci_runs():
    readme = README.read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    setup_lines = [ln.strip() for ln in readme.splitlines() if ln.strip().startswith("bash scripts/setup.sh")]
    test_lines = [ln for ln in setup_lines if "pytest" in ln]
    assert len(test_lines) == 1, f"expected one test set-up line in README.md, found {test_lines}"
    assert test_lines[0] in ci, f"README's test command {test_lines[0]!r} is not what .ci/run runs:\n{ci}"


def test_repository_paths_named_in_docs_exist():
    """Every file or folder the docs name (`shadow_edge/...`, `tests/...`) exists (installed ones aside)."""
    path = re.compile(r"(?<![\w/.-])((?:shadow_edge|tests|scripts|benchmarks|web|requirements)/[\w./-]*[\w/])")
    missing = sorted({f"docs/{p.relative_to(DOCS)}: {m}" for p in DOCS.rglob("*.md")
                      for m in path.findall(p.read_text(encoding="utf-8"))
                      if not re.search(r"[*<]|node_modules|[A-Z]{3,}", m) and not (REPO / m).exists()})
    assert not missing, "docs name repository paths that do not exist:\n" + "\n".join(missing)

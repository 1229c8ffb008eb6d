"""The benchmark results pages: every relative link resolves and every benchmark command names an existing file.

Covers benchmarks/RESULTS.md (the index) and benchmarks/results/*.md (the topic pages and the suites' generated
summaries). Links may point at files, folders or headings (`page.md#anchor`, GitHub's heading slugs); commands are
`python -m benchmarks.PKG.MOD`, `python benchmarks/FILE.py` (any interpreter path before it) and `bash benchmarks/FILE`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
while not (REPO / "pyproject.toml").is_file():  # the file may move one folder deeper (tests/<area>/)
    REPO = REPO.parent
PAGES = sorted([REPO / "benchmarks" / "RESULTS.md", *(REPO / "benchmarks" / "results").glob("*.md")])

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"python[\w./-]*\s+-m\s+(benchmarks(?:\.\w+)+)")
SCRIPT = re.compile(r"(?:python[\w./-]*|bash|sh)\s+(benchmarks/[\w./-]+)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(page.read_text(encoding="utf-8"))}


def page_id(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def test_the_index_and_topic_pages_exist():
    names = {p.name for p in PAGES}
    assert "RESULTS.md" in names and "glossary.md" in names and "history.md" in names, names


def _links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text(encoding="utf-8")) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page: Path):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading of {dest.name} has the anchor #{anchor}")
    assert not broken, f"{page_id(page)}: broken links (fix the link or the heading):\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_benchmark_commands_name_existing_files(page: Path):
    text = page.read_text(encoding="utf-8")
    missing = []
    for module in MODULE.findall(text):
        rel = Path(*module.split("."))
        if not ((REPO / rel).with_suffix(".py").is_file() or (REPO / rel / "__init__.py").is_file()):
            missing.append(f"python -m {module}: neither {rel}.py nor {rel}/__init__.py exists")
    for script in SCRIPT.findall(text):
        if not (REPO / script).is_file():
            missing.append(f"{script} does not exist")
    assert not missing, f"{page_id(page)}: commands naming no file; fix the command or the path:\n" + "\n".join(missing)


def test_the_checks_catch_a_broken_link_and_a_missing_script(tmp_path: Path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n[ok](p.md#title) [bad](nope.md) [anchor](p.md#nope)\n"
                    "    python benchmarks/no_such_suite.py --x\n    python -m benchmarks.suites.no_such\n", encoding="utf-8")
    targets = _links(page)
    assert targets == ["p.md#title", "nope.md", "p.md#nope"]
    assert "title" in anchors(page) and "nope" not in anchors(page)
    assert SCRIPT.findall(page.read_text()) == ["benchmarks/no_such_suite.py"]
    assert MODULE.findall(page.read_text()) == ["benchmarks.suites.no_such"]


ISSUE_REF = re.compile(r"\bissues? \d+|\(issue:|\bi\d{1,2}(?:-\w+)?'s\b", re.IGNORECASE)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_pages_cite_no_issue_numbers(page: Path):
    """Readers cannot look issues up: a page names the change, the commit or the page instead."""
    hits = [f"line {n}: {line.strip()[:100]}" for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if ISSUE_REF.search(line)]
    assert not hits, f"{page_id(page)} cites issue numbers (name the change or the commit instead):\n" + "\n".join(hits)


def test_the_issue_check_catches_a_reference():
    assert ISSUE_REF.search("Targets (issue 14), run of") and ISSUE_REF.search("i14's graph")
    assert not ISSUE_REF.search("no issues with 2 threads")

"""Every bash/Python block in docs/ is run (marker `run`) or parsed (marker `check`) — docs/contributing.md.

Runnable blocks run page by page, in order, in a fresh directory seeded with the tiny offline model
(shadow_edge/core/tiny.py) and the artifacts the page's `setup` marker names (built once per session).
"""

from __future__ import annotations

import re

import pytest

from .doc_blocks import DOCS, all_pages
from .doc_check import check_python, check_shell, cli_flags, parse_cli
from .doc_run import DocInputs, PageRun

PAGES = all_pages()
RUN_PAGES = [p for p in PAGES if any(b.kind == "run" for b in p.blocks)]


@pytest.fixture(scope="session")
def doc_inputs(tmp_path_factory, tiny_default) -> DocInputs:
    return DocInputs(tmp_path_factory.mktemp("doc_inputs"), tiny_default)


def test_every_block_is_marked_and_markers_are_well_formed():
    problems = [p for page in PAGES for p in page.problems]
    problems += [f"{b.where}: a {b.lang} block without a docs-test marker (run or check; docs/contributing.md)"
                 for page in PAGES for b in page.blocks if b.kind is None]
    assert not problems, "\n".join(problems)
    assert RUN_PAGES, "no runnable block found in docs/"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_check_blocks_parse(page):
    problems = []
    for block in page.blocks:
        if block.kind == "check":
            problems += check_shell(block) if block.lang == "shell" else check_python(block)
    assert not problems, "\n".join(problems)


@pytest.mark.integration  # exports, runs every mode, and serving.md starts a live server
@pytest.mark.parametrize("page", RUN_PAGES, ids=[p.name for p in RUN_PAGES])
def test_run_blocks(page, doc_inputs, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    doc_inputs.seed(workdir, page.setup)
    blocks = [b for b in page.blocks if b.kind == "run"]
    runner = PageRun(workdir, blocks)
    try:
        for block in blocks:
            runner.run(block)
    finally:
        runner.close()


@pytest.mark.parametrize("argv, fragment", [
    (["run", "art/", "--prompt", "x", "--no-such-flag"], "--no-such-flag"),
    (["export", "--base", "b/", "--adapter", "a/", "--out", "o/", "--quantize", "int3"], "int3"),
    (["bench", "art/", "--reps", "many"], "many"),
    (["serve", "art/", "--port", "eighty"], "eighty"),
])
def test_the_check_parser_catches_bad_flags(argv, fragment):
    """The `check` path fails a misspelt flag or value in every subcommand, bench and serve included."""
    problem = parse_cli(argv)
    assert problem is not None and fragment in problem


def test_every_cli_flag_is_documented():
    """A flag no docs page names is a feature a user cannot find: document it in the page of its task."""
    text = "".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))
    missing = [f"shadow-edge {cmd} {flag}" for cmd, flags in sorted(cli_flags().items()) for flag in sorted(flags)
               if not re.search(re.escape(flag) + r"(?![\w-])", text)]
    assert not missing, "flags no page of docs/ mentions (add them to the page of their task): " + ", ".join(missing)

"""The code blocks of docs/*.md with their docs-test markers (see docs/contributing.md): parsed once, no side effects.

A marker is an HTML comment on its own line, `<!-- docs-test: KIND [key=value ...] -->`. `run` and `check` apply to
the next fenced block (only other markers may stand between them); `setup NAMES` applies to the whole page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
MARKER = re.compile(r"^<!--\s*docs-test:\s*(\w+)(.*?)-->\s*$")
FENCE = re.compile(r"^```\s*([\w+-]*)(.*)$")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
PYTHON_LANGS = {"python", "py"}
KINDS = {"run", "check"}


@dataclass
class Block:
    page: str  # docs-relative path, e.g. "run.md"
    line: int  # 1-based line of the opening fence
    lang: str  # "shell" or "python" (other languages are not collected)
    kind: str | None  # "run", "check", or None when the block has no marker (an error the tests report)
    options: dict[str, str]
    code: str

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


@dataclass
class Page:
    name: str
    setup: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # malformed markers, unclosed fences


def _options(text: str) -> tuple[list[str], dict[str, str]]:
    words, opts = [], {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if eq:
            opts[key] = value
        else:
            words.append(word)
    return words, opts


def parse_page(path: Path) -> Page:
    page = Page(path.relative_to(DOCS).as_posix())
    pending: tuple[str, dict[str, str]] | None = None
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        fence = FENCE.match(line)
        if marker:
            kind, (words, opts) = marker.group(1), _options(marker.group(2))
            if kind == "setup":
                page.setup.extend(words)
            elif kind in KINDS:
                if words and words != ["background"]:
                    page.problems.append(f"docs/{page.name}:{i + 1}: unknown words {words} in the marker")
                if words == ["background"]:
                    opts["background"] = "1"
                pending = (kind, opts)
            else:
                page.problems.append(f"docs/{page.name}:{i + 1}: unknown docs-test marker kind {kind!r} "
                                     f"(expected run, check or setup)")
        elif fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                page.problems.append(f"docs/{page.name}:{i + 1}: fence never closed")
                break
            lang = fence.group(1).lower()
            kind_lang = "shell" if lang in SHELL_LANGS else "python" if lang in PYTHON_LANGS else None
            if kind_lang:
                kind, opts = pending if pending else (None, {})
                page.blocks.append(Block(page.name, i + 1, kind_lang, kind, opts, "\n".join(lines[i + 1:end])))
            elif pending:
                page.problems.append(f"docs/{page.name}:{i + 1}: a {pending[0]} marker on a {lang or 'plain'} "
                                     "block (only bash and python blocks are run)")
            pending = None
            i = end
        elif line.strip() and pending:
            page.problems.append(f"docs/{page.name}:{i + 1}: text between a docs-test marker and its block")
            pending = None
        i += 1
    return page


def all_pages() -> list[Page]:
    return [parse_page(p) for p in sorted(DOCS.rglob("*.md"))]


def shell_commands(code: str) -> list[str]:
    """The block's logical lines: `\\` continuations joined, blank lines and whole-line comments dropped."""
    out, buf = [], ""
    for raw in code.splitlines():
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        line = (buf + raw).strip()
        buf = ""
        if line and not line.startswith("#"):
            out.append(line)
    return out

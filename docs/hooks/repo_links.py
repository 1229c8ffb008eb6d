"""MkDocs hook: links from a docs page to repository files outside docs/ (`../benchmarks/RESULTS.md`) are checked.

A missing target is a warning, so `mkdocs build --strict` fails on it like on a broken page link. The link then
points at the file in the repository checkout the site was built in (`site/` lies in the repository root), so
the same Markdown works on a code host (relative to the page's file) and in the built site.
"""

from __future__ import annotations

import html
import logging
import posixpath
import re
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.repo_links")
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    repo = docs_dir.parent
    src_dir = (docs_dir / page.file.src_uri).parent
    depth = page.url.count("/")  # "export/" -> 1; site/ is one level below the repository root

    def rewrite(m: re.Match) -> str:
        text, target, anchor = m.group(1), m.group(2), m.group(3) or ""
        path = (src_dir / target).resolve()
        try:
            rel = path.relative_to(repo).as_posix()
        except ValueError:
            log.warning("%s: link %r leaves the repository", page.file.src_uri, target)
            return m.group(0)
        if path.is_relative_to(docs_dir):
            return m.group(0)  # a page of the site: MkDocs checks it
        if not path.exists():
            log.warning("%s: link %r: %s does not exist in the repository", page.file.src_uri, target, rel)
            return m.group(0)
        href = posixpath.join("../" * (depth + 1), rel) + anchor
        label = html.escape(text.strip("`"))
        label = f"<code>{label}</code>" if text.startswith("`") else label
        return f'<a href="{html.escape(href)}">{label}</a>'

    out, last = [], 0
    for fence in FENCE.finditer(markdown):  # leave code blocks alone
        out.append(LINK.sub(rewrite, markdown[last:fence.start()]))
        out.append(fence.group(0))
        last = fence.end()
    out.append(LINK.sub(rewrite, markdown[last:]))
    return "".join(out)

"""The detached shadow in the browser: `shadow-edge web ART --out DIR` writes a static site (site.py)."""

from shadow_edge.web.options import WebOptions
from shadow_edge.web.site import SITE_FORMAT, write_site

__all__ = ["SITE_FORMAT", "WebOptions", "write_site"]

"""A suite's `python -m` entry: its exit status, and a missing or broken artifact as one `error:` line."""

from __future__ import annotations

from typing import Callable

from shadow_edge.errors import ShadowEdgeError


def run(main: Callable[[], int]) -> None:
    """Exit with main()'s status; a ShadowEdgeError (a missing or broken artifact) as one line, no traceback."""
    try:
        raise SystemExit(main())
    except ShadowEdgeError as e:
        raise SystemExit(f"error: {e}") from None

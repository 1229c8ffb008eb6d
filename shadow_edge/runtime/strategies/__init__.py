"""Generation strategies, found by mode name: every module in this package registers its strategies.

A strategy turns a left-padded prompt batch into per-row tokens (see `base.Strategy`).
Adding one is one new file here that defines a `Strategy` subclass and calls `register`;
`ShadowRuntime`, `GenerationOptions` and the CLI pick it up by its name.
"""

from __future__ import annotations

import importlib
import pkgutil

from shadow_edge.runtime.strategies.base import Strategy, register, registry


def strategy(mode: str) -> Strategy:
    """The strategy registered under `mode` (callers validate the name first)."""
    return registry()[mode]


def mode_names(listed_only: bool = False) -> tuple[str, ...]:
    """Registered mode names in presentation order; listed_only drops benchmark-only modes."""
    return tuple(n for n, s in registry().items() if s.listed or not listed_only)


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Strategy", "register", "strategy", "mode_names"]

"""CLI flags of the generation strategies' own options, generated from their registration (strategies/base.py).

`add_flags(parser)` adds one flag per option (`--cascade-threshold`, `--draft-tokens`, ...; a
strategy's dataclass field's `metadata["help"]` is the help text); `given(args)` returns the
options the user gave, by public name, for `ShadowRuntime.generate(..., **given(args))`.
A flag left out is not passed, so the strategy's own default applies, and a flag of another
mode is refused by the runtime with one clear line.
"""

from __future__ import annotations

import argparse

from shadow_edge.runtime.strategies.base import option_specs

DEST = "strategy_option__"  # argparse dest prefix: never clashes with the command's own flags


def add_flags(parser, modes=None, title: str = "options of a mode (given only with that mode)") -> None:
    """Add the options of all registered strategies (or of `modes`) to `parser` as one argument group."""
    specs = option_specs(modes)
    if not specs:
        return
    group = parser.add_argument_group(title)
    for spec in specs:
        shown = "" if spec.default is None else f" (default {spec.default!r})"  # None: the help says what happens
        kw = dict(dest=DEST + spec.name, default=None, help=spec.help + shown)
        if spec.type is bool:
            group.add_argument(spec.flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            group.add_argument(spec.flag, type=spec.type, metavar=spec.name.upper().split("_")[-1], **kw)


def given(args) -> dict:
    """{public name: value} of the strategy flags given on the command line."""
    return {k[len(DEST):]: v for k, v in vars(args).items() if k.startswith(DEST) and v is not None}

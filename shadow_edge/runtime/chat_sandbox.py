"""The jinja2 sandbox chat templates render in, with limits on time, memory, loops and recursion.

A chat template comes with the artifact, so it is code from whoever made the artifact.
jinja2's sandbox already blocks attribute escapes; on top of it every render is budgeted:

- time: `max_seconds` of wall time, checked at every loop iteration, call, operator and output chunk;
- work: at most `max_steps` loop iterations + calls (every `for` iterable is wrapped in a
  counting iterator at compile time, so nested loops over lists count too);
- memory: no string or list built by `*`, `+`, `~`, `%`, a filter, `range` or a method call may
  exceed `max_length` items, and integer arguments above it (`'x'.ljust(10**9)`) are refused
  before the call; format strings with huge widths are refused; `**` is bounded;
- recursion: at most `max_depth` nested calls (macros, recursive loops);
- output: at most `max_output` characters.
Exceeding a limit raises `TemplateLimitError` naming the limit.
"""

from __future__ import annotations

import contextvars
import math
import re
import time
from dataclasses import dataclass
from functools import wraps

from jinja2 import nodes
from jinja2.visitor import NodeTransformer
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shadow_edge.errors import InputError

_WIDE_FORMAT = re.compile(r"\d{7,}|%[^a-zA-Z%]*\*")  # a width/precision of 7+ digits, or a `*` width


class TemplateLimitError(InputError):
    """A chat template exceeded a render limit (time, steps, size, depth or output)."""


@dataclass(frozen=True)
class TemplateLimits:
    """Budgets of one chat-template render. Real chat templates use a tiny fraction of each."""

    max_seconds: float = 2.0  # wall time of one render
    max_steps: int = 200_000  # loop iterations + calls
    max_length: int = 1_000_000  # longest string / list any operation may build
    max_depth: int = 64  # nested calls (macros, recursive loops)
    max_output: int = 1_000_000  # characters of rendered text

    def __post_init__(self) -> None:
        for name in ("max_seconds", "max_steps", "max_length", "max_depth", "max_output"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise InputError(f"TemplateLimits.{name} is {value!r}; it must be a positive number")


class _Budget:
    """What one render has used so far."""

    def __init__(self, limits: TemplateLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.steps = self.depth = self.output = 0

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > self.limits.max_steps:
            raise TemplateLimitError(f"chat template ran more than {self.limits.max_steps} loop iterations and "
                                     "calls (TemplateLimits.max_steps)")
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"chat template took longer than {self.limits.max_seconds} s "
                                     "(TemplateLimits.max_seconds)")

    def size(self, n: int, what: str) -> None:
        if n > self.limits.max_length:
            raise TemplateLimitError(f"chat template tried to build {what} of {n} items; the limit is "
                                     f"{self.limits.max_length} (TemplateLimits.max_length)")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("shadow_edge_template_budget", default=None)


def _budget() -> _Budget:
    b = _BUDGET.get()
    return b if b is not None else _Budget(TemplateLimits())  # outside `render_limited`: per-operation limits only


def _sized(value, what: str):
    if isinstance(value, (str, list, tuple, dict, bytes)):
        _budget().size(len(value), what)
    return value


def _check_int_args(args, kwargs, what: str) -> None:
    limit = _budget().limits.max_length
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > limit:
            raise TemplateLimitError(f"chat template passed {a} to {what}; integer arguments are limited to "
                                     f"{limit} (TemplateLimits.max_length)")


def _text_len(x) -> int:
    return len(x) if isinstance(x, str) else len(str(x)) if isinstance(x, (int, float)) else 0


def _estimate(name: str, args: list) -> int:
    """Size of the result of the string builders whose output can dwarf their inputs (0 = not one of them)."""
    strs = [a for a in args if isinstance(a, str)]
    seqs = [a for a in args if isinstance(a, (list, tuple))]
    if name in ("join", "sum") and seqs:
        items = seqs[0]
        sep = strs[0] if strs else ""
        return sum(len(x) if isinstance(x, (str, list, tuple)) else _text_len(x) for x in items) \
            + len(sep) * len(items)
    if name == "replace" and len(strs) >= 3:
        text, old, new = strs[:3]
        return len(text) + (text.count(old) if old else len(text) + 1) * max(len(new) - len(old), 0)
    if name == "indent" and strs:
        width = args[1] if len(args) > 1 else 4
        return len(strs[0]) * (1 + (len(width) if isinstance(width, str) else 0))
    return 0


def _precheck(name: str, args, kwargs) -> None:
    _check_int_args(args, kwargs, name)
    if name == "format" and args and isinstance(args[0], str) and _WIDE_FORMAT.search(args[0]):
        raise TemplateLimitError("chat template format string has a field width of 7+ digits or `*`; refused "
                                 "(TemplateLimits.max_length)")
    _budget().size(_estimate(name, [*args, *kwargs.values()]), f"a value ({name})")


def _guard_filter(name: str, fn):
    @wraps(fn)  # keeps jinja's pass_context / pass_environment markers
    def guarded(*args, **kwargs):
        _budget().step()
        if name in ("join", "sum"):  # materialize a lazy input (map, select, ...) so its size can be checked
            args = tuple(list(a) if hasattr(a, "__next__") else a for a in args)
        _precheck(name, [a for a in args if not hasattr(a, "environment")], kwargs)  # skip context/env args
        return _sized(fn(*args, **kwargs), f"a value (filter {name})")
    return guarded


class _Counted:
    """An iterable's iterator that charges one step per item."""

    def __init__(self, iterable):
        self._it = iter(iterable)

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._it)
        _budget().step()
        return item


class _Guard(NodeTransformer):
    """Rewrites the template AST: every `for` iterable is counted, every `~` concatenation is size-checked."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("counted"), [node.iter], [], None, None,
                               lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("concat_checked"), [nodes.List(node.nodes)], [], None, None,
                          lineno=node.lineno)


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox plus the budgets of the module docstring."""

    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def __init__(self, **options):
        super().__init__(**options)
        self.filters = {name: _guard_filter(name, fn) for name, fn in self.filters.items()}
        self.globals["range"] = self.safe_range

    def add_filter(self, name: str, fn) -> None:
        self.filters[name] = _guard_filter(name, fn)

    def compile_source(self, source: str):
        """Parse, guard and compile `source` into a Template."""
        ast = _Guard().visit(self.parse(source))
        return self.template_class.from_code(self, self.compile(ast), self.make_globals(None), None)

    # -- hooks called by the compiled template ---------------------------------------------------
    def counted(self, iterable):
        return _Counted(iterable)

    def concat_checked(self, parts):
        parts = [str(p) for p in parts]
        _budget().size(sum(map(len, parts)), "a string (~)")
        return "".join(parts)

    def safe_range(self, *args):
        _check_int_args(args, {}, "range")
        rng = range(*args)
        _budget().step(1 + len(rng) // 100)  # building it is cheap; iterating it is counted per item
        return _sized(rng, "a range")

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        b = _budget()
        b.step()
        bound = getattr(__obj, "__self__", None)
        _precheck(getattr(__obj, "__name__", "a call"), [bound, *args] if isinstance(bound, str) else args, kwargs)
        if b.depth >= b.limits.max_depth:
            raise TemplateLimitError(f"chat template nested calls deeper than {b.limits.max_depth} (recursion; "
                                     "TemplateLimits.max_depth)")
        b.depth += 1
        try:
            return _sized(super().call(__context, __obj, *args, **kwargs), "a value (call)")
        finally:
            b.depth -= 1

    def wrap_str_format(self, value):
        f_self = getattr(value, "__self__", None)
        if isinstance(f_self, str) and getattr(value, "__name__", "") in ("format", "format_map") \
                and re.search(r"\d{7,}", f_self):
            raise TemplateLimitError("chat template format string has a field width of 7+ digits; "
                                     "refused (TemplateLimits.max_length)")
        return super().wrap_str_format(value)

    def call_binop(self, context, op: str, left, right):
        b = _budget()
        b.step()
        seq = (str, list, tuple)
        if op == "*":
            n, s = (right, left) if isinstance(left, seq) else (left, right)
            if isinstance(s, seq) and isinstance(n, int):
                b.size(len(s) * max(n, 0), "a repeated string or list (*)")
        elif op == "+" and isinstance(left, seq) and isinstance(right, seq):
            b.size(len(left) + len(right), "a string or list (+)")
        elif op == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right * math.log2(abs(left)) > b.limits.max_length:
                raise TemplateLimitError(f"chat template computed {left} ** {right}, a number too large "
                                         "(TemplateLimits.max_length)")
        elif op == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
            raise TemplateLimitError("chat template %-format has a field width of 7+ digits or `*`; refused "
                                     "(TemplateLimits.max_length)")
        return _sized(super().call_binop(context, op, left, right), f"a value ({op})")


def render_limited(template, limits: TemplateLimits, **variables) -> str:
    """Render `template` (from `LimitedEnvironment.compile_source`) within `limits`."""
    token = _BUDGET.set(b := _Budget(limits))
    try:
        out = []
        for chunk in template.generate(**variables):
            b.output += len(chunk)
            if b.output > limits.max_output:
                raise TemplateLimitError(f"chat template output exceeds {limits.max_output} characters "
                                         "(TemplateLimits.max_output)")
            b.step(0)
            out.append(chunk)
        return "".join(out)
    finally:
        _BUDGET.reset(token)

"""Generation options: one frozen dataclass, validated in `__post_init__` (runtime-only, never stored).

`GenerationOptions` holds what every strategy shares (mode, limits, sampling, stop strings, eos,
chat, adapter); a strategy's own options (cascade's threshold, speculative's draft_tokens, ...) live
in the options dataclass registered with it (`Strategy.Options`, runtime/strategies/) and are
passed by their public names (`cascade_threshold=0.4`, `draft_tokens=4`): `strategy_options`
finds their owner, validates them and refuses one that belongs to another mode.
Every check names the field, what was given, what is allowed and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import partial

import numpy as np

from shadow_edge.errors import InputError
from shadow_edge.io_spec import GRAPH_MODES  # noqa: F401  (re-exported: the graph contract's modes)
from shadow_edge.runtime.inputs import as_bool, as_float, as_int, check_text, is_int

CASCADE = "cascade"


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate. Defaults reproduce greedy decoding."""

    mode: str = field(default="base_shadow", metadata={
        "help": "shadow_only (detached shadow alone), base_shadow (backbone + shadow), cascade "
                "(shadow first, base_shadow when the shadow is not confident) or speculative (the shadow "
                "drafts, base_shadow verifies: base_shadow's output, fewer backbone passes)"})
    max_new_tokens: int = field(default=32, metadata={"help": "new tokens to generate per prompt (>= 1)"})
    do_sample: bool = field(default=False, metadata={
        "help": "sample from the (temperature / top-k / top-p shaped) distribution; False = greedy"})
    temperature: float = field(default=1.0, metadata={
        "help": "divides the logits before sampling (> 0); 0 means greedy"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens; 0 = no limit"})
    top_p: float = field(default=1.0, metadata={
        "help": "sample among the smallest set of tokens whose probability reaches top_p, in (0, 1]"})
    seed: int | None = field(default=None, metadata={"help": "seed of the sampler's np.random.Generator"})
    stop: tuple[str, ...] = field(default=(), metadata={
        "help": "stop strings: generation of a row ends when its text contains one; the text is cut "
                "before it"})
    eos: tuple[int, ...] | None = field(default=None, metadata={
        "help": "end-of-sequence token ids (default: the artifact's `tokenizer.eos_token_ids`)"})
    chat: bool = field(default=False, metadata={"help": "wrap the prompt in the artifact's chat template"})
    adapter: str | None = field(default=None, metadata={
        "help": "name of a loaded adapter pack to run with (default: the artifact's own adapter)"})
    strategy: object = field(default=None, metadata={
        "help": "the mode's own options: its registered Options dataclass, or a dict of them by public name "
                "(e.g. {'cascade_threshold': 0.4}); None = its defaults"})
    control: object = field(default=None, compare=False, metadata={
        "help": "a token_loop.Control (deadline, cancellation) that the token loop checks between steps"})

    def __post_init__(self) -> None:
        from shadow_edge.runtime.strategies import mode_names  # the registry imports this module's users

        if not isinstance(self.mode, str) or self.mode not in mode_names():
            raise InputError(f"mode {self.mode!r} is unknown; choose one of {', '.join(mode_names(listed_only=True))}")
        fix = partial(object.__setattr__, self)
        fix("max_new_tokens", as_int(self.max_new_tokens, "max_new_tokens", 1))
        fix("do_sample", as_bool(self.do_sample, "do_sample"))
        fix("chat", as_bool(self.chat, "chat"))
        fix("temperature", as_float(self.temperature, "temperature", ">= 0 (0 = greedy, 1 = unchanged distribution)"))
        if self.temperature < 0:
            raise InputError(f"temperature is {self.temperature!r}; it must be a finite number >= 0 "
                             "(0 = greedy, 1 = unchanged distribution)")
        fix("top_k", as_int(self.top_k, "top_k", 0, " (0 = no limit)"))
        fix("top_p", as_float(self.top_p, "top_p", "in (0, 1] (1 = no limit)"))
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p is {self.top_p!r}; it must be in (0, 1] (1 = no limit)")
        if self.seed is not None:
            fix("seed", as_int(self.seed, "seed", 0, " (or None)"))
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if stop is not None and not isinstance(stop, (list, tuple)):
            raise InputError(f"stop is {self.stop!r}; it must be a string or a list of strings")
        fix("stop", tuple(stop or ()))
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InputError(f"stop contains {s!r}; every stop string must be a non-empty string")
            check_text(s, "stop string")
        if self.eos is not None:
            eos = (self.eos,) if is_int(self.eos) else self.eos
            if not isinstance(eos, (list, tuple, np.ndarray)) or not all(is_int(t) and t >= 0 for t in eos):
                raise InputError(f"eos is {self.eos!r}; it must be a token id or a list of non-negative token ids")
            fix("eos", tuple(int(t) for t in eos))
        if self.adapter is not None and (not isinstance(self.adapter, str) or not self.adapter):
            raise InputError(f"adapter is {self.adapter!r}; it must be the name of a loaded adapter pack (or None)")
        fix("strategy", strategy_options(self.mode, self.strategy))

    @classmethod
    def of(cls, **kwargs) -> "GenerationOptions":
        """Generic fields by name plus any strategy's options by public name:
        `GenerationOptions.of(mode="speculative", max_new_tokens=8, draft_tokens=3)`."""
        own = {f.name for f in fields(cls)}
        generic = {k: v for k, v in kwargs.items() if k in own}
        extra = {k: v for k, v in kwargs.items() if k not in own}
        if extra and generic.get("strategy") is not None:
            raise InputError(f"give the mode's options either as strategy= or by name ({', '.join(extra)}), not both")
        return cls(**generic, **({"strategy": extra} if extra else {}))

    def __getattr__(self, name: str):
        """A strategy option by its public name (`opts.cascade_threshold` when mode is cascade)."""
        if name.startswith("_") or name in ("strategy", "mode"):
            raise AttributeError(name)
        from shadow_edge.runtime.strategies.base import public_names

        options = self.__dict__.get("strategy")
        field_name = public_names(type(options)).get(name) if options is not None else None
        if field_name is None:
            raise AttributeError(f"GenerationOptions has no field or {self.mode} option {name!r}")
        return getattr(options, field_name)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


def strategy_options(mode: str, given) -> object:
    """The Options instance of `mode`'s strategy from `given` (None, that instance, or {public name: value}).

    An option of another strategy is validated by its owner, then refused naming the mode it applies to;
    an unknown name is refused with the valid ones.
    """
    from shadow_edge.runtime.strategies import strategy
    from shadow_edge.runtime.strategies.base import option_owners

    own = strategy(mode)
    if isinstance(given, own.Options):
        return given
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise InputError(f"strategy options are {given!r}; give {own.Options.__name__} or a dict of {mode}'s options")
    owners = option_owners()
    by_owner: dict[str, dict] = {}
    for name, value in given.items():
        if name not in owners:
            valid = ", ".join(sorted(owners)) or "none"
            raise InputError(f"{name} is not an option of any generation mode; strategy options are: {valid}")
        by_owner.setdefault(owners[name].name, {})[name] = value
    for owner_name, values in by_owner.items():
        owner = strategy(owner_name)
        owner.make_options(values)  # its own checks first: a bad value is named as such
        if owner_name != mode:
            name, value = next(iter(values.items()))
            raise InputError(f"{name} is {value!r}, but mode is {mode!r}; {name} applies to mode {owner_name!r} "
                             "only: drop it or use that mode")
    return own.make_options(by_owner.get(mode, {}))

"""Generation options: one frozen dataclass, validated in `__post_init__` (runtime-only, never stored).

Every check names the field, what was given, what is allowed and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    cascade_threshold: float = field(default=0.5, metadata={
        "help": "cascade only: escalate to base_shadow when the shadow's confidence (geometric mean of "
                "its chosen tokens' probabilities) is below this, in [0, 1]"})
    draft_tokens: int | None = field(default=None, metadata={
        "help": "speculative only: tokens the shadow drafts per verify pass (>= 1); None = adaptive (0..8, "
                "from the running acceptance rate)"})

    adapter: str | None = field(default=None, metadata={
        "help": "name of a loaded adapter pack to run with (default: the artifact's own adapter)"})

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
        fix("cascade_threshold", as_float(self.cascade_threshold, "cascade_threshold", "in [0, 1]"))
        if not 0.0 <= self.cascade_threshold <= 1.0:
            raise InputError(f"cascade_threshold is {self.cascade_threshold!r}; it must be in [0, 1]")
        if self.draft_tokens is not None:
            fix("draft_tokens", as_int(self.draft_tokens, "draft_tokens", 1, " (or None for adaptive)"))
            if self.mode != "speculative":
                raise InputError(f"draft_tokens is {self.draft_tokens}, but mode is {self.mode!r}; draft_tokens "
                                 "applies to mode 'speculative' only: drop it or use that mode")
        if self.adapter is not None and (not isinstance(self.adapter, str) or not self.adapter):
            raise InputError(f"adapter is {self.adapter!r}; it must be the name of a loaded adapter pack (or None)")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

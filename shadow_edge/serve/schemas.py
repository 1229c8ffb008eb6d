"""OpenAI request bodies (pydantic) and their translation into one `Job`'s settings.

Validation errors become one 400 naming the field (`param`). Parameters we do not
implement are refused by name rather than silently ignored (n != 1, logprobs, penalties,
logit_bias, echo, suffix, best_of). Extensions beyond OpenAI: `mode` (also as the
`NAME:MODE` model suffix), `ignore_eos`, `top_k`, and each generation mode's own options
(`cascade_threshold`, `draft_tokens`, ...: generated from the strategies' registrations,
`strategy_fields()`; validated by the mode's options dataclass).
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from shadow_edge.serve.api_errors import APIError, bad_param


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=0)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    user: str | None = None
    mode: str | None = None
    ignore_eos: bool = False
    _strategy_options: dict = PrivateAttr(default_factory=dict)  # the mode's own options, by public name

    @property
    def strategy_options(self) -> dict:
        return self._strategy_options

    def refuse_unsupported(self) -> None:
        if self.n != 1:
            raise bad_param("n", f"n is {self.n}; this server returns one choice per request (n=1); send "
                                 "several requests instead")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise bad_param(name, f"{name} is {getattr(self, name)}; penalties are not supported (use 0)")
        if self.logit_bias:
            raise bad_param("logit_bias", "logit_bias is not supported; leave it out")
        if any(not s for s in self.stops):
            raise bad_param("stop", "stop contains an empty string; every stop string must be non-empty")
        if self.stream_options is not None and not self.stream:
            raise bad_param("stream_options", "stream_options is only allowed with stream=true")

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs:
            raise bad_param("logprobs", "logprobs are not supported by this server; leave them out")
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise bad_param("max_completion_tokens", "max_tokens and max_completion_tokens disagree; give one")

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def conversation(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs is not None:
            raise bad_param("logprobs", "logprobs are not supported by this server; leave them out")
        if self.echo:
            raise bad_param("echo", "echo is not supported; leave it out (the response holds new text only)")
        if self.suffix:
            raise bad_param("suffix", "suffix (insertion) is not supported; leave it out")
        if self.best_of not in (None, 1):
            raise bad_param("best_of", f"best_of is {self.best_of}; only 1 is supported")

    @property
    def token_limit(self) -> int:
        return self.max_tokens or 16  # OpenAI's default for /v1/completions

    def one_prompt(self) -> str | list[int]:
        """The single prompt (text or ids); a batch of prompts is refused (send several requests)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise bad_param("prompt", f"prompt holds {len(p)} prompts; send one prompt per request")
            p = p[0]
        if not p:
            raise bad_param("prompt", "prompt is empty; give some text or token ids")
        return p


def strategy_fields() -> tuple[str, ...]:
    """Body fields that are a generation mode's own options (those its registration exposes to servers)."""
    from shadow_edge.runtime.strategies.base import option_specs

    return tuple(s.name for s in option_specs() if s.server)


def parse(model: type[BaseModel], body) -> BaseModel:
    """Validate a JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body is {type(body).__name__}; expected a JSON object")
    options = {k: body[k] for k in strategy_fields() if k in body and body[k] is not None}
    try:
        req = model.model_validate({k: v for k, v in body.items() if k not in options})
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(x) for x in err.get("loc", ()) if not str(x).startswith(("str", "list[", "int", "function"))]
        param = ".".join(loc) or None
        shown = repr(err.get("input"))[:80]
        raise bad_param(param, f"{param or 'body'}: {err.get('msg', 'invalid')} (got {shown})") from None
    req.refuse_unsupported()
    req._strategy_options = options
    return req

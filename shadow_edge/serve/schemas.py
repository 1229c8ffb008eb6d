"""OpenAI request bodies (pydantic) and their translation into one `Job`'s settings.

Validation errors become one 400 naming the field (`param`). Types are strict (JSON's own
types, as OpenAI's API defines them): `max_tokens: true`, `stream: "yes"` or `prompt: [true]`
are refused, not coerced. Parameters we do not implement are refused by name rather than
silently ignored: each request type's `UNSUPPORTED` table lists them with the values that mean
"off" (n != 1, logprobs, penalties, logit_bias, response_format, tools, echo, suffix, best_of, ...).
Extensions beyond OpenAI: `mode` (also as the `NAME:MODE` model suffix), `ignore_eos`, `top_k`,
and each generation mode's own options (`cascade_threshold`, `draft_tokens`, ...: generated from
the strategies' registrations, `strategy_fields()`; validated by the mode's options dataclass).
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, ValidationError

from shadow_edge.serve.api_errors import APIError, bad_param

# Unknown fields are ignored (OpenAI adds fields often); known ones must have JSON's exact type.
STRICT = ConfigDict(extra="ignore", strict=True)
LEAVE_OUT = "leave it out"


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class _Common(BaseModel):
    model_config = STRICT
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

    # field -> (the values that mean "off", why it is refused and what to do): anything else is a 400 naming it
    UNSUPPORTED: ClassVar[dict[str, tuple[tuple, str]]] = {
        "n": ((1,), "this server returns one choice per request (n=1); send several requests instead"),
        "presence_penalty": ((None, 0), "penalties are not supported (use 0)"),
        "frequency_penalty": ((None, 0), "penalties are not supported (use 0)"),
        "logit_bias": ((None, {}), f"logit_bias is not supported; {LEAVE_OUT}"),
    }

    def refuse_unsupported(self) -> None:
        for name, (off, why) in self.UNSUPPORTED.items():
            value = getattr(self, name)
            if value not in off:  # types are strict: 1 is never True, {} never []
                raise bad_param(name, f"{name} is {_short(value)}; {why}")
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
    top_logprobs: int | None = None
    response_format: JsonValue = None
    tools: JsonValue = None
    tool_choice: JsonValue = None
    functions: JsonValue = None
    function_call: JsonValue = None

    UNSUPPORTED: ClassVar[dict[str, tuple[tuple, str]]] = {
        **_Common.UNSUPPORTED,
        "logprobs": ((None, False), f"logprobs are not supported by this server; {LEAVE_OUT}"),
        "top_logprobs": ((None, 0), f"logprobs are not supported by this server; {LEAVE_OUT}"),
        "response_format": ((None, {"type": "text"}), "structured output (JSON mode, json_schema) is not "
                                                      f"supported; {LEAVE_OUT} or use {{\"type\": \"text\"}}"),
        "tools": ((None, []), f"tool calling is not supported by this server; {LEAVE_OUT}"),
        "tool_choice": ((None, "none"), f"tool calling is not supported by this server; {LEAVE_OUT}"),
        "functions": ((None, []), f"function calling is not supported by this server; {LEAVE_OUT}"),
        "function_call": ((None, "none"), f"function calling is not supported by this server; {LEAVE_OUT}"),
    }

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
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

    UNSUPPORTED: ClassVar[dict[str, tuple[tuple, str]]] = {
        **_Common.UNSUPPORTED,
        "logprobs": ((None,), f"logprobs are not supported by this server; {LEAVE_OUT}"),
        "echo": ((False,), f"echo is not supported; {LEAVE_OUT} (the response holds new text only)"),
        "suffix": ((None, ""), f"suffix (insertion) is not supported; {LEAVE_OUT}"),
        "best_of": ((None, 1), "only 1 is supported"),
    }

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


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# a union member or validator tag in a pydantic error location (`str`, `list[int]`, `TextPart`, `function-after[...]`)
_TAG = re.compile(r"^(str|int|float|bool|none|dict\[.*|list\[.*|function-.*|[A-Z]\w*)$")


def parse(model: type[BaseModel], body) -> BaseModel:
    """Validate a JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body is {type(body).__name__}; expected a JSON object")
    options = {k: body[k] for k in strategy_fields() if k in body and body[k] is not None}
    try:
        req = model.model_validate({k: v for k, v in body.items() if k not in options})
    except ValidationError as e:
        errors = e.errors()
        err, loc = errors[0], [str(x) for x in errors[0].get("loc", ())]
        field = [x for x in loc if not _TAG.match(x)]
        param = ".".join(field) or None
        shown = _short(err.get("input"))
        tags = [str(x.get("loc", ())[len(field)]) for x in errors
                if len(x.get("loc", ())) > len(field) and [str(y) for y in x["loc"][:len(field)]] == field
                and _TAG.match(str(x["loc"][len(field)]))]
        if len(set(tags)) > 1:  # a union: no member matched
            why = f"expected one of {', '.join(dict.fromkeys(tags))}"
        else:
            why = err.get("msg", "invalid")
        raise bad_param(param, f"{param or 'body'}: {why} (got {shown})") from None
    req.refuse_unsupported()
    req._strategy_options = options
    return req

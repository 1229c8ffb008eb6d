"""Chat templates: render the artifact's jinja2 template the way transformers' apply_chat_template does.

Same environment (sandboxed, trim_blocks, lstrip_blocks, loopcontrols), same globals
(`raise_exception`, `strftime_now`), same variables (`messages`, `add_generation_prompt`,
`bos_token`, `eos_token`, the other special tokens of tokenizer_config.json, and any extra
keyword such as `enable_thinking`).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.ext import loopcontrols

from shadow_edge.errors import InputError
from shadow_edge.runtime.chat_sandbox import LimitedEnvironment, TemplateLimitError, TemplateLimits, render_limited
from shadow_edge.runtime.inputs import check_text

ROLES_HELP = "each message is a dict with string fields 'role' (system, user, assistant, ...) and 'content'"


class TemplateError(InputError):
    """The chat template raised (e.g. via raise_exception) or could not render the messages."""


def _raise_exception(message: str):
    raise TemplateError(f"chat template: {message}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def compile_template(source: str) -> jinja2.Template:
    env = LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.add_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.compile_source(source)


def check_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(f"chat messages: got {type(messages).__name__}; expected a non-empty list ({ROLES_HELP})")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputError(f"chat messages[{i}] is {m!r}; {ROLES_HELP}")
        check_text(m["content"], f"chat messages[{i}] content")
        check_text(m["role"], f"chat messages[{i}] role")
    return list(messages)


def render_chat(template: str | None, messages, add_generation_prompt: bool = True,
                special_tokens: dict[str, str | None] | None = None, limits: TemplateLimits = TemplateLimits(),
                **extra) -> str:
    """The prompt text for `messages`; `special_tokens` maps bos_token, eos_token, ... to their text.

    Renders in `LimitedEnvironment` within `limits`; any failure of the template is one InputError.
    """
    if not template:
        raise InputError("chat=True but the artifact's tokenizer_config.json has no `chat_template`; "
                         "pass the prompt without --chat / chat=True")
    if not isinstance(template, str):
        raise InputError(f"the artifact's `chat_template` is a {type(template).__name__}, not a template string; "
                         "re-export the artifact or pass the prompt without chat")
    messages = check_messages(messages)
    variables = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    try:
        return render_limited(compile_template(template), limits, messages=messages,
                              add_generation_prompt=add_generation_prompt, **variables, **extra)
    except (TemplateError, TemplateLimitError):
        raise
    except RecursionError:
        raise InputError("the artifact's `chat_template` recursed too deeply; check the template or pass the "
                         "prompt without chat") from None
    except Exception as e:  # jinja2.TemplateError, SecurityError, and whatever a template's Python ops raise
        raise InputError(f"the artifact's `chat_template` failed to render ({type(e).__name__}: "
                         f"{str(e)[:200]}); check the template or pass the prompt without chat") from None

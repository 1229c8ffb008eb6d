"""Issue 8: chat templates render under limits (time, work, size, recursion, output); every template failure
is one InputError; real templates render exactly as transformers renders them."""

from __future__ import annotations

import pytest

from runtime_fixtures import tiny_artifact  # noqa: F401  (fixture)

from shadow_edge.errors import InputError
from shadow_edge.runtime.chat import render_chat
from shadow_edge.runtime.chat_sandbox import TemplateLimitError, TemplateLimits

HI = [{"role": "user", "content": "hi"}]

BOMBS = [  # (template, words of the message)
    ("{{ range(10**9)|list|length }}", "passed 1000000000 to safe_range"),
    ("{{ 'a' * 10**10 }}", "repeated string or list (*) of 10000000000"),
    ("{{ [1] * 10**9 }}", "repeated string or list"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "a string (~)"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
     "a string or list (+)"),
    ("{% set x = range(300)|list %}{% for a in x %}{% for b in x %}{% for c in x %}{% endfor %}{% endfor %}"
     "{% endfor %}", "max_steps"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "max_depth"),
    ("{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}", "max_depth"),
    ("{{ 'a'.ljust(10**9) }}", "passed 1000000000 to ljust"),
    ("{{ 'a'|center(10**9) }}", "to center"),
    ("{{ '{:1000000000}'.format(1) }}", "field width"),
    ("{{ '%1000000000s' % 'a' }}", "field width"),
    ("{{ '%*s' % (1000000000, 'a') }}", "field width"),
    ("{{ '%1000000000s'|format('a') }}", "field width"),
    ("{{ 10 ** 10000000 }}", "too large"),
    ("{{ (['a' * 900000] * 1000)|map('string')|join }}", "(join)"),
    ("{{ '-'.join(['a' * 900000] * 1000) }}", "(join)"),
    ("{{ ('a' * 900000)|replace('a', 'a' * 1000) }}", "(replace)"),
    ("{{ ('\n' * 900000)|indent('a' * 900000) }}", "(indent)"),
    ("{{ ([[1] * 900000] * 1000)|sum(start=[]) }}", "(sum)"),
    ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", "max_output"),
]


@pytest.mark.parametrize("template, words", BOMBS)
def test_template_bombs_hit_a_limit(template, words):
    with pytest.raises(TemplateLimitError) as info:
        render_chat(template, HI)
    assert words in str(info.value) and "chat template" in str(info.value)


def test_time_limit():
    slow = "{% for i in range(50000) %}{{ (messages|tojson)[:0] }}{% endfor %}"
    with pytest.raises(TemplateLimitError, match="longer than 1e-06 s"):
        render_chat(slow, HI, limits=TemplateLimits(max_seconds=1e-6, max_steps=10**9))


@pytest.mark.parametrize("template, words", [
    ("{% for %}", "TemplateSyntaxError"),
    ("{{ 1 + 'a' }}", "TypeError"),
    ("{{ 1 // 0 }}", "ZeroDivisionError"),
    ("{{ ''.__class__.__mro__ }}", "SecurityError"),
    ("{{ nothing() }}", "UndefinedError"),
    ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    ("{{ messages[5]['content'] }}", "UndefinedError"),
])
def test_every_template_failure_is_one_input_error(template, words):
    with pytest.raises(InputError, match=words):
        render_chat(template, HI)


def test_non_string_template():
    with pytest.raises(InputError, match="is a int, not a template string"):
        render_chat(5, HI)


def test_limits_are_validated():
    with pytest.raises(InputError, match="TemplateLimits.max_steps is 0"):
        TemplateLimits(max_steps=0)


# A Qwen3-style template: namespaces, reversed slices, loop variables, macros, string methods, tojson.
QWEN_LIKE = """{%- macro render(content) -%}{%- if content is string -%}{{ content }}{%- else -%}
{%- for part in content -%}{{ part.text }}{%- endfor -%}{%- endif -%}{%- endmacro -%}
{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}
{%- endif %}{{- "# Tools\\n\\n<tools>" }}{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools><|im_end|>\\n" }}{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}
{%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>')) %}
{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}
{%- for message in messages %}{%- set content = render(message.content) %}
{%- if message.role == "user" or (message.role == "system" and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
{%- elif message.role == "assistant" %}{%- set reasoning_content = '' %}
{%- if '</think>' in content %}{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}
{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}{{- '<|im_end|>\\n' }}
{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking is false %}
{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"""

CONVERSATIONS = [
    HI,
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"}, {"role": "user", "content": "and 3+3?"}],
    [{"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "ok"}] * 20,
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("extra", [{}, {"enable_thinking": False}, {"tools": [{"name": "f", "parameters": {}}]}])
def test_real_templates_render_as_transformers_does(conv, extra):
    from transformers.utils.chat_template_utils import render_jinja_template

    theirs = render_jinja_template([conv], chat_template=QWEN_LIKE, add_generation_prompt=True,
                                   **{k: v for k, v in extra.items() if k != "tools"}, tools=extra.get("tools"))
    rendered = theirs[0][0] if isinstance(theirs, tuple) else theirs[0]
    assert render_chat(QWEN_LIKE, conv, True, tools=extra.get("tools"),
                       **{k: v for k, v in extra.items() if k != "tools"}) == rendered


def test_template_bomb_in_an_artifact_is_one_cli_line(tiny_artifact, tmp_path, capsys):
    import json

    from runtime_fixtures import copy_artifact
    from shadow_edge.cli import main
    from shadow_edge.manifest import sha256_file

    art = copy_artifact(tiny_artifact, tmp_path / "art")
    cfg = json.loads((art / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for i in range(10**9) %}{{ i }}{% endfor %}"
    (art / "tokenizer_config.json").write_text(json.dumps(cfg))
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["tokenizer_config.json"] = {"sha256": sha256_file(art / "tokenizer_config.json"),
                                                  "bytes": (art / "tokenizer_config.json").stat().st_size}
    (art / "manifest.json").write_text(json.dumps(manifest))
    assert main(["run", str(art), "--prompt", "hi", "--chat", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: chat template") and err.count("\n") == 1 and "max_length" in err

"""Chat templates: real-world templates render as their models expect; hostile ones
fail with TemplateError, quickly, without eating memory or escaping the sandbox."""

from __future__ import annotations

import json
import re
import resource
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localserve.errors import InvalidOptionError, TemplateError
from localserve.runtime.templates import (
    FALLBACK_TEMPLATE,
    ChatTemplate,
    TemplateLimits,
    strip_leading_bos,
    validate_messages,
)
from localserve.store.gguf import read_gguf
from tests.support.tiny_gguf import CHATML_TEMPLATE, gemma_path

# -- templates in the style of real models (shortened, same constructs) -------------

LLAMA3_TEMPLATE = """\
{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

GEMMA3_TEMPLATE = """\
{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\\n' }}
{%- endif -%}
"""

MISTRAL_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

QWEN25_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Température actuelle d'une ville",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# -- real templates -------------------------------------------------------------------


def test_chatml_renders_every_turn_and_the_generation_prompt() -> None:
    template = ChatTemplate(CHATML_TEMPLATE)
    assert not template.is_fallback
    assert template.render(CHAT) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert template.render(CHAT[:3], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )


def test_chatml_template_read_from_a_gguf(tiny_gguf_path: Path) -> None:
    source = read_gguf(tiny_gguf_path).chat_template
    assert source == CHATML_TEMPLATE
    rendered = ChatTemplate(source).render([{"role": "user", "content": "hello"}])
    assert rendered == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"


def test_llama3_style_template() -> None:
    template = ChatTemplate(LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    rendered = template.render(CHAT, date_string="26 Jul 2024")
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # Without date_string the template asks strftime_now for today's date.
    today = template.render(CHAT[1:2])
    assert re.search(r"Today Date: \d\d [A-Z][a-z]{2} \d{4}\n\n<\|eot_id\|>", today)


def test_strip_leading_bos_with_a_llama3_style_template() -> None:
    bos = "<|begin_of_text|>"
    rendered = ChatTemplate(LLAMA3_TEMPLATE, bos_token=bos).render(CHAT, date_string="1 Jan 2025")
    text, had_bos = strip_leading_bos(rendered, bos)
    assert had_bos
    assert text == rendered[len(bos) :]
    assert text.startswith("<|start_header_id|>system")
    # Only one is removed; text without one, or an empty BOS, is left alone.
    assert strip_leading_bos(bos + bos + "x", bos) == (bos + "x", True)
    assert strip_leading_bos(text, bos) == (text, False)
    assert strip_leading_bos(rendered, "") == (rendered, False)
    chatml = ChatTemplate(CHATML_TEMPLATE, bos_token=bos).render(CHAT)
    assert strip_leading_bos(chatml, bos) == (chatml, False)


def test_gemma3_style_template_folds_the_system_prompt_into_the_first_user_turn() -> None:
    template = ChatTemplate(GEMMA3_TEMPLATE, bos_token="<bos>", eos_token="<eos>")
    assert template.render(CHAT) == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nHow are you?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert template.render(CHAT[1:2], add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n"
    )


def test_gemma3_style_template_rejects_two_user_turns_in_a_row() -> None:
    template = ChatTemplate(GEMMA3_TEMPLATE, bos_token="<bos>")
    messages = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    with pytest.raises(TemplateError) as caught:
        template.render(messages)
    assert "Conversation roles must alternate user/assistant/user/assistant/..." in str(
        caught.value
    )
    assert "\n" not in str(caught.value)


def test_mistral_style_template() -> None:
    template = ChatTemplate(MISTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>")
    rendered = template.render(CHAT)
    assert rendered == (
        "<s> [INST] You are terse.\n\nHi [/INST] Hello!</s> [INST] How are you? [/INST]"
    )
    # The prompt ends where the model starts its answer.
    assert rendered.endswith("[/INST]")
    with pytest.raises(TemplateError, match="must alternate"):
        template.render([{"role": "assistant", "content": "first"}])


def test_qwen25_style_template_with_tools_and_tool_calls() -> None:
    template = ChatTemplate(QWEN25_TEMPLATE, eos_token="<|im_end|>")
    messages = [
        {"role": "user", "content": "Weather in Zürich?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}],
        },
        {"role": "tool", "content": '{"temp_c": 21}'},
    ]
    rendered = template.render(messages, tools=[WEATHER_TOOL])
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    # tojson: ensure_ascii=False, key order kept, ", " and ": " separators, no HTML escaping.
    assert "\n<tools>\n" + json.dumps(WEATHER_TOOL, ensure_ascii=False) + "\n</tools>" in rendered
    assert "Température actuelle d'une ville" in rendered
    assert "<|im_start|>user\nWeather in Zürich?<|im_end|>\n" in rendered
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", '
        '"arguments": {"city": "Zürich"}}\n</tool_call><|im_end|>\n'
    ) in rendered
    assert '<|im_start|>user\n<tool_response>\n{"temp_c": 21}\n</tool_response><|im_end|>\n' in (
        rendered
    )
    assert rendered.endswith("<|im_start|>assistant\n")

    plain = template.render(messages[:1])
    assert "# Tools" not in plain
    assert plain == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWeather in Zürich?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tojson_takes_transformers_arguments() -> None:
    source = (
        "{{ tools[0] | tojson(indent=2) }}|{{ tools[0] | tojson(separators=(',', ':')) }}|"
        "{{ {'b': 1, 'a': '<é>'} | tojson(sort_keys=true) }}|{{ 'é' | tojson(ensure_ascii=true) }}"
    )
    tool = {"name": "f", "list": [1, 2]}
    rendered = ChatTemplate(source).render([], tools=[tool])
    assert rendered.split("|") == [
        json.dumps(tool, indent=2),
        '{"name":"f","list":[1,2]}',
        '{"a": "<é>", "b": 1}',
        '"\\u00e9"',
    ]
    # A filter's lazy result, as llama.cpp's DeepSeek R1 template writes it.
    mapped = "{{ tools | map(attribute='name') | tojson }}"
    assert ChatTemplate(mapped).render([], tools=[tool]) == '["f"]'


def test_extra_variables_documents_and_the_generation_tag() -> None:
    source = (
        "{% if enable_thinking is defined and not enable_thinking %}no-think {% endif %}"
        "{{ documents | length if documents else 'no-docs' }} "
        "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
        "{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"
    )
    template = ChatTemplate(source)
    assert template.render(CHAT[1:3]) == "no-docs [Hi][Hello!]012"
    assert template.render(CHAT[1:2], enable_thinking=False, documents=[{"text": "d"}]) == (
        "no-think 1 [Hi]012"
    )


BARE_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
CALLED = [
    {"role": "user", "content": "Weather?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
]


def test_the_conversation_in_the_shape_the_template_reads() -> None:
    """As llama.cpp adapts a request (template_shapes.py): ``tools`` undefined without
    tools, today's date, ``functions`` for a template that reads it instead of
    ``tools``, and call arguments as JSON text for a template that cannot take them
    as an object."""
    shown = "{{ tools is defined }}|{% for t in tools %}{{ t.function.name }}{% endfor %}"
    assert ChatTemplate(shown).render(CHAT) == "False|"
    assert ChatTemplate(shown).render(CHAT, tools=[]) == "False|"
    assert ChatTemplate(shown).render(CHAT, tools=[BARE_TOOL]) == "True|get_weather"
    dated = ChatTemplate("{{ date_string }}|{{ datetime }}").render(CHAT)
    assert re.fullmatch(r"\d\d [A-Z][a-z]{2} \d{4}\|[A-Z][a-z]{2} \d\d \d{4}", dated), dated
    # Firefunction v2 prints a `functions` JSON text and never reads `tools`.
    functions = ChatTemplate("[{{ functions }}]")
    assert functions.render(CHAT) == "[]"
    listed = json.loads(functions.render(CHAT, tools=[BARE_TOOL])[1:-1])
    assert listed == [BARE_TOOL["function"]]
    # Functionary v3.2 concatenates the arguments; Qwen's tojson wants the object.
    concatenated = ChatTemplate(
        "{% for m in messages %}{% for c in m.tool_calls or [] %}"
        "{{ '>>>' + c.function.name + '\\n' + c.function.arguments }}{% endfor %}{% endfor %}"
    )
    assert concatenated.render(CALLED) == '>>>get_weather\n{"city": "Paris"}'
    assert isinstance(CALLED[1]["tool_calls"][0]["function"]["arguments"], dict)  # untouched
    as_json = ChatTemplate(
        "{% for m in messages %}{% for c in m.tool_calls or [] %}"
        "{{ c.function.arguments | tojson }}{% endfor %}{% endfor %}"
    )
    assert as_json.render(CALLED) == '{"city": "Paris"}'
    # A template that would print the dict's Python repr gets the JSON text too.
    printed = ChatTemplate(
        "{% for m in messages %}{% for c in m.tool_calls or [] %}"
        "{{ c.function.arguments }}{% endfor %}{% endfor %}"
    )
    assert printed.render(CALLED) == '{"city": "Paris"}'


# A tool history as Ollama's API sends it: calls without an id or a type, a result
# with the tool's name and no call id.
OLLAMA_HISTORY = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
        ],
    },
    {"role": "tool", "name": "get_weather", "content": "Sunny"},
    {"role": "tool", "name": "get_weather", "content": "Rainy"},
]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        # Refused a call id of another shape ("Tool call IDs should be alphanumeric
        # strings with length 9!") and a result without one.
        ("mistralai-Mistral-Nemo-Instruct-2407", ('"id": "call00001"', '"call_id": "call00002"')),
        # Refused a call without its type ("Invalid tool call type").
        ("Apertus-8B-Instruct", ('{"get_weather": {"city": "Paris"}}',)),
    ],
)
def test_calls_sent_without_ids_get_them(name: str, shown: tuple[str, ...]) -> None:
    source = (Path(__file__).parents[1] / "support" / "templates" / f"{name}.jinja").read_text()
    rendered = ChatTemplate(source).render(OLLAMA_HISTORY, tools=[BARE_TOOL])
    for text in shown:
        assert text in rendered, rendered
    assert "id" not in OLLAMA_HISTORY[1]["tool_calls"][0]  # the caller's turn is untouched


def test_lists_the_template_writes_may_grow_but_its_data_may_not() -> None:
    # Kimi K2's templates queue call ids in a list of their own and pop them later.
    source = (
        "{%- set queue = namespace(ids=[]) -%}{%- set _ = queue.ids.append('a') -%}"
        "{%- set _ = queue.ids.extend(['b', 'c']) -%}{{ queue.ids.pop(0) }}{{ queue.ids }}"
    )
    assert ChatTemplate(source).render(CHAT) == "a['b', 'c']"
    for refused in (
        "{{ messages.append(1) }}",
        "{{ tools.pop() }}",
        "{% set l = [2, 1] %}{{ l.sort() }}",
    ):
        with pytest.raises(TemplateError, match="unsafe"):
            ChatTemplate(refused).render(CHAT, tools=[{"name": "f"}])


def test_undefined_values_print_empty_but_fail_when_used() -> None:
    assert ChatTemplate("[{{ nothing }}][{{ messages[0].missing }}]").render(CHAT) == "[][]"
    with pytest.raises(TemplateError, match="'nothing' is undefined"):
        ChatTemplate("{{ nothing.at.all }}").render(CHAT)
    with pytest.raises(TemplateError, match="undefined"):
        ChatTemplate("{{ messages[0].missing + 1 }}").render(CHAT)
    # A text plus nothing is the text, as llama.cpp's Jinja adds them (Command R+
    # adds each parameter's optional description); numbers and lists still fail.
    added = "{{ messages[0].missing + 'x' }}|{{ 'y' + none }}|{{ 'z' + nothing }}"
    assert ChatTemplate(added).render(CHAT) == "x|y|z"
    with pytest.raises(TemplateError):
        ChatTemplate("{{ [1] + none }}").render(CHAT)


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("{% for m in messages %}", "line 1"),
        ("hello\n{{ 1 + }}", "line 2"),
        ("{{ x | no_such_filter }}", "no_such_filter"),
        ("{{ x | pprint }}", "pprint"),
        ("{% endfor %}", "endfor"),
    ],
)
def test_broken_templates_fail_at_construction(source: str, where: str) -> None:
    with pytest.raises(TemplateError) as caught:
        ChatTemplate(source)
    assert where in str(caught.value)
    assert "\n" not in str(caught.value)


# -- the fallback -----------------------------------------------------------------------


def test_fallback_format() -> None:
    template = ChatTemplate(None)
    assert template.is_fallback
    assert template.source == FALLBACK_TEMPLATE
    assert template.render(CHAT) == (
        "You are terse.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: How are you?\n\nAssistant:"
    )
    assert template.render(CHAT[:3], add_generation_prompt=False) == (
        "You are terse.\n\nUser: Hi\n\nAssistant: Hello!"
    )
    tool_turn = [{"role": "user", "content": "2+2?"}, {"role": "tool", "content": "4"}]
    assert template.render(tool_turn) == "User: 2+2?\n\nTool: 4\n\nAssistant:"
    assert template.render([]) == "Assistant:"
    assert ChatTemplate("").is_fallback
    assert ChatTemplate("  \n").is_fallback


@pytest.mark.slow
def test_gemma3_270m_has_no_template_so_it_gets_the_fallback() -> None:
    source = read_gguf(gemma_path()).chat_template
    assert source is None
    template = ChatTemplate(source, bos_token="<bos>")
    assert template.is_fallback
    assert template.render(CHAT[1:2]) == "User: Hi\n\nAssistant:"


# -- the sandbox ---------------------------------------------------------------------------

# (payload, the error's words) -- or (payload, None, exact harmless output).
ESCAPES: list[tuple[str, str | None, str]] = [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "'__class__' of 'str'", ""),
    ("{{ ''.__class__.__base__.__subclasses__() }}", "'__class__' of 'str'", ""),
    ("{{ (1).__class__.__subclasses__() }}", "'__class__' of 'int'", ""),
    ("{{ cycler.__init__.__globals__.os }}", "'__init__'", ""),
    ("{{ cycler.__init__.__globals__['os'] }}", "'__init__'", ""),
    ("{{ lipsum.__globals__ }}", "'lipsum' is undefined", ""),
    ("{{ self.__init__.__globals__ }}", "'__init__'", ""),
    ("{{ self._TemplateReference__context }}", "'_TemplateReference__context'", ""),
    ("{{ namespace.__init__.__globals__ }}", "'__init__'", ""),
    ("{{ joiner.__init__.__globals__ }}", "'__init__'", ""),
    ("{{ raise_exception.__globals__ }}", "'__globals__'", ""),
    ("{{ strftime_now.__globals__['sys'] }}", "'__globals__'", ""),
    ("{{ range.__globals__ }}", "'__globals__'", ""),
    ("{{ range.__code__.co_consts }}", "'__code__'", ""),
    ("{{ dict.mro() }}", "'mro'", ""),
    ("{{ messages.__class__.__init__.__globals__ }}", "'__class__' of 'list'", ""),
    ("{{ messages[0].__class__ }}", "'__class__' of 'dict'", ""),
    ("{{ messages.append('x') }}", "'append'", ""),
    ("{{ messages[0].update({'role': 'x'}) }}", "'update'", ""),
    ("{{ config.__class__ }}", "'__class__' of 'Undefined'", ""),
    ("{{ config.items() }}", "'config' is undefined", ""),
    ("{{ request.application.__globals__ }}", "'request' is undefined", ""),
    ("{{ '{0.__class__}'.format(bos_token) }}", "'__class__' of 'str'", ""),
    ("{{ '{0.__class__.__mro__}'.format(messages) }}", "'__class__' of 'list'", ""),
    ("{{ '{0[__class__]}'.format('') }}", "'__class__' of 'str'", ""),
    ("{{ '{x.__init__}'.format_map({'x': cycler}) }}", "'__init__'", ""),
    ("{{ '{0.lower.__self__}'.format('') }}", "'__self__'", ""),
    ("{{ ('{0.__class__}'|attr('format'))('') }}", "'__class__' of 'str'", ""),
    ("{{ ''.format.__globals__ }}", "'__globals__'", ""),
    ("{{ ''|attr('__class__') }}", "'__class__' of 'str'", ""),
    ("{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}", "'__class__' of 'str'", ""),
    ("{{ '%s' % ''.__class__ }}", "'__class__' of 'str'", ""),
    ("{{ ('a'|list|map('upper')).gi_frame }}", "'gi_frame'", ""),
    ("{{ ('a'|list|map('upper')).gi_yieldfrom }}", "'gi_yieldfrom'", ""),
    ("{% include '/etc/passwd' %}", "{% include %} on line 1", ""),
    ("{% import 'os' as os %}{{ os.system('id') }}", "{% import %} on line 1", ""),
    ("{% from 'os' import system %}", "{% from ... import %} on line 1", ""),
    ("{% extends '/etc/passwd' %}", "{% extends %} on line 1", ""),
    # Harmless: names a template might hope for are simply not there.
    (
        "[{{ config }}][{{ request }}][{{ os }}][{{ environment }}][{{ self.os }}]",
        None,
        "[][][][][]",
    ),
    (
        "{% for name in ['os', '__class__'] %}[{{ messages[name] }}]{% endfor %}",
        "'__class__' of 'list'",
        "",
    ),
    ("{{ '{0}'.format(messages[0]['role']) }}", None, "user"),
    # range is jinja's safe_range, a plain function: it has no __self__ to reach.
    ("[{{ range.__self__ }}]", None, "[]"),
]


@pytest.mark.parametrize(("payload", "error", "output"), ESCAPES)
def test_sandbox_escapes_are_refused(payload: str, error: str | None, output: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    if error is None:
        assert ChatTemplate(payload).render(messages) == output
        return
    with pytest.raises(TemplateError) as caught:
        ChatTemplate(payload).render(messages)
    message = str(caught.value)
    assert error in message
    assert "\n" not in message
    assert "<class" not in message
    assert "<module" not in message
    assert "root:" not in message  # /etc/passwd


def test_attribute_refusals_say_it_is_the_sandbox() -> None:
    with pytest.raises(TemplateError) as caught:
        ChatTemplate("{{ cycler.__init__ }}").render([])
    assert str(caught.value) == (
        "chat template broke the sandbox: access to attribute '__init__' of 'type' object is unsafe"
    )


# -- bombs ---------------------------------------------------------------------------------

BOMBS: dict[str, tuple[str, str]] = {
    "nested empty loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "took longer than 1 s",
    ),
    "recursive macro": (
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "recursed too deeply",
    ),
    "exponential macro": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",
        "took longer than 1 s",
    ),
    "string repetition": ("{{ 'a' * 10**9 }}", "'*' would make 1000000000"),
    "list repetition": ("{{ [1] * 10**9 }}", "'*' would make 1000000000"),
    "power": ("{{ 10 ** (10 ** 10) }}", "'**' would make an integer"),
    "power tower": ("{{ 10 ** 10 ** 10 ** 10 ** 10 }}", "'**' would make an integer"),
    "squaring in a loop": (
        "{% set ns = namespace(x=3) %}{% for i in range(100) %}{% set ns.x = ns.x * ns.x %}"
        "{% endfor %}{{ ns.x }}",
        "'*' would make an integer",
    ),
    "doubling with +": (
        "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}{{ ns.s }}",
        "'+' would make 2097152",
    ),
    "doubling with ~": (
        "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s }}",
        "'~' would make",
    ),
    "output flood": (
        "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        "the output passed 1048576 characters",
    ),
    "literal output flood": (
        "{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}"
        "{% endfor %}",
        "the output passed 1048576 characters",
    ),
    "set block hoard": (
        "{% set x %}{% for i in range(100000) %}{% for j in range(100000) %}{{ 'a' * 1000 }}"
        "{% endfor %}{% endfor %}{% endset %}{{ x | length }}",
        "built more than 16777216 characters",
    ),
    "macro literal hoard": (
        "{% macro m() %}{% for i in range(100000) %}{% for j in range(100000) %}" + "L" * 1000 + ""
        "{% endfor %}{% endfor %}{% endmacro %}{{ m() | length }}",
        "built more than 16777216 characters",
    ),
    "slice hoard": (
        "{% set big = 'a' * 1000000 %}{% set ns = namespace(l=[]) %}"
        "{% for i in range(100000) %}{% set ns.l = ns.l + [big[i:]] %}{% endfor %}",
        "built more than 16777216 characters",
    ),
    "printing a shared big string": (
        "{% set big = ['a' * 1000000] * 100000 %}{{ big }}",
        "printing a list would take more than 1048576 characters",
    ),
    "joining a shared big string": (
        "{{ (['a' * 1000000] * 100000) | join }}",
        "join would make",
    ),
    "tojson of a shared big string": (
        "{{ (['a' * 1000000] * 100000) | tojson }}",
        "tojson would make",
    ),
    "summing shared lists": (
        "{{ ([[0] * 100000] * 1000) | sum(start=[]) | length }}",
        "printing a list would take",
    ),
    "format width": ("{{ '{:>999999999}'.format('x') }}", "the format asks for widths"),
    "nested format width": ("{{ '{:>{}}'.format('x', 999999999) }}", "the format asks for widths"),
    "percent width": ("{{ '%999999999s' % 'x' }}", "the format asks for widths"),
    "percent star width": ("{{ '%*s' % (999999999, 'x') }}", "'%' formatting would make"),
    "format filter width": ("{{ '%999999999s' | format('x') }}", "the format asks for widths"),
    "center filter": ("{{ 'x' | center(999999999) }}", "too large"),
    "center method": ("{{ 'x'.center(999999999) }}", "too large"),
    "int to_bytes": ("{{ (1).to_bytes(999999999, 'big') }}", "too large"),
    "replace method": ("{{ ('a' * 2000).replace('', 'b' * 2000) }}", "replace would make"),
    "replace filter": ("{{ ('a' * 2000) | replace('', 'b' * 2000) }}", "replace would make"),
    "join method": (
        "{{ ('a' * 1000000).join(range(100000) | map('string')) }}",
        "join would make",
    ),
    "expandtabs": ("{{ ('\\t' * 100000).expandtabs(1000) }}", "expandtabs would make"),
    "indent filter": ("{{ ('a\\n' * 500000) | indent(1000) }}", "indent would make"),
    "wordwrap filter": (
        "{{ ('a ' * 500000) | wordwrap(1, wrapstring='x' * 1000) }}",
        "wordwrap would make",
    ),
    "tojson indent": ("{{ range(100000) | list | tojson(indent=64) }}", "tojson would make"),
    "batch fill": ("{{ [1] | batch(999999999, 'x') | list }}", "too large"),
    "strftime width": ("{{ strftime_now('%999999999Y') }}", "may not set field widths"),
    "float overflow": ("{{ 2.0 ** 100000 }}", "OverflowError"),
    "calling a block": (
        "{% set big = 'a' * 1000000 %}{% if false %}{% block a %}{% for i in range(1000) %}"
        "{{ big }}{% endfor %}{% endblock %}{% endif %}{{ self.a() | length }}",
        "calling a block (self.<name>()) is not allowed",
    ),
    "hoarding dicts": (
        "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
        "{% set ns.l = ns.l + [{}.fromkeys(range(100000))] %}{% endfor %}",
        "built more than 16777216 characters",
    ),
    "hoarding split lists": (
        "{% set s = 'ab ' * 333333 %}{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
        "{% set ns.l = ns.l + [s.split()] %}{% endfor %}",
        "built more than 16777216 characters",
    ),
    "big integer from bytes": (
        "{% set b = (1).from_bytes(('a' * 1000000).encode(), 'big') %}{{ -b }}",
        "made an integer over 4096 bits",
    ),
    "slice filter": ("{{ [1] | slice(999999, 'x') | list | length }}", "built more than"),
    "appending to a template's list": (
        "{% set l = [] %}{% for i in range(100000) %}{% for j in range(100000) %}"
        "{% set _ = l.append(i) %}{% endfor %}{% endfor %}",
        "took longer than",
    ),
    "extending a template's list": (
        "{% set l = [] %}{% for i in range(100000) %}{% set _ = l.extend(range(100000)) %}"
        "{% endfor %}",
        "built more than",
    ),
    "constant folding at compile time": (
        "{{ 'a' | center(1000000) }}" * 1000,
        "the output passed 1048576 characters",
    ),
}


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", list(BOMBS))
def test_template_bombs_stop_quickly_and_small(name: str) -> None:
    source, error = BOMBS[name]
    # A bomb that a size check stops must be stopped by that check on any machine: the
    # render time limit is raised for it, so on a slow machine the time limit cannot
    # fire first and hide a missing or late size check. The elapsed bound below still
    # says it was found quickly.
    timed = "took longer than" in error
    limits = TemplateLimits() if timed else TemplateLimits(seconds=60.0)
    rss_before = _max_rss_mb()
    started = time.perf_counter()
    template = ChatTemplate(source, limits=limits)  # compiling is measured as well
    with pytest.raises(TemplateError) as caught:
        template.render([{"role": "user", "content": "hi"}])
    elapsed = time.perf_counter() - started
    assert error in str(caught.value)
    assert "\n" not in str(caught.value)
    # A bound whose failure means a real bug (a bomb run to its end), not a slow machine:
    # the time-limited bombs stop at 1 s, the others on their first oversized step.
    assert elapsed < 20.0
    assert _max_rss_mb() - rss_before < 200


@pytest.mark.parametrize(
    "source",
    ["{{ ('a' * 1000000).join(items) }}", "{{ items | join('a' * 1000000) }}"],
    ids=["join method", "join filter"],
)
def test_join_refuses_before_draining_its_items(source: str) -> None:
    # Counted work instead of time: the separator alone passes the cap after
    # cap / len(separator) items, so the join must stop there, not drain all 10**5.
    consumed = 0

    def items() -> Any:
        nonlocal consumed
        for i in range(100_000):
            consumed += 1
            yield str(i)

    with pytest.raises(TemplateError, match="join would make"):
        ChatTemplate(source, limits=TemplateLimits(seconds=60.0)).render([], items=items())
    cap = TemplateLimits().max_output_chars
    assert consumed <= cap // 1_000_000 + 2


# Expressions whose operators and filters the sandbox checks or replaces: each must
# render exactly as in a plain jinja2 sandbox.
CHECKED_BUT_ORDINARY = [
    "{{ '%s: %d' % ('a', 3) }}|{{ '%-5s|%5.1f' % ('ab', 2.25) }}|{{ '%(n)s' % {'n': 1} }}",
    "{{ '100%% sure, %s' % 'yes' }}|{{ '%*d' % (4, 7) }}",
    "{{ '{} {}'.format('a', 1) }}|{{ '{:>4}|{:.2f}'.format('x', 1.5) }}|{{ '{0[k]}'.format({'k': 2}) }}",
    "{{ '{name}!'.format_map({'name': 'n'}) }}|{{ '{!r}'.format([1, 'a']) }}",
    "{{ 'a,b'.split(',') | join('+') }}|{{ '-'.join(['a', 'b']) }}|{{ [1, 2] | join }}",
    "{{ messages | map(attribute='role') | join(', ') }}|{{ messages | join('/', attribute='content') }}",
    "{{ 'x' | center(5) }}|{{ 'x'.ljust(3) }}|{{ 'x'.zfill(3) }}|{{ 'a\tb'.expandtabs(4) }}",
    "{{ ('a' * 3) | replace('a', 'bb') }}|{{ 'aaa'.replace('a', 'c', 2) }}|{{ 'ab' | replace('', '-') }}",
    "{{ 'l1\nl2' | indent(2, first=true) }}|{{ 'l1\nl2' | indent('> ') }}",
    "{{ 'hello wide world' | wordwrap(5) }}|{{ 'hello wide world' | wordwrap(5, wrapstring='/') }}",
    "{{ [1, 2, 3] | batch(2) | list }}|{{ [1, 2, 3] | batch(2, 0) | list }}|{{ [1, 2, 3] | slice(2) | list }}",
    "{{ '%s-%s' | format('a', 'b') }}|{{ '%(x)s' | format(x=1) }}",
    "{{ messages[0].content[1:] }}|{{ messages[-1:] | length }}|{{ 'abcdef'[::2] }}|{{ [1, 2, 3][1:] }}",
    "{{ 'a' ~ 1 ~ none ~ [2] }}|{{ [1] + [2] }}|{{ (1, 2) * 2 }}|{{ 2 ** 10 }}|{{ 7 % 3 }}",
    "{{ dict(a=1)['a'] }}|{{ namespace(a=2).a }}|{% set c = cycler('x', 'y') %}{{ c.next() }}{{ c.next() }}",
    "{{ 'Hi' | upper }}|{{ ' x ' | trim }}|{{ 'abc' | truncate(3, true, '', 0) }}|{{ 3 | string }}",
    "{{ {'b': 1, 'a': 2} | dictsort }}|{{ [3, 1, 2] | sort }}|{{ [1, 1, 2] | unique | list }}",
    "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|{{ [1, 2] | sum }}",
]


@pytest.mark.parametrize("source", CHECKED_BUT_ORDINARY)
def test_checked_operations_render_as_in_plain_jinja(source: str) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    expected = plain.from_string(source).render(messages=messages)
    assert ChatTemplate(source).render(messages) == expected


def test_harmless_big_numbers_still_render() -> None:
    # Jinja's ** groups to the left: 10 ** 10 ** 10 is (10 ** 10) ** 10 = 10 ** 100.
    assert ChatTemplate("{{ 10 ** 10 ** 10 }}").render([]) == "1" + "0" * 100
    assert ChatTemplate("{{ ('ab' * 1000) | length }}").render([]) == "2000"


def test_limits_are_configurable() -> None:
    fast = ChatTemplate(BOMBS["nested empty loops"][0], limits=TemplateLimits(seconds=0.2))
    started = time.perf_counter()
    with pytest.raises(TemplateError, match=r"took longer than 0\.2 s"):
        fast.render([])
    # Generous: without the limit these loops would run for hours.
    assert time.perf_counter() - started < 10.0

    small = ChatTemplate(CHATML_TEMPLATE, limits=TemplateLimits(max_output_chars=100))
    assert small.render(CHAT[1:2]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(TemplateError, match="the output passed 100 characters"):
        small.render([{"role": "user", "content": "x" * 30}] * 4)
    with pytest.raises(TemplateError, match=r"'\*' would make 101 "):
        ChatTemplate("{{ 'x' * 101 }}", limits=TemplateLimits(max_output_chars=100)).render([])

    with pytest.raises(InvalidOptionError):
        TemplateLimits(seconds=0)
    with pytest.raises(InvalidOptionError):
        TemplateLimits(max_output_chars=0)


def test_the_previous_tracer_is_restored() -> None:
    calls: list[str] = []

    def dummy(frame: types.FrameType, event: str, arg: Any) -> None:
        calls.append(event)

    bomb = ChatTemplate(BOMBS["nested empty loops"][0], limits=TemplateLimits(seconds=0.2))
    good = ChatTemplate(CHATML_TEMPLATE)
    previous = sys.gettrace()
    sys.settrace(dummy)
    try:
        with pytest.raises(TemplateError):
            bomb.render([])
        assert sys.gettrace() is dummy
        with pytest.raises(TemplateError):
            ChatTemplate(BOMBS["recursive macro"][0]).render([])
        assert sys.gettrace() is dummy
        good.render(CHAT)
        assert sys.gettrace() is dummy
    finally:
        sys.settrace(previous)
    assert calls  # the dummy kept seeing calls made outside the renders


def test_a_template_still_renders_after_a_bomb() -> None:
    template = ChatTemplate(
        "{% if messages[0].content == 'boom' %}{{ 'a' * 10**9 }}{% endif %}{{ messages | length }}"
    )
    with pytest.raises(TemplateError):
        template.render([{"role": "user", "content": "boom"}])
    assert template.render([{"role": "user", "content": "fine"}]) == "1"


# -- validate_messages -------------------------------------------------------------------


def test_validate_messages_normalises_good_input() -> None:
    tool_calls = [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    raw: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {"role": "assistant", "content": None, "tool_calls": tool_calls},
        {"role": "assistant", "tool_calls": tool_calls},
        {"role": "tool", "content": "12 C", "name": "get_weather", "tool_call_id": "c1"},
        {"role": "user", "content": "", "images": []},
    ]
    result = validate_messages(raw)
    assert result == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one\ntwo"},
        {"role": "assistant", "content": "", "tool_calls": tool_calls},
        {"role": "assistant", "content": "", "tool_calls": tool_calls},
        {"role": "tool", "content": "12 C", "name": "get_weather", "tool_call_id": "c1"},
        {"role": "user", "content": "", "images": []},
    ]
    result[0]["content"] = "changed"
    assert raw[0]["content"] == "Be brief."  # copies
    assert validate_messages([]) == []
    # What validate_messages returns, every template accepts.
    assert ChatTemplate(QWEN25_TEMPLATE).render(result)
    assert ChatTemplate(None).render(result).endswith("Assistant:")


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ("hi", "messages must be a list of message objects, not a string"),
        ({"role": "user", "content": "x"}, "messages must be a list of message objects, not an object"),
        (None, "not null"),
        (["hi"], "messages[0] must be an object, not a string"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role must be one of system, user, assistant, tool, not 'wizard'"),
        ([{"role": 7, "content": "x"}], "messages[0].role must be one of system, user, assistant, tool, not a number"),
        ([{"content": "x"}], "messages[0] has no role"),
        ([{"role": "user", "content": 5}], "messages[0].content must be a string or a list of text parts, not a number"),
        ([{"role": "user", "content": {"text": "x"}}], "not an object"),
        ([{"role": "user"}], "messages[0].content is required"),
        ([{"role": "user", "content": None}], "messages[0].content is required"),
        ([{"role": "user", "content": "ok"}, {"role": "assistant"}], "messages[1].content is required"),
        ([{"role": "assistant", "tool_calls": []}], "messages[0].content is required"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
            "messages[0].content[1] is an image part of type 'image_url'; send images as image_url parts",
        ),
        ([{"role": "user", "content": [{"type": "image", "image": "x"}]}], "or as Ollama's images"),
        ([{"role": "user", "content": [{"type": "input_audio"}]}], "has type 'input_audio'; only text parts are supported"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "messages[0].content[0].text must be a string"),
        ([{"role": "user", "content": ["hi"]}], "messages[0].content[0] must be an object"),
    ],
)  # fmt: skip
def test_validate_messages_rejects_bad_input(messages: object, error: str) -> None:
    with pytest.raises(InvalidOptionError) as caught:
        validate_messages(messages)
    assert error in str(caught.value)


# -- speed ---------------------------------------------------------------------------------


def test_render_time_of_a_50_turn_chat(capsys: pytest.CaptureFixture[str]) -> None:
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "word " * 40}
        for i in range(50)
    ]
    ours = ChatTemplate(CHATML_TEMPLATE)
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        CHATML_TEMPLATE
    )
    expected = plain.render(messages=messages, add_generation_prompt=True)
    assert ours.render(messages) == expected

    def median_ms(render: Any) -> float:
        times = []
        for _ in range(50):
            started = time.perf_counter()
            render()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    ours_ms = median_ms(lambda: ours.render(messages))
    plain_ms = median_ms(lambda: plain.render(messages=messages, add_generation_prompt=True))
    with capsys.disabled():
        print(
            f"\n50-turn ChatML render: {ours_ms:.3f} ms with limits, "
            f"{plain_ms:.3f} ms in a plain jinja2 sandbox"
        )

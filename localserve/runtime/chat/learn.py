"""A template's call syntax, learnt from what it writes for sample calls.

The template is rendered with a sample tool and an assistant turn that calls it
(function ``foofoo``, argument ``barbar`` = ``bazbaz``), then with two calls, then
with one call whose arguments have every JSON type. The text the template wrote for
the turn (the render less what it shares with a plain answer) tells the syntax:

- a known family's markers (Hermes, Qwen3-Coder, Mistral, DeepSeek, harmony, Muse);
- a JSON object naming the call, after a tag of the template's own (generic: Granite,
  Command R7B, Apertus, Nemotron...), its keys learnt from the object;
- else literal markers around the name and the arguments (tagged: GLM, Kimi K2,
  MiniMax, DeepSeek V3.2, Hy3, Solar...): the text before the name is the section
  opening plus the call opening; the text between two calls is the call closing plus
  the call opening, so their common end is the call opening; and so on for the
  arguments. Markers are cut only between tags, never inside one. Call ids and call
  numbers, which differ between the two calls, become slots.

llama.cpp's automatic parser (``common/chat-diff-analyzer.cpp``) works the same way.
Templates that show the model its tools but never render a call back cannot teach
their syntax; a few name it in the instructions they write (Granite 3.3's
``<|tool_call|>``, LFM2's tool list): :func:`from_instructions`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from localserve.errors import TemplateError
from localserve.runtime.chat.syntax import (
    ATEM_CALLS_CLOSE,
    ATEM_CALLS_OPEN,
    DEEPSEEK_CALLS_BEGIN,
    DEEPSEEK_CALLS_END,
    DEEPSEEK_SEP,
    ID_SLOT,
    INDEX_SLOT,
    KEY_SLOT,
    MUSE_MESSAGE,
    TAG,
    TaggedSyntax,
    ToolFormat,
)
from localserve.runtime.templates import ChatTemplate

NAME, ARG, VALUE = "foofoo", "barbar", "bazbaz"
CALL_ID, CALL_ID_2, VALUE_2 = "call00001", "call00002", "quxqux"
ANSWER = "answeranswer"
SAMPLE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": NAME,
        "description": "A sample function.",
        "parameters": {
            "type": "object",
            "properties": {ARG: {"type": "string", "description": "An argument."}},
            "required": [ARG],
        },
    },
}
USER = {"role": "user", "content": "questionquestion"}
# One argument of each JSON type, between two strings (each argument's block is read
# up to the next key).
_TYPED: dict[str, Any] = {
    ARG: VALUE,
    "numnum": 7,
    "boolbool": True,
    "arrarr": [1, 2],
    "objobj": {"kk": 1},
    "endend": "endval",
}
_TYPE_OF = {"numnum": "number", "boolbool": "boolean", "arrarr": "array", "objobj": "object"}


def call(arguments: dict[str, Any], call_id: str = CALL_ID) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": NAME, "arguments": arguments}}


def render(template: ChatTemplate, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    try:
        return template.render(messages, **kwargs)
    except TemplateError:
        return ""


def answer_text(template: ChatTemplate, turn: dict[str, Any]) -> str:
    """What the template writes for the assistant ``turn`` itself: the render of the
    conversation with it, less what it shares with the same conversation answered
    by plain text (the turns before, the assistant header, the end of turn), cut
    between tags."""
    with_turn = render(template, [USER, turn], add_generation_prompt=False, tools=[SAMPLE_TOOL])
    plain = render(
        template,
        [USER, {"role": "assistant", "content": ANSWER}],
        add_generation_prompt=False,
        tools=[SAMPLE_TOOL],
    )
    if not with_turn:
        return ""
    start = common_prefix(with_turn, plain)
    end = len(with_turn) - common_prefix(with_turn[::-1], plain[::-1])
    for tag in TAG.finditer(with_turn):  # widen to whole tags
        if tag.start() < start < tag.end():
            start = tag.start()
        if tag.start() < end < tag.end():
            end = tag.end()
    # A tag, a word and a tag are one marker (Kimi K3's <|close|>tools<|sep|>).
    unit_end = re.match(r"<[^<>\s]{1,40}>", with_turn[end:])
    if unit_end and re.search(r"<[^<>\s]{1,40}>\w{1,20}$", with_turn[start:end]):
        end += unit_end.end()
    found = with_turn[start : max(start, end)]
    # The end of a sequence after calls (Hy3) is the model's stop, not the format's.
    eos = template.eos_token
    if eos and found.rstrip().endswith(eos) and found.strip() != eos:
        found = found.rstrip()[: -len(eos)]
    return found


def call_answer(template: ChatTemplate, *calls: dict[str, Any]) -> str:
    """The text the template writes for a turn of ``calls`` and no text; a template
    that concatenates ``arguments`` wants them as a JSON string (Functionary)."""
    turn = {"role": "assistant", "content": "", "tool_calls": list(calls)}
    found = answer_text(template, turn)
    if not found:
        as_strings = [
            {
                **c,
                "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])},
            }
            for c in calls
        ]
        found = answer_text(template, {**turn, "tool_calls": as_strings})
    return found


# ------------------------------------------------------------------ the families


def tool_format(template: ChatTemplate, harmony: bool) -> ToolFormat | None:
    defined = render(template, [USER], add_generation_prompt=True, tools=[SAMPLE_TOOL])
    if NAME not in defined:
        return None  # the template never shows the model its tools
    answer = call_answer(template, call({ARG: VALUE}))
    if NAME not in answer or VALUE not in answer:
        # It does not render calls back: a history with calls would be lost, unless
        # the instructions name a syntax.
        return from_instructions(template, defined)
    if harmony or "to=functions." + NAME in answer:
        return ToolFormat("harmony", starts=("<|channel|>commentary to=functions.",))
    # (` to=` is shared with the plain answer's ` to=user`: the answer starts at NAME.)
    if f"{NAME}{MUSE_MESSAGE}{ATEM_CALLS_OPEN}" in answer:
        return ToolFormat("muse", starts=(ATEM_CALLS_OPEN,), end=ATEM_CALLS_CLOSE)
    if f"<tool_call>\n<function={NAME}>" in answer and f"<parameter={ARG}>" in answer:
        return ToolFormat("qwen3_coder", starts=("<tool_call>", "<function="), end="</tool_call>")
    if "[TOOL_CALLS]" in answer:
        if "[ARGS]" in answer:
            return ToolFormat("mistral_args", starts=("[TOOL_CALLS]",))
        return ToolFormat("mistral", starts=("[TOOL_CALLS]",))
    if DEEPSEEK_SEP in answer or "tool▁call" in answer:
        variant = "r1" if f"function{DEEPSEEK_SEP}" in answer else "v3.1"
        return ToolFormat(
            "deepseek", starts=(DEEPSEEK_CALLS_BEGIN,), end=DEEPSEEK_CALLS_END, variant=variant
        )
    found = _find_call_json(answer)
    if found is not None and "<tool_call>" in answer and "</tool_call>" in answer:
        return ToolFormat("hermes", starts=("<tool_call>",), end="</tool_call>")
    if f"call:{NAME}{{" in answer and '<|"|>' in answer:
        return ToolFormat(
            "gemma4",
            starts=("<|tool_call>",),
            end="<tool_call|>",
            after_calls=_after_calls(answer, "<tool_call|>"),
        )
    if re.search(rf"\[{NAME}\({ARG}=", answer):
        return _pythonic(answer)
    if found is not None:
        return _json_format(template, answer, found)
    return _tagged_format(template, answer)


def _after_calls(answer: str, end: str) -> str:
    """The tag the template writes after the last call's ``end`` and before its end of
    turn, if one (see ToolFormat.after_calls)."""
    tail = answer[answer.rfind(end) + len(end) :].strip() if end in answer else ""
    return tail if TAG.fullmatch(tail) else ""


def from_instructions(template: ChatTemplate, prompt: str) -> ToolFormat | None:
    """For a template that shows tools but renders no calls: the syntax its
    instructions (or its tool list) name, where they name a known one."""
    if "<|tool_call|>" in prompt:  # Granite 3.x: "<|tool_call|> followed by a JSON list"
        return ToolFormat("generic", starts=("<|tool_call|>",), array=True)
    if "List of tools:" in prompt:  # LFM2: python-style calls between its tool-call tokens
        return ToolFormat("pythonic", starts=("<|tool_call_start|>",), end="<|tool_call_end|>")
    return None


def _pythonic(answer: str) -> ToolFormat | None:
    at = answer.find(f"[{NAME}(")
    head, tail = answer[:at].strip(), answer[answer.find(")]", at) + 2 :].strip()
    if not head:
        return None
    tail_tags = TAG.findall(tail)
    return ToolFormat("pythonic", starts=(head,), end=tail_tags[0] if tail_tags else "")


# ------------------------------------------------------------------ JSON calls

_NAME_KEYS = ("name", "tool_name")
_ARGUMENT_KEYS = ("arguments", "parameters")


def _find_call_json(text: str) -> tuple[int, int, Any, dict[str, Any]] | None:
    """The first JSON value (an object, or an array starting with one) that is the
    sample call: where it starts and ends, the value, and the call object."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, end = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        item = value[0] if isinstance(value, list) and value else value
        if isinstance(item, dict) and _names_sample(item):
            return match.start(), end, value, item
    return None


def _names_sample(item: dict[str, Any]) -> bool:
    if any(item.get(k) == NAME for k in _NAME_KEYS):
        return any(k in item for k in _ARGUMENT_KEYS)
    return list(item) == [NAME] and item[NAME] == {ARG: VALUE}


def _json_format(
    template: ChatTemplate, answer: str, found: tuple[int, int, Any, dict[str, Any]]
) -> ToolFormat | None:
    """A call written as a JSON object: bare (Llama 3) or after a tag of the
    template's own (generic)."""
    begin, end, value, item = found
    name_key = next((k for k in _NAME_KEYS if item.get(k) == NAME), "")
    arguments_key = next((k for k in _ARGUMENT_KEYS if k in item), "arguments")
    id_key = next(
        (k for k, v in item.items() if k not in (name_key, arguments_key) and _is_id(v)), ""
    )
    head, tail = answer[:begin].strip(), answer[end:].strip()
    two = call_answer(template, call({ARG: VALUE}), call({ARG: VALUE_2}, CALL_ID_2))
    if (not head and name_key == "name" and not isinstance(value, list)) or head.endswith(
        "<|python_tag|>"
    ):
        return ToolFormat("llama3", arguments_key=arguments_key, parallel=VALUE_2 in two)
    prefix = _prefix(head)
    if not prefix:
        return None  # text before the JSON but no tag: nothing reliable to look for
    suffix_tags = TAG.findall(tail)
    return ToolFormat(
        "generic",
        starts=(prefix,),
        end=suffix_tags[0] if suffix_tags else (tail if tail.startswith("```") else ""),
        arguments_key=arguments_key,
        name_key=name_key,
        id_key=id_key,
        array=isinstance(value, list),
        parallel=VALUE_2 in two,
    )


def _is_id(value: Any) -> bool:
    return value in (CALL_ID, "0", "1", 0, 1)


def _prefix(head: str) -> str:
    """The text that announces a JSON call: the head's last tag, with the words and
    the tag before it when words sit between them (GigaChat's
    ``<|message_sep|>\\n\\nfunction call<|role_sep|>``); a short head without tags
    as it is (Command R's ``Action:\\n```json``)."""
    tags = list(TAG.finditer(head))
    if not tags:
        return head if 0 < len(head) <= 32 else ""
    last = tags[-1]
    start = last.start()
    if len(tags) > 1:
        between = head[tags[-2].end() : last.start()]
        if re.search(r"\w", between):
            start = tags[-2].start()
    return head[start:].strip() if last.end() == len(head) else ""


# ------------------------------------------------------------------ tagged calls


def _tagged_format(template: ChatTemplate, answer: str) -> ToolFormat | None:
    """Markers around the name and the arguments (see the module docstring)."""
    one = answer.replace(CALL_ID, ID_SLOT)
    name_at = one.find(NAME)
    after_name = name_at + len(NAME)
    pre = one[:name_at]
    json_at = _json_arguments(one, after_name, {ARG: VALUE})
    if json_at is not None:
        mid, arguments_end = one[after_name : json_at[0]], json_at[1]
        fields: dict[str, Any] = {}
    else:
        learnt = _tagged_arguments(template, one, after_name)
        if learnt is None:
            return None
        mid, arguments_end, fields = learnt
        mid = mid[: len(mid) - len(fields["key_open"])]
    post = one[arguments_end:]
    # Two calls: what lies between them is call_close + separator + call_open.
    two = call_answer(template, call({ARG: VALUE}), call({ARG: VALUE_2}, CALL_ID_2))
    two = two.replace(CALL_ID, ID_SLOT).replace(CALL_ID_2, ID_SLOT)
    second = two.find(NAME, two.find(VALUE) if VALUE in two else len(two))
    if not pre.strip() and second > 0:
        return _opened_by_prompt(template, two, second, mid, fields)
    if not pre.strip() and not mid.strip():
        return None
    name_close = mid
    if second < 0 or two.count(NAME) < 2:
        syntax = TaggedSyntax(call_open=pre, name_close=mid, call_close=post, **fields)
        return _tagged(syntax, parallel=False)
    first_end = _end_of_first_call(two, fields)
    if first_end < 0:
        return None
    between = two[first_end:second]
    mid_2 = _text_after_name(two, second, fields)
    if mid_2 != mid and _numbers(mid_2) == _numbers(mid):
        name_close = _numbers(mid)
    call_open = _common_suffix(pre, between)
    if len(_common_suffix(_numbers(pre), _numbers(between))) > len(call_open):
        pre, between = _numbers(pre), _numbers(between)
        call_open = _common_suffix(pre, between)
    rest = between[: len(between) - len(call_open)]
    call_close = rest[: common_prefix(post, rest, aligned=True)]
    syntax = TaggedSyntax(
        section_open=pre[: len(pre) - len(call_open)],
        call_open=call_open,
        name_close=name_close,
        call_close=call_close,
        separator=rest[len(call_close) :],
        section_close=post[len(call_close) :],
        **fields,
    )
    return _tagged(syntax, parallel=True)


def _opened_by_prompt(
    template: ChatTemplate, two: str, second: int, mid: str, fields: dict[str, Any]
) -> ToolFormat | None:
    """Nothing before the name: the generation prompt wrote the call's opening
    (Functionary v3.2 ends it with ``>>>``; the model writes ``NAME\n{...}``, or
    ``all\n`` and text). The opening is what lies between two calls and ends the
    prompt; the name for text is what the template writes between it and an answer."""
    first_end = _end_of_first_call(two, fields)
    between = two[first_end:second] if first_end >= 0 else ""
    prompt = render(template, [USER], add_generation_prompt=True, tools=[SAMPLE_TOOL])
    call_open = next(
        (between[i:] for i in range(len(between)) if prompt.endswith(between[i:].strip())), ""
    )
    if not call_open.strip() or not mid:
        return None
    plain = render(
        template,
        [USER, {"role": "assistant", "content": ANSWER}],
        add_generation_prompt=False,
        tools=[SAMPLE_TOOL],
    )
    before = plain[: plain.find(ANSWER)]
    text_name = before[before.rfind(call_open.strip()) + len(call_open.strip()) :].strip()
    if not text_name or not re.fullmatch(r"\w+", text_name):
        return None
    syntax = TaggedSyntax(
        call_open=call_open,
        name_close=mid,
        call_close=between[: len(between) - len(call_open)],
        **fields,
    )
    return ToolFormat(
        "tagged",
        starts=(call_open.strip(),),
        syntax=syntax,
        opened=call_open.strip(),
        text_name=text_name,
    )


def _tagged(syntax: TaggedSyntax, *, parallel: bool) -> ToolFormat | None:
    if not syntax.lead or (not syntax.call_open.strip() and not syntax.name_close.strip()):
        return None
    return ToolFormat(
        "tagged",
        starts=(syntax.lead,),
        end=(syntax.section_close or syntax.call_close).strip(),
        syntax=syntax,
        parallel=parallel,
    )


def _json_arguments(text: str, start: int, expected: dict[str, Any]) -> tuple[int, int] | None:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text[start:]):
        at = start + match.start()
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            continue
        return (at, end) if value == expected else None
    return None


def _tagged_arguments(
    template: ChatTemplate, one: str, after_name: int
) -> tuple[str, int, dict[str, Any]] | None:
    """The argument markers of a one-argument call (``one``) and of a call with one
    argument per JSON type: the text from the name to the key, where the arguments
    end, and the markers."""
    key_at = one.find(ARG, after_name)
    value_at = one.find(VALUE, key_at + len(ARG))
    if key_at < 0 or value_at < 0:
        return None
    mid = one[after_name:key_at]
    key_close = one[key_at + len(ARG) : value_at]
    typed = call_answer(template, call(_TYPED))
    keys = [typed.find(key) for key in _TYPED]
    if min(keys) < 0 or keys != sorted(keys):
        return None
    first = typed[keys[0] + len(ARG) : keys[1]]  # key_close VALUE value_close key_open
    if not first.startswith(key_close + VALUE):
        return None
    between = first[len(key_close + VALUE) :]  # value_close (+ separator) + key_open
    key_open = _common_suffix(mid, between)
    value_close = between[: len(between) - len(key_open)]
    if not key_open.strip() or not value_close.strip() or ARG in key_close:
        return None
    typed_closes: dict[str, str] = {}
    for index, key in enumerate(list(_TYPED)[1:-1], start=1):
        block = typed[keys[index] + len(key) : keys[index + 1]]
        block = block.removesuffix(between.replace(ARG, key))
        close = _strip_value(block, _TYPED[key])
        if close is not None and close != key_close:
            typed_closes[_TYPE_OF[key]] = close
    if "number" in typed_closes:
        typed_closes["integer"] = typed_closes["number"]
        typed_closes.setdefault("null", typed_closes["number"])
    rest = one[value_at + len(VALUE) :]
    if not rest.startswith(value_close):
        return None
    fields = {
        "key_open": key_open,
        "key_close": key_close,
        "typed_key_close": tuple(sorted(typed_closes.items())),
        # A closing tag named after the key (MiniMax-M3's </barbar>): the key is a slot.
        "value_close": value_close.replace(ARG, KEY_SLOT),
    }
    return mid, value_at + len(VALUE) + len(value_close), fields


def _strip_value(block: str, value: Any) -> str | None:
    """``block`` less the value written at its end (JSON in any spacing)."""
    for written in (json.dumps(value), json.dumps(value, separators=(",", ":")), str(value)):
        if block.endswith(written):
            return block[: len(block) - len(written)]
    return None


def _end_of_first_call(two: str, fields: dict[str, Any]) -> int:
    """Where the first call's arguments end in the two-call render."""
    if not fields:
        found = _json_arguments(two, two.find(NAME) + len(NAME), {ARG: VALUE})
        return found[1] if found else -1
    at = two.find(VALUE)
    value_close = fields["value_close"].replace(KEY_SLOT, ARG)
    close = two.find(value_close, at)
    return close + len(value_close) if close >= 0 else -1


def _text_after_name(two: str, at: int, fields: dict[str, Any]) -> str:
    start = at + len(NAME)
    if not fields:
        found = _json_arguments(two, start, {ARG: VALUE_2})
        return two[start : found[0]] if found else ""
    key_at = two.find(ARG, start)
    text = two[start:key_at] if key_at >= 0 else ""
    return text[: len(text) - len(fields["key_open"])]


def _numbers(text: str) -> str:
    return re.sub(r"\d+", INDEX_SLOT, text)


# ------------------------------------------------------------------ text helpers


def common_prefix(a: str, b: str, *, aligned: bool = False) -> int:
    n = min(len(a), len(b))
    size = next((i for i in range(n) if a[i] != b[i]), n)
    while aligned and size and (_in_tag(a, size) or _in_tag(b, size)):
        size -= 1
    return size


def common_suffix(a: str, b: str) -> int:
    """The length of the longest common end of ``a`` and ``b`` that does not start
    inside a tag."""
    size = common_prefix(a[::-1], b[::-1])
    while size and (_in_tag(a, len(a) - size) or _in_tag(b, len(b) - size)):
        size -= 1
    return size


def _common_suffix(a: str, b: str) -> str:
    return a[len(a) - common_suffix(a, b) :]


# Tags a cut must not split: <...> on one line (also one cut off at the text's end,
# as a call opening is: <invoke name="), and [UPPER_CASE] ones.
_CUTTABLE = re.compile(r"<[^<>\n]{1,80}(?:>|$)|\[[A-Z_/]{2,40}\]")


def _in_tag(text: str, at: int) -> bool:
    """Whether a cut at ``at`` would split a tag."""
    return any(m.start() < at < m.end() for m in _CUTTABLE.finditer(text, max(0, at - 80)))

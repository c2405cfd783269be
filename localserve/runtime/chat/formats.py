"""What a chat template can do, found by rendering it, not by the model's name.

Tools: the template is rendered with a sample tool definition and an assistant turn
that calls it (function ``foofoo``, argument ``barbar`` = ``bazbaz``). If both the
definition and the call show up, the model takes tools, and the text the template
wrote around the call tells its syntax: a known family's markers, or, for any
other template, the literal text before and after a JSON object naming the call
(the generic format). llama.cpp's automatic parser (``common/chat.cpp``) works the
same way, by diffing renders.

Thinking: the template is rendered with an assistant turn that carries reasoning
(``reasoning_content`` and ``thinking``, the two names templates read). The tags the
template puts around it (``<think>``/``</think>``, ``[THINK]``/``[/THINK]``...) are
what the model writes too. Harmony (gpt-oss) templates, whose channels carry both
reasoning and calls, are recognised by their ``<|channel|>`` markers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from localserve.errors import TemplateError
from localserve.runtime.templates import ChatTemplate

FormatKind = Literal[
    "hermes",  # <tool_call>{"name": ..., "arguments": {...}}</tool_call>
    "qwen3_coder",  # <tool_call><function=NAME><parameter=K>V</parameter></function></tool_call>
    "mistral",  # [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
    "mistral_args",  # [TOOL_CALLS]NAME[ARGS]{...} (optionally [CALL_ID]id before [ARGS])
    "llama3",  # {"name": ..., "parameters": {...}} as the whole answer (<|python_tag|>)
    "deepseek",  # <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>...<｜tool▁call▁end｜>...
    "harmony",  # <|channel|>commentary to=functions.NAME ... <|message|>{...}
    "generic",  # PREFIX{"name": ..., "arguments": {...}}SUFFIX, learnt from the template
]

DEEPSEEK_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
DEEPSEEK_CALLS_END = "<｜tool▁calls▁end｜>"
DEEPSEEK_CALL_BEGIN = "<｜tool▁call▁begin｜>"
DEEPSEEK_CALL_END = "<｜tool▁call▁end｜>"
DEEPSEEK_SEP = "<｜tool▁sep｜>"

_NAME, _ARG, _VALUE = "foofoo", "barbar", "bazbaz"
_REASONING, _ANSWER = "thinkthink", "answeranswer"
SAMPLE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": _NAME,
        "description": "A sample function.",
        "parameters": {
            "type": "object",
            "properties": {_ARG: {"type": "string", "description": "An argument."}},
            "required": [_ARG],
        },
    },
}
_SAMPLE_CALL: dict[str, Any] = {
    "id": "call00001",
    "type": "function",
    "function": {"name": _NAME, "arguments": {_ARG: _VALUE}},
}
_USER = {"role": "user", "content": "questionquestion"}
# A tag as templates write them: <...>, [...], <|...|>, <｜...｜>.
_TAG = re.compile(r"(<[^<>\s]{1,40}>|\[[A-Z_/]{2,40}\])")


@dataclass(frozen=True)
class ToolFormat:
    """How a model writes tool calls."""

    kind: FormatKind
    # Text that starts a call (or the section of calls); the first is the one the
    # grammar writes. Empty for llama3, whose calls are bare JSON.
    starts: tuple[str, ...] = ()
    end: str = ""  # text that ends one call (or the section); "" = the answer's end
    arguments_key: str = "arguments"  # "parameters" for Llama 3
    # DeepSeek: "r1" (function<sep>NAME then a ```json block) or "v3.1" (NAME<sep>{...}).
    variant: str = ""

    @property
    def markers(self) -> tuple[str, ...]:
        """Every literal this format writes (for special tokens that must be kept)."""
        extra: tuple[str, ...] = ()
        if self.kind == "mistral_args":
            extra = ("[ARGS]", "[CALL_ID]")
        elif self.kind == "deepseek":
            extra = (DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END, DEEPSEEK_SEP)
        elif self.kind == "harmony":
            extra = ("<|channel|>", "<|message|>", "<|end|>", "<|start|>", "<|constrain|>")
        elif self.kind == "llama3":
            extra = ("<|python_tag|>",)
        return tuple(m for m in (*self.starts, self.end, *extra) if m)


@dataclass(frozen=True)
class ThinkingTags:
    """The tags around a model's reasoning."""

    open: str
    close: str


@dataclass(frozen=True)
class ChatFormat:
    """Everything detection found out about one template."""

    tools: ToolFormat | None = None
    thinking: ThinkingTags | None = None
    # ``enable_thinking=False`` changes the prompt (Qwen 3 style): thinking can be off.
    thinking_switch: bool = False
    harmony: bool = False
    capabilities: tuple[str, ...] = ("completion",)

    @property
    def thinks(self) -> bool:
        return self.thinking is not None or self.harmony

    @property
    def markers(self) -> tuple[str, ...]:
        found = list(self.tools.markers if self.tools else ())
        if self.thinking:
            found += [self.thinking.open, self.thinking.close]
        return tuple(found)


PLAIN = ChatFormat(capabilities=("completion",))


def detect(template: ChatTemplate) -> ChatFormat:
    """The tool-call format and thinking tags of ``template`` (PLAIN for the fallback
    template and for any template that fails on the samples)."""
    if template.is_fallback:
        return PLAIN
    harmony = _is_harmony(template)
    tools = _tool_format(template, harmony)
    thinking = None if harmony else _thinking_tags(template)
    switch = thinking is not None and _thinking_switch(template)
    capabilities = ["completion"]
    if tools is not None:
        capabilities.append("tools")
    if thinking is not None or harmony:
        capabilities.append("thinking")
    return ChatFormat(tools, thinking, switch, harmony, tuple(capabilities))


def _render(template: ChatTemplate, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    try:
        return template.render(messages, **kwargs)
    except TemplateError:
        return ""


def _is_harmony(template: ChatTemplate) -> bool:
    prompt = _render(template, [_USER], add_generation_prompt=True)
    return "<|channel|>" in template.source and prompt.rstrip().endswith("<|start|>assistant")


def _tool_format(template: ChatTemplate, harmony: bool) -> ToolFormat | None:
    defined = _render(template, [_USER], add_generation_prompt=True, tools=[SAMPLE_TOOL])
    if _NAME not in defined:
        return None  # the template never shows the model its tools
    answer = _answer_text(
        template, {"role": "assistant", "content": "", "tool_calls": [_SAMPLE_CALL]}
    )
    if _NAME not in answer or _VALUE not in answer:
        return None  # it does not render calls back: a history with calls would be lost
    if harmony or "to=functions." + _NAME in answer:
        return ToolFormat("harmony", starts=("<|channel|>commentary to=functions.",))
    if f"<function={_NAME}>" in answer:
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
    if "<tool_call>" in answer and "</tool_call>" in answer:
        return ToolFormat("hermes", starts=("<tool_call>",), end="</tool_call>")
    return _json_format(answer)


def _answer_text(template: ChatTemplate, turn: dict[str, Any]) -> str:
    """What the template writes for the assistant ``turn`` itself: the render of the
    conversation with it, less what it shares with the same conversation answered
    by plain text (the turns before, the assistant header, the end of turn)."""
    with_turn = _render(template, [_USER, turn], add_generation_prompt=False, tools=[SAMPLE_TOOL])
    plain = _render(
        template,
        [_USER, {"role": "assistant", "content": _ANSWER}],
        add_generation_prompt=False,
        tools=[SAMPLE_TOOL],
    )
    start = _common_prefix(with_turn, plain)
    end = _common_prefix(with_turn[::-1], plain[::-1])
    return with_turn[start : max(start, len(with_turn) - end)]


def _json_format(answer: str) -> ToolFormat | None:
    """A call written as a JSON object: bare (Llama 3) or after a tag of the
    template's own (generic)."""
    found = _find_call_json(answer)
    if found is None:
        return None
    begin, end, key = found
    head, tail = answer[:begin].strip(), answer[end:].strip()
    head_tags = _TAG.findall(head)
    prefix = head_tags[-1] if head_tags else ""
    if head.endswith("<|python_tag|>") or not head:
        return ToolFormat("llama3", arguments_key=key)
    if not prefix:
        return None  # text before the JSON but no tag: nothing reliable to look for
    suffix_tags = _TAG.findall(tail)
    return ToolFormat(
        "generic", starts=(prefix,), end=suffix_tags[0] if suffix_tags else "", arguments_key=key
    )


def _find_call_json(text: str) -> tuple[int, int, str] | None:
    """Where the JSON object naming the sample call starts and ends, and its key for
    the arguments."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, end = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("name") == _NAME:
            for key in ("arguments", "parameters"):
                if key in value:
                    return match.start(), end, key
    return None


def _thinking_tags(template: ChatTemplate) -> ThinkingTags | None:
    turn = {
        "role": "assistant",
        "content": _ANSWER,
        "reasoning_content": _REASONING,
        "thinking": _REASONING,
    }
    rendered = _render(template, [_USER, turn], add_generation_prompt=False)
    at = rendered.find(_REASONING)
    if at < 0:
        # Some templates show reasoning only after the last user turn, others only
        # in the prompt: the generation prompt may open the block itself.
        return _tags_from_prompt(template)
    before = _TAG.findall(rendered[:at])
    after = _TAG.findall(rendered[at + len(_REASONING) :])
    if not before or not after:
        return None
    return ThinkingTags(before[-1], after[0])


def _tags_from_prompt(template: ChatTemplate) -> ThinkingTags | None:
    prompt = _render(template, [_USER], add_generation_prompt=True, enable_thinking=True)
    tags = _TAG.findall(prompt.rstrip()[-40:])
    if tags and prompt.rstrip().endswith(tags[-1]):
        opening = tags[-1]
        closing = opening[0] + "/" + opening[1:]
        if closing in template.source:
            return ThinkingTags(opening, closing)
    return None


def _thinking_switch(template: ChatTemplate) -> bool:
    on = _render(template, [_USER], add_generation_prompt=True, enable_thinking=True)
    off = _render(template, [_USER], add_generation_prompt=True, enable_thinking=False)
    return bool(on or off) and on != off


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n

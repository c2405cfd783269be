"""What a chat template can do, found by rendering it, not by the model's name.

Tools: the template is rendered with a sample tool definition and an assistant turn
that calls it (function ``foofoo``, argument ``barbar`` = ``bazbaz``). If both the
definition and the call show up, the model takes tools, and the text the template
wrote around the call tells its syntax (:mod:`.learn`): a known family's markers, a
JSON object naming the call after a tag of the template's own (the generic format),
or literal markers around the name and the arguments (the tagged format).
llama.cpp's automatic parser (``common/chat.cpp``) works the same way, by diffing
renders. The data found lives in :mod:`.syntax`.

Thinking: the template is rendered with an assistant turn that carries reasoning
(:mod:`.thinking`). The tags the template puts around it (``<think>``/``</think>``,
``[THINK]``/``[/THINK]``...) are what the model writes too. Harmony (gpt-oss)
templates, whose channels carry both reasoning and calls, are recognised by their
``<|channel|>`` markers. Muse templates write every part of a turn as its own
message too (`` to=self<|message|>`` reasoning, `` to=NAME<|message|>`` a call,
`` to=user<|message|>`` the answer): recognised by the reasoning message they render.
"""

from __future__ import annotations

from dataclasses import dataclass

from localserve.runtime.chat.learn import ANSWER, SAMPLE_TOOL, USER, render, tool_format
from localserve.runtime.chat.syntax import (
    DEEPSEEK_CALL_BEGIN,
    DEEPSEEK_CALL_END,
    DEEPSEEK_CALLS_BEGIN,
    DEEPSEEK_CALLS_END,
    DEEPSEEK_SEP,
    MUSE_MESSAGE,
    MUSE_MORE,
    MUSE_START,
    MUSE_TAGS,
    TAG,
    FormatKind,
    TaggedSyntax,
    ThinkingTags,
    ToolFormat,
)
from localserve.runtime.chat.thinking import REASONING, answer_framing, thinking_tags
from localserve.runtime.templates import ChatTemplate

__all__ = [
    "DEEPSEEK_CALLS_BEGIN",
    "DEEPSEEK_CALLS_END",
    "DEEPSEEK_CALL_BEGIN",
    "DEEPSEEK_CALL_END",
    "DEEPSEEK_SEP",
    "PLAIN",
    "SAMPLE_TOOL",
    "ChatFormat",
    "FormatKind",
    "TaggedSyntax",
    "ThinkingTags",
    "ToolFormat",
    "detect",
]


@dataclass(frozen=True)
class ChatFormat:
    """Everything detection found out about one template."""

    tools: ToolFormat | None = None
    thinking: ThinkingTags | None = None
    # ``enable_thinking=False`` changes the prompt (Qwen 3 style): thinking can be off.
    thinking_switch: bool = False
    harmony: bool = False
    capabilities: tuple[str, ...] = ("completion",)
    # Tags the template writes around an answer's text (thinking.answer_framing).
    answer_open: str = ""
    answer_end: str = ""
    # Muse's messages (syntax.MUSE_START...): reasoning, calls and the answer each one.
    muse: bool = False

    @property
    def thinks(self) -> bool:
        return self.thinking is not None or self.harmony or self.muse

    @property
    def markers(self) -> tuple[str, ...]:
        found = list(self.tools.markers if self.tools else ())
        if self.muse:  # its messages carry the reasoning, with or without tools
            found += MUSE_TAGS
        if self.thinking:
            for tag in (self.thinking.open, self.thinking.close):
                found += [tag, *TAG.findall(tag)]  # <|open|>think<|sep|>: each token
        return tuple(dict.fromkeys(found))


PLAIN = ChatFormat(capabilities=("completion",))


def detect(template: ChatTemplate) -> ChatFormat:
    """The tool-call format and thinking tags of ``template`` (PLAIN for the fallback
    template and for any template that fails on the samples)."""
    if template.is_fallback:
        return PLAIN
    harmony = _is_harmony(template)
    muse = not harmony and _is_muse(template)
    channels = harmony or muse  # messages, not tags, carry the reasoning
    tools = tool_format(template, harmony)
    thinking = None if channels else thinking_tags(template)
    switch = thinking is not None and _thinking_switch(template)
    capabilities = ["completion"]
    if tools is not None:
        capabilities.append("tools")
    if thinking is not None or channels:
        capabilities.append("thinking")
    opening, ending = ("", "") if channels else answer_framing(template, thinking)
    return ChatFormat(
        tools,
        thinking,
        switch,
        harmony,
        tuple(capabilities),
        answer_open=opening,
        answer_end=ending,
        muse=muse,
    )


def _is_harmony(template: ChatTemplate) -> bool:
    prompt = render(template, [USER], add_generation_prompt=True)
    return "<|channel|>" in template.source and prompt.rstrip().endswith("<|start|>assistant")


def _is_muse(template: ChatTemplate) -> bool:
    """The prompt opens an assistant message with no recipient yet, and reasoning in
    the history is a message to ``self``."""
    prompt = render(template, [USER], add_generation_prompt=True)
    if not prompt.rstrip().endswith(MUSE_START):
        return False
    thought = {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING}
    shown = render(template, [USER, thought])
    return f"{MUSE_START} to=self{MUSE_MESSAGE}{REASONING}{MUSE_MORE}" in shown


def _thinking_switch(template: ChatTemplate) -> bool:
    on = render(template, [USER], add_generation_prompt=True, enable_thinking=True)
    off = render(template, [USER], add_generation_prompt=True, enable_thinking=False)
    return bool(on or off) and on != off

"""A template's thinking tags, found by rendering it.

An assistant turn that carries reasoning is rendered with and without it; what the
reasoning brings with it is the pair of tags the model writes too. Templates keep
reasoning in different places, so several turns are tried: a plain answer (under
``reasoning_content``, ``thinking``, ``reasoning`` or ``thought``, the names
templates read), a turn with a tool call (Kimi K2 Thinking and Gemma 4 keep reasoning
only there, Command R7B as its ``tool_plan``), and content blocks (Ministral 3's
``thinking`` chunks, Apertus' ``thoughts`` blocks).

Where no render shows reasoning, the prompt may: a generation prompt that ends by
opening the block (DeepSeek R1, QwQ), a thinking switch that closes an empty block
when off (Gemma 4's ``<|channel>thought\\n<channel|>``, SmolLM3's
``<think>\\n\\n</think>``), or, last, instructions that name ``<think>`` and
``</think>`` when thinking is on (Granite 3.3).
"""

from __future__ import annotations

import re
from typing import Any

from localserve.runtime.chat.learn import (
    ANSWER,
    ARG,
    SAMPLE_TOOL,
    USER,
    VALUE,
    call,
    common_prefix,
    common_suffix,
    render,
)
from localserve.runtime.chat.syntax import TAG, ThinkingTags
from localserve.runtime.templates import ChatTemplate

REASONING = "thinkthink"
_KEYS = {"reasoning_content": REASONING, "thinking": REASONING}
_MORE_KEYS = {"reasoning": REASONING, "thought": REASONING}
# A tag, a word and a tag (Kimi K3's <|open|>think<|sep|>), for either end.
_WORDY_OPEN = re.compile(r"(<[^<>\s]{1,40}>)(\w{1,20})(<[^<>\s]{1,40}>)$")
_WORDY_CLOSE = re.compile(r"^(<[^<>\s]{1,40}>)(\w{1,20})(<[^<>\s]{1,40}>)")


def thinking_tags(template: ChatTemplate) -> ThinkingTags | None:
    for turn, without, tools in _turns():
        found = _tags_in_render(template, turn, without, tools)
        if found is not None:
            return found
    return _tags_from_prompt(template)


def _turns() -> list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]] | None]]:
    """(turn with reasoning, the same turn without it, tools) to try, in order."""
    plain = {"role": "assistant", "content": ANSWER}
    called = {"role": "assistant", "content": "", "tool_calls": [call({ARG: VALUE})]}
    chunks = [{"type": "thinking", "thinking": REASONING}, {"type": "text", "text": ANSWER}]
    blocks = [{"type": "thoughts", "text": REASONING}, {"type": "response", "text": ANSWER}]
    return [
        ({**plain, **_KEYS}, plain, None),
        ({**plain, **_KEYS, **_MORE_KEYS}, plain, None),
        ({**called, **_KEYS, **_MORE_KEYS, "tool_plan": REASONING}, called, [SAMPLE_TOOL]),
        ({**plain, "content": chunks}, plain, None),
        (
            {**plain, "content": {"blocks": blocks}},
            {**plain, "content": {"blocks": blocks[1:]}},
            None,
        ),
    ]


def _tags_in_render(
    template: ChatTemplate,
    turn: dict[str, Any],
    without: dict[str, Any],
    tools: list[dict[str, Any]] | None,
) -> ThinkingTags | None:
    rendered = render(template, [USER, turn], add_generation_prompt=False, tools=tools)
    at = rendered.find(REASONING)
    if at < 0 or "'type'" in rendered or '"type": "thinking"' in rendered:
        return None  # not there, or the content printed as a Python list
    other = render(template, [USER, without], add_generation_prompt=False, tools=tools)
    start = min(common_prefix(rendered, other, aligned=True), at)
    end = len(rendered) - common_suffix(rendered, other)
    end = max(end, at + len(REASONING))
    opening = rendered[start:at].strip()
    closing = rendered[at + len(REASONING) : end].strip()
    if opening and TAG.search(opening) and not TAG.match(opening):
        return None  # the cut fell inside a word (Muse's "to=self"): no tags of its own
    if not TAG.search(opening):
        opening = _prompt_opening(template) or _adjacent_tag(rendered[:at], last=True)
    if not closing:
        closing = _adjacent_tag(rendered[at + len(REASONING) :], last=False)
    opening, closing = _wordy(rendered, at, opening, closing)
    if not opening or not closing or ANSWER in opening + closing or len(closing) > 60:
        return None
    return ThinkingTags(opening, closing)


def _adjacent_tag(text: str, *, last: bool) -> str:
    """The tag that touches the reasoning (only blanks between), if any."""
    tags = list(TAG.finditer(text))
    if not tags:
        return ""
    tag = tags[-1] if last else tags[0]
    between = text[tag.end() :] if last else text[: tag.start()]
    return tag.group(0) if not between.strip() else ""


def _wordy(rendered: str, at: int, opening: str, closing: str) -> tuple[str, str]:
    """Kimi K3 writes ``<|open|>think<|sep|>`` and ``<|close|>think<|sep|>``: a bare
    ``<|sep|>`` found on each side grows into the tag-word-tag it belongs to."""
    before = _WORDY_OPEN.search(rendered[:at].rstrip())
    after = _WORDY_CLOSE.search(rendered[at + len(REASONING) :].lstrip())
    if (
        before
        and after
        and before.group(2) == after.group(2)
        and (opening, closing) == (before.group(3), after.group(1))
    ):
        return before.group(0), after.group(0)
    return opening, closing


def _prompt_opening(template: ChatTemplate) -> str:
    """Text the generation prompt writes after its last tag, when it is words
    (Apriel's ``Here are my reasoning steps:``): the model's reasoning follows it."""
    prompt = render(template, [USER], add_generation_prompt=True).rstrip()
    tags = list(TAG.finditer(prompt))
    tail = prompt[tags[-1].end() :].strip() if tags else ""
    return tail if " " in tail and len(tail) <= 60 and not TAG.search(tail) else ""


def _tags_from_prompt(template: ChatTemplate) -> ThinkingTags | None:
    on = render(template, [USER], add_generation_prompt=True, enable_thinking=True, thinking=True)
    off = render(
        template, [USER], add_generation_prompt=True, enable_thinking=False, thinking=False
    )
    # The generation prompt opens the block: <think>, and </think> in the source.
    tags = TAG.findall(on.rstrip()[-40:])
    if tags and on.rstrip().endswith(tags[-1]):
        opening = tags[-1]
        closing = opening[0] + "/" + opening[1:]
        if closing in template.source:
            return ThinkingTags(opening, closing)
    # Thinking off closes an empty block the model would otherwise write itself.
    if on and off.startswith(on) and len(off) > len(on):
        extra = off[len(on) :].strip()
        extra_tags = TAG.findall(extra)
        if len(extra_tags) >= 2 and extra.endswith(extra_tags[-1]):
            opening = extra[: -len(extra_tags[-1])].strip()
            if TAG.search(opening):
                return ThinkingTags(opening, extra_tags[-1])
    # Instructions that name the tags when thinking is on (Granite 3.3).
    if on != off and "<think>" in on and "</think>" in on:
        return ThinkingTags("<think>", "</think>")
    return None


def answer_framing(template: ChatTemplate, thinking: ThinkingTags | None) -> tuple[str, str]:
    """What the template writes around an answer's text inside the turn, when it is
    tags: after the thought (Kimi K3's ``<|open|>response<|sep|>``, Solar Open's
    ``<|begin|>assistant<|content|>``) and after the text, to the end of the turn
    (K3's ``<|close|>response<|sep|><|close|>message<|sep|>...``). The parser drops
    them: tags the parser needs elsewhere are kept in the text it reads."""
    plain = {"role": "assistant", "content": ANSWER}
    rendered = ""
    if thinking is not None:
        turn = {**plain, **_KEYS, **_MORE_KEYS}
        rendered = render(template, [USER, turn], add_generation_prompt=False)
        if REASONING not in rendered:
            rendered = ""
    rendered = rendered or render(template, [USER, plain], add_generation_prompt=False)
    at = rendered.find(ANSWER)
    if at < 0:
        return "", ""
    prompt = render(template, [USER], add_generation_prompt=True)
    before = rendered[min(common_prefix(rendered, prompt, aligned=True), at) : at]
    if thinking is not None and thinking.close in before:
        before = before[before.rfind(thinking.close) + len(thinking.close) :]
    after = rendered[at + len(ANSWER) :].strip()
    opening = before.strip() if TAG.search(before) and ANSWER not in before else ""
    return opening, after if TAG.match(after) else ""

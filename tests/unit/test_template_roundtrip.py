"""Real models' chat templates, in process: each renders, and what a model would write for
a tool call or a reasoning turn comes back through our parsers as the same call and the
same reasoning.

The templates are the 70 that llama.cpp keeps in ``models/templates/``
(tests/support/templates/); the cases and the round trip are in
tests/support/template_conformance.py. For every template that shows the model its
tools, an assistant turn calling ``get_weather`` is rendered, the text the turn adds is
fed to the parser the runner builds for the detected format (streamed one character at
a time and whole), and the call must come back with the same name and arguments, with
no marker left over as text. Likewise, where the render keeps reasoning or detection
finds thinking, for a turn holding reasoning and an answer.

Templates that do not round-trip today are listed below with the reason, and marked
``xfail(strict=True)``: a fix in detection or in the parsers makes them pass, the strict
xfail then fails, and the entry must go. A template that neither shows tools nor is
detected as taking them, or neither keeps reasoning nor is detected as thinking, passes
for that reason (detection claims nothing it cannot back). benchmarks/templates.py
measures the same templates against llama.cpp (docs/templates.md).
"""

from __future__ import annotations

import functools

import pytest

from localserve.runtime.templates import ChatTemplate
from tests.support import template_conformance as tc

NAMES = tc.template_names()

# Templates that render no plain chat (one user turn), and why.
PLAIN_REFUSALS: dict[str, str] = {}

_NO_CALLS_IN_HISTORY = (
    "the template never renders an assistant turn's tool_calls (the call text is expected "
    "in content): no format to detect, and a call in the history is lost"
)

# Templates that show tools but whose call does not come back, and why.
CALL_XFAIL: dict[str, str] = {
    "LFM2-8B-A1B.jinja": _NO_CALLS_IN_HISTORY,
    "LFM2.5-Instruct.jinja": _NO_CALLS_IN_HISTORY,
    "ibm-granite-granite-3.3-2B-Instruct.jinja": _NO_CALLS_IN_HISTORY,
}

# Templates that keep reasoning or are detected as thinking, whose reasoning does not
# come back, and why.
REASONING_XFAIL: dict[str, str] = {}


@functools.cache
def report(name: str) -> tc.Report:
    return tc.report(name)


def _params(xfails: dict[str, str]) -> list[object]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=xfails[name]))
        if name in xfails
        else name
        for name in NAMES
    ]


def test_the_templates_are_there_and_the_lists_name_only_them() -> None:
    assert len(NAMES) == 70
    for listed in (PLAIN_REFUSALS, CALL_XFAIL, REASONING_XFAIL):
        assert set(listed) <= set(NAMES), set(listed) - set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_plain_chat_renders_or_its_refusal_is_listed(name: str) -> None:
    found = report(name)
    assert not found.compile_error, found.compile_error
    plain = found.renders["plain"]
    if name in PLAIN_REFUSALS:
        assert not plain.ok, f"{name} renders a plain chat now: take it off PLAIN_REFUSALS"
    else:
        assert plain.ok, plain.error


@pytest.mark.parametrize("name", _params(CALL_XFAIL))
def test_tool_call_round_trip(name: str) -> None:
    found = report(name)
    assert not found.errors, found.errors
    defined = found.renders["tools"]
    assert defined.ok, f"the render with a tool fails: {defined.error}"
    assert found.chat is not None
    if not found.reads_tools:
        # The model never sees its tools: detection must not claim it takes them.
        assert found.chat.tools is None
        assert not found.chat.harmony
        return
    assert found.calls is not None
    assert found.calls.ok, f"{found.calls.problems} (the model's text: {found.calls.text!r})"


@pytest.mark.parametrize("name", _params(REASONING_XFAIL))
def test_reasoning_round_trip(name: str) -> None:
    found = report(name)
    assert not found.errors, found.errors
    shown = found.renders["reasoning"]
    if name in PLAIN_REFUSALS:
        assert not shown.ok  # renders nothing without tools; see PLAIN_REFUSALS
        return
    assert shown.ok, shown.error
    assert found.chat is not None
    if found.reasoning is None:
        # No reasoning kept in the render, no thinking detected: nothing to round-trip.
        assert not found.shows_reasoning
        assert not found.chat.thinks
        return
    assert found.reasoning.ok, (
        f"{found.reasoning.problems} (the model's text: {found.reasoning.text!r})"
    )


# ------------------------------------------------------------------ the harness itself


def test_the_turn_text_is_cut_at_tags_not_inside_them() -> None:
    """A call tag that starts like the plain answer's tag stays whole (the character
    diff alone would leave `ACTION|>...`)."""
    source = (
        "{% for m in messages %}<|{{ m.role }}|>"
        "{% if m.tool_calls %}<|START_ACTION|>{{ m.tool_calls[0].function.name }}<|END_ACTION|>"
        "{% else %}<|START_TEXT|>{{ m.content }}<|END_TEXT|>{% endif %}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    template = ChatTemplate(source)
    assert tc.turn_text(template, tc.CALL_TURN) == "<|START_ACTION|>get_weather<|END_ACTION|>"
    # The prompt is not a prefix of the history here (the history has no header of its
    # own): the diff against a plain answer, aligned to tags.
    headless = source.replace("<|{{ m.role }}|>", "").replace("<|assistant|>", "<|a|>")
    assert tc.turn_text(ChatTemplate(headless), tc.CALL_TURN) == (
        "<|START_ACTION|>get_weather<|END_ACTION|>"
    )


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("chat template rejected the conversation: Conversation roles must alternate", "template"),
        (
            "chat template broke the sandbox: access to attribute 'append' of 'list' object "
            "is unsafe",
            "sandbox",
        ),
        (
            "chat template failed: TypeError: Object of type generator is not JSON serializable",
            "sandbox",
        ),
        ("chat template used an undefined value: 'functions' is undefined", "input"),
        ("chat template failed: TypeError: 'NoneType' object is not iterable", "input"),
        (
            "chat template used an undefined value: 'dict object' has no attribute 'description'",
            "input",
        ),
        (
            'chat template failed: TypeError: can only concatenate str (not "dict") to str',
            "input",
        ),
        ("chat template has a syntax error on line 3: no filter named 'fromjson'", "sandbox"),
        ("chat template took longer than 1 s to render", "sandbox"),
    ],
)
def test_refusals_are_read_as_the_template_s_the_sandbox_s_or_the_input_s(
    error: str, kind: str
) -> None:
    assert tc.read_refusal(error).kind == kind

"""The conversation in the shape a chat template reads, as llama.cpp adapts it.

A template is written for one server's variables. llama.cpp (``common/chat.cpp``)
adapts the request to the template it runs, and so does localserve, from what the
template reads, never from the model's name:

- ``tools`` is left undefined when the request has none (transformers passes None;
  an empty list is none too, as llama.cpp reads it):
  a loop over it is then empty, where a loop over None fails (Hermes 2 Pro's and
  Hermes 3's ``tool_use`` templates, Command R+'s, loop over it unguarded);
- ``date_string`` and ``datetime``: today's date, the variables llama.cpp defines
  (Llama 3.x prints ``date_string``, Firefunction v2 ``datetime``); a request's own
  template keyword wins;
- ``functions``: a template that reads ``functions`` and not ``tools`` (Firefunction
  v2, whose own server filled it in) gets the tools' function definitions as JSON
  text, and an empty text without tools;
- a call without a ``type`` or an ``id`` (Ollama's API sends neither) gets OpenAI's:
  ``function`` and an id of 9 letters and digits (``call00001``: Mistral's templates
  refuse any other, Apertus' wants the type), and a tool result without a
  ``tool_call_id`` the id of the call it answers (the results of a turn's calls come
  in their order);
- call arguments go in as JSON text to a template that cannot take an object
  (Functionary v3.2 concatenates ``'\\n' + arguments``): found once by rendering a
  sample call both ways, as llama.cpp's capability probe decides
  ``supports_object_arguments`` (it passes arguments as an object only to
  templates that read into them).

The sandbox (template_environment.py) adds llama.cpp's last adaptation: ``+`` of a
text and an undefined or None value is the text (Command R+ adds each parameter's
``description``, which many tool definitions leave out).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from localserve.errors import TemplateError

Render = Callable[[dict[str, Any]], str]

# A sample call for the probe: its argument's value is what must show in the render.
_NAME, _KEY, _VALUE = "foofoo", "barbar", "bazbaz"


def today() -> dict[str, str]:
    """The date variables llama.cpp defines (its ``common_chat_extra_context``)."""
    now = datetime.now()
    return {"date_string": now.strftime("%d %b %Y"), "datetime": now.strftime("%b %d %Y")}


def tool_variables(
    reads: frozenset[str], tools: Sequence[Mapping[str, Any]] | None
) -> dict[str, Any]:
    """``tools`` (absent without tools) and, for a template that reads ``functions``
    instead, the same definitions as JSON text."""
    found: dict[str, Any] = {}
    if tools:  # none, or an empty list: undefined, as llama.cpp leaves it
        found["tools"] = [dict(tool) for tool in tools]
    if "functions" in reads and "tools" not in reads:
        functions = [tool.get("function", tool) for tool in tools or ()]
        found["functions"] = (
            json.dumps(functions, ensure_ascii=False, indent=4) if functions else ""
        )
    return found


def wants_string_arguments(render: Render, base: Mapping[str, Any]) -> bool:
    """Whether the template fails on (or prints Python's repr of) call arguments given
    as an object, and shows them given as JSON text."""
    as_object = _try(render, {**base, "messages": _sample_call({_KEY: _VALUE})})
    if as_object is not None and _VALUE in as_object and f"'{_KEY}'" not in as_object:
        return False
    as_text = _try(render, {**base, "messages": _sample_call(json.dumps({_KEY: _VALUE}))})
    return as_text is not None and _VALUE in as_text


def arguments_as_text(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each call's object arguments as JSON text (copies where they
    change; the caller's messages are left as they are)."""
    shaped = []
    for message in messages:
        calls = message.get("tool_calls")
        if isinstance(calls, list) and any(_object_arguments(call) for call in calls):
            shaped.append({**message, "tool_calls": [_text_call(call) for call in calls]})
        else:
            shaped.append(message)
    return shaped


def with_call_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each call's ``type`` and ``id``, and each tool result's
    ``tool_call_id``, filled in where missing (copies where they change)."""
    shaped: list[dict[str, Any]] = []
    waiting: deque[str] = deque()  # the ids of the last turn's calls not yet answered
    number = 0
    for message in messages:
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            filled = []
            waiting.clear()
            for call in calls:
                if isinstance(call, Mapping):
                    number += 1
                    given = {"type": "function", **call}
                    given["id"] = given.get("id") or f"call{number:05d}"
                    waiting.append(str(given["id"]))
                    filled.append(given)
                else:
                    filled.append(call)
            shaped.append({**message, "tool_calls": filled})
        elif message.get("role") == "tool" and waiting:
            answered = waiting.popleft()
            if message.get("tool_call_id"):
                shaped.append(message)
            else:
                shaped.append({**message, "tool_call_id": answered})
        else:
            shaped.append(message)
    return shaped


def _object_arguments(call: object) -> bool:
    function = call.get("function") if isinstance(call, Mapping) else None
    return isinstance(function, Mapping) and isinstance(function.get("arguments"), Mapping)


def _text_call(call: Any) -> Any:
    if not _object_arguments(call):
        return call
    function = call["function"]
    arguments = json.dumps(function["arguments"], ensure_ascii=False)
    return {**call, "function": {**function, "arguments": arguments}}


def _sample_call(arguments: object) -> list[dict[str, Any]]:
    call = {"id": "call_1", "type": "function", "function": {"name": _NAME, "arguments": arguments}}
    return [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]


def _try(render: Render, variables: dict[str, Any]) -> str | None:
    try:
        return render(variables)
    except TemplateError:
        return None

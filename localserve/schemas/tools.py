"""Tool definitions and thinking switches as both wire APIs send them."""

from __future__ import annotations

import json
from typing import Any

from localserve.errors import InvalidOptionError

THINK_LEVELS = ("low", "medium", "high")

# Reasoning effort as a thinking budget in tokens (the ``think_budget`` option), for
# OpenAI's ``reasoning_effort``, the Responses API's ``reasoning.effort`` and Ollama's
# ``think`` levels. Fixed counts, not a share of ``max_tokens``: most requests set no
# ``max_tokens``, and a budget should not change when one does. Low, medium and high
# are the budgets Gemini's OpenAI-compatible API maps these levels to (1024 is also
# the least Anthropic takes for ``budget_tokens``); minimal and xhigh extend the
# scale by a factor of four down and a little up. ``none`` turns thinking off.
EFFORT_BUDGETS = {
    "none": 0,
    "minimal": 256,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
}


def check_tools(tools: list[dict[str, Any]] | None, tool_choice: str) -> list[str]:
    """The tools' names, refusing a tool without one and a choice that names none."""
    names: list[str] = []
    for index, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidOptionError(f"tools[{index}] has no function name")
        parameters = function.get("parameters") if isinstance(function, dict) else None
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidOptionError(f"tools[{index}].function.parameters must be an object")
        names.append(name)
    if tool_choice not in ("auto", "none", "required") and tool_choice not in names:
        raise InvalidOptionError(f"tool_choice names {tool_choice!r}, which is not among tools")
    if tool_choice == "required" and not names:
        raise InvalidOptionError('tool_choice "required" needs at least one tool')
    return names


def effort_budget(effort: str | None) -> int | None:
    """The thinking budget of an effort level (None for none given)."""
    if effort is None:
        return None
    if effort not in EFFORT_BUDGETS:
        raise InvalidOptionError(
            f"reasoning effort must be one of {', '.join(EFFORT_BUDGETS)}, got {effort!r}"
        )
    return EFFORT_BUDGETS[effort]


def check_think(think: object) -> bool | str | None:
    """Ollama's ``think``: true, false, or an effort level."""
    if think is None or isinstance(think, bool):
        return think
    if think in THINK_LEVELS:
        return str(think)
    raise InvalidOptionError(f"think must be true, false or one of {', '.join(THINK_LEVELS)}")


def history_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message of the conversation in the forms chat templates read: reasoning under
    both ``reasoning_content`` and ``thinking``, a tool result's function under
    ``name`` (Ollama sends ``tool_name``), call arguments as objects."""
    result = dict(message)
    reasoning = result.get("thinking") or result.get("reasoning_content")
    if reasoning:
        result["thinking"] = result["reasoning_content"] = reasoning
    if result.get("tool_name") and not result.get("name"):
        result["name"] = result["tool_name"]
    calls = result.get("tool_calls")
    if isinstance(calls, list):
        result["tool_calls"] = [_parsed_arguments(call) for call in calls]
    return result


def _parsed_arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"] or "{}")
    except ValueError:
        raise InvalidOptionError(
            f"tool call arguments are not valid JSON: {function['arguments'][:100]!r}"
        ) from None
    return {**call, "function": {**function, "arguments": arguments}}

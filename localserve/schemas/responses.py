"""OpenAI's Responses API (/v1/responses), what comes in: the request, its tools, and
its input items as the chat messages every API builds its job from. What goes out (the
response object, its stream events, the shape that makes them of engine events) is in
schemas/response_objects.py: one API, two modules, each on one side of the wire.

The clients are the judges: the ``openai`` package (``responses.create``, ``.stream``,
``.parse``), the OpenAI Agents SDK and Codex (tests/e2e/test_responses_*.py).

Input items become chat messages: ``message`` items (``developer`` is ``system``), and
an assistant turn's ``reasoning``, ``message`` and ``function_call`` items gather into
one assistant message (reasoning, then text, then calls) as chat templates expect;
``function_call_output`` is a ``tool`` message. Reasoning we returned comes back as
its ``content`` or, from a client that keeps no state (Codex), as the
``encrypted_content`` we gave it (not encrypted: the text, encoded; see
:func:`reasoning_token`). Function tools (also inside a ``namespace``) become chat
tools; a tool of any other type (web search, file search, MCP...) is a 400 naming it.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any, Literal

from pydantic import Field

from localserve.errors import InvalidOptionError
from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import (
    GenerateJob,
)
from localserve.schemas.base import Request
from localserve.schemas.media import check_media, from_url
from localserve.schemas.tools import check_tools, effort_budget, history_message

# ------------------------------------------------------------------ the request


class TextFormat(Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(Request):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted, no effect


class ReasoningConfig(Request):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: str | None = None  # accepted: no summaries here, the reasoning itself is sent


# reasoning.effort as the job's ``think`` (schemas/tools.py THINK_LEVELS).
_EFFORT: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}


class ResponseRequest(Request):
    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = Field(default=None, min_length=1)
    include: list[str] | None = None
    # Accepted, no effect: the engine always drops the oldest turns that do not fit.
    truncation: Literal["auto", "disabled"] | None = None
    metadata: dict[str, str] | None = None
    # Accepted, no effect (the prefix cache needs no key).
    user: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    max_tool_calls: int | None = Field(default=None, ge=0)
    # localserve extensions, as on the other /v1 routes
    options: dict[str, Any] | None = None
    num_ctx: int | None = Field(default=None, ge=16)
    keep_alive: str | float | int | None = None

    def overrides(self) -> dict[str, Any]:
        """These fields as Ollama options (they win over the same keys in ``options``)."""
        return {
            "num_predict": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "num_ctx": self.num_ctx,
            # A thinking budget (schemas/tools.py EFFORT_BUDGETS); "none" turns it off.
            "think_budget": effort_budget(self.reasoning.effort if self.reasoning else None),
        }

    @property
    def encrypted_reasoning(self) -> bool:
        return "reasoning.encrypted_content" in (self.include or ())

    def input_items(self) -> list[dict[str, Any]]:
        """The request's own input as items of the API, each with an id (what
        ``input_items`` lists and a continuation reads again)."""
        if self.input is None:
            return []
        if isinstance(self.input, str):
            return [_message_item("user", self.input)]
        return [_with_id(item) for item in self.input]

    def tool_set(self) -> ToolSet:
        return ToolSet.of(self.tools or [], self.tool_choice)

    def to_job(
        self, options: SamplingOptions, items: list[dict[str, Any]], tools: ToolSet
    ) -> GenerateJob:
        """The job of this request on ``items`` (earlier turns' items, then its own)."""
        messages = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        messages += conversation(items)
        if not any(m["role"] != "system" for m in messages):
            raise InvalidOptionError("input is empty: send a string or a list of input items")
        return GenerateJob(
            messages=messages,
            tools=tools.chat or None,
            tool_choice=tools.choice,
            parallel_tool_calls=self.parallel_tool_calls,
            format=self.output_format(),
            think=self.think(),
            options=options,
            # A stream learns when the runner has taken the job (and how far the prompt
            # is read): its status, and its keepalives, hang on that.
            progress=self.stream,
        )

    def think(self) -> bool | str | None:
        effort = self.reasoning.effort if self.reasoning else None
        return None if effort is None else _EFFORT[effort]

    def output_format(self) -> str | dict[str, Any] | None:
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return "json"
        if not isinstance(fmt.json_schema, dict):
            raise InvalidOptionError("text.format.schema must be a JSON schema object")
        return fmt.json_schema

    def text_echo(self) -> dict[str, Any]:
        fmt = self.text.format if self.text else None
        shown = fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
        return {"format": shown}


class ToolSet:
    """The request's tools as chat tools, the choice among them, and the namespace each
    function came in (Codex groups some of its tools so)."""

    def __init__(self, chat: list[dict[str, Any]], choice: str, namespaces: dict[str, str]):
        self.chat = chat
        self.choice = choice
        self.namespaces = namespaces

    @classmethod
    def of(cls, tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None) -> ToolSet:
        chat: list[dict[str, Any]] = []
        namespaces: dict[str, str] = {}
        for index, tool in enumerate(tools):
            kind = tool.get("type")
            if kind == "function":
                chat.append(_chat_tool(tool, f"tools[{index}]"))
            elif kind == "namespace" and isinstance(tool.get("tools"), list):
                space = tool.get("name")
                for number, inner in enumerate(tool["tools"]):
                    where = f"tools[{index}].tools[{number}]"
                    if not isinstance(inner, dict) or inner.get("type") != "function":
                        raise InvalidOptionError(f"{where} must be a function tool")
                    chat.append(_chat_tool(inner, where))
                    if isinstance(space, str) and space:
                        namespaces[str(inner.get("name"))] = space
            else:
                raise InvalidOptionError(_unsupported_tool(f"tools[{index}]", kind))
        choice, allowed = _choice(tool_choice, bool(chat))
        if allowed is not None:
            chat = [t for t in chat if t["function"]["name"] in allowed]
        check_tools(chat, choice)
        return cls(chat, choice, namespaces)


def _unsupported_tool(where: str, kind: object) -> str:
    shown = repr(kind) if isinstance(kind, str) else "no type"
    return (
        f"{where} is a tool of type {shown}, which localserve cannot run: "
        "only function tools are supported"
    )


def _chat_tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    """A Responses function tool (flat) as a chat completions tool (``function``)."""
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidOptionError(f"{where} has no function name")
    function: dict[str, Any] = {"name": name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if tool.get("parameters") is not None:
        function["parameters"] = tool["parameters"]
    return {"type": "function", "function": function}


def _choice(
    tool_choice: str | dict[str, Any] | None, has_tools: bool
) -> tuple[str, set[str] | None]:
    """``tool_choice`` as "none", "auto", "required" or the function's name, and the
    names ``allowed_tools`` limits the tools to (None: all)."""
    if tool_choice is None:
        return ("auto" if has_tools else "none"), None
    if isinstance(tool_choice, str):
        return tool_choice, None
    kind = tool_choice.get("type")
    if kind == "function":
        name = tool_choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidOptionError('tool_choice of type "function" needs a "name"')
        return name, None
    if kind == "allowed_tools":
        mode = tool_choice.get("mode", "auto")
        listed = tool_choice.get("tools")
        if mode not in ("auto", "required") or not isinstance(listed, list):
            raise InvalidOptionError(
                'tool_choice of type "allowed_tools" needs "mode" (auto or required) and "tools"'
            )
        names = set()
        for index, tool in enumerate(listed):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                kind_shown = tool.get("type") if isinstance(tool, dict) else None
                raise InvalidOptionError(
                    _unsupported_tool(f"tool_choice.tools[{index}]", kind_shown)
                )
            names.add(str(tool.get("name")))
        return str(mode), names
    if isinstance(kind, str):
        raise InvalidOptionError(_unsupported_tool("tool_choice", kind))
    raise InvalidOptionError(
        'tool_choice must be "none", "auto", "required" or {"type": "function", "name": ...}'
    )


# ------------------------------------------------------------- items to messages


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _message_item(role: str, text: str) -> dict[str, Any]:
    part = "output_text" if role == "assistant" else "input_text"
    return {
        "type": "message",
        "id": new_id("msg"),
        "role": role,
        "content": [{"type": part, "text": text}],
    }


def _with_id(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as kept: its type spelled out, an id where it had none."""
    kept = dict(item)
    if "type" not in kept and "role" in kept:
        kept["type"] = "message"
    if not isinstance(kept.get("id"), str) or not kept["id"]:
        prefixes = {"message": "msg", "function_call": "fc", "reasoning": "rs"}
        kept["id"] = new_id(prefixes.get(str(kept.get("type")), "item"))
    return kept


_INPUT_ROLES = ("user", "system", "developer", "assistant")
# Where each part of an assistant turn goes, in the order chat templates write them.
_STAGES = {"reasoning": 0, "content": 1, "tool_calls": 2}


def conversation(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items (input items, or a kept response's output items) as chat messages."""
    messages: list[dict[str, Any]] = []
    stages: list[int] = []  # per message: the latest assistant stage it holds (-1: none)
    names: dict[str, str] = {}  # call_id -> function name, for the tool results
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _INPUT_ROLES:
                shown = repr(role) if isinstance(role, str) else "missing"
                raise InvalidOptionError(
                    f"{where}.role must be one of {', '.join(_INPUT_ROLES)}, not {shown}"
                )
            if role == "assistant":
                _assistant(messages, stages, "content", _text(item.get("content"), where))
            else:
                messages.append(_input_message(str(role), item.get("content"), where))
                stages.append(-1)
        elif kind == "function_call":
            call: dict[str, str] = {}
            for key in ("call_id", "name", "arguments"):
                value = item.get(key)
                if not isinstance(value, str) or (key != "arguments" and not value):
                    raise InvalidOptionError(f"{where}.{key} must be a string")
                call[key] = value
            names[call["call_id"]] = call["name"]
            function = {"name": call["name"], "arguments": call["arguments"] or "{}"}
            tool_call = {"id": call["call_id"], "type": "function", "function": function}
            _assistant(messages, stages, "tool_calls", tool_call)
        elif kind == "function_call_output":
            called = item.get("call_id")
            if not isinstance(called, str) or not called:
                raise InvalidOptionError(f"{where}.call_id must be a string")
            result = {"role": "tool", "tool_call_id": called, "content": ""}
            output = item.get("output")
            if isinstance(output, str):
                result["content"] = output
            else:
                result.update(_parts(output, f"{where}.output"))
            if called in names:
                result["name"] = names[called]
            messages.append(result)
            stages.append(-1)
        elif kind == "reasoning":
            text = _reasoning_text(item, where)
            if text:
                _assistant(messages, stages, "reasoning", text)
        else:
            shown = repr(kind) if isinstance(kind, str) else "no type"
            raise InvalidOptionError(
                f"{where} is an item of type {shown}, which localserve does not take: send "
                "message, function_call, function_call_output or reasoning items"
            )
    return [history_message(m) for m in messages]


def _assistant(
    messages: list[dict[str, Any]], stages: list[int], stage_name: str, value: Any
) -> None:
    """Add one part of an assistant turn: to the assistant message before it when it
    comes later in a turn than what that holds (several calls gather too), else as a
    new assistant message."""
    stage = _STAGES[stage_name]
    last = messages[-1] if messages else None
    joins = (
        last is not None
        and last["role"] == "assistant"
        and (stages[-1] < stage or stage == stages[-1] == _STAGES["tool_calls"])
    )
    if not joins:
        messages.append({"role": "assistant", "content": ""})
        stages.append(-1)
        last = messages[-1]
    assert last is not None
    if stage_name == "tool_calls":
        last.setdefault("tool_calls", []).append(value)
    elif stage_name == "reasoning":
        last["reasoning_content"] = value
    else:
        last["content"] = value
    stages[-1] = stage


def _text(content: object, where: str) -> str:
    """An assistant message's text: a string, or output_text (and refusal) parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidOptionError(f"{where}.content must be a string or a list of parts")
    texts = []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        value = part.get("refusal" if kind == "refusal" else "text") if kind else None
        if kind not in ("output_text", "input_text", "text", "refusal") or not isinstance(
            value, str
        ):
            raise InvalidOptionError(
                f"{where}.content[{number}] must be an output_text part with a text"
            )
        texts.append(value)
    return "\n".join(texts)


def _input_message(role: str, content: object, where: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "system" if role == "developer" else role}
    if isinstance(content, str):
        message["content"] = content
    else:
        message.update(_parts(content, f"{where}.content"))
    return message


def _parts(content: object, where: str) -> dict[str, Any]:
    """Input parts as a message's ``content`` text and ``images`` (before the text, as
    the chat completions API places them)."""
    if not isinstance(content, list):
        raise InvalidOptionError(f"{where} must be a string or a list of input parts")
    texts: list[str] = []
    media: list[object] = []
    for number, part in enumerate(content):
        place = f"{where}[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict):
            raise InvalidOptionError(f"{place} must be an object")
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(part.get("text"), str):
                raise InvalidOptionError(f"{place}.text must be a string")
            texts.append(part["text"])
        elif kind == "input_image":
            url = part.get("image_url")
            if url is None and part.get("file_id") is not None:
                raise InvalidOptionError(
                    f"{place} names a file_id: localserve keeps no files; send the image as "
                    "a data: URL (data:image/png;base64,...)"
                )
            media.append(from_url(url, place))
        else:
            shown = repr(kind) if isinstance(kind, str) else "no type"
            raise InvalidOptionError(
                f"{place} is a part of type {shown}; send input_text or input_image parts"
            )
    result: dict[str, Any] = {"content": "\n".join(texts)}
    if media:
        result["images"] = [m.data for m in check_media(media, f"{where} images")]
    return result


# What a reasoning item's encrypted_content is here: the reasoning itself, encoded, so a
# client that keeps no state can send it back. Not secret: it came from this client.
_REASONING_TOKEN = "lsr1."


def reasoning_token(text: str) -> str:
    return _REASONING_TOKEN + base64.urlsafe_b64encode(text.encode()).decode()


def _reasoning_text(item: dict[str, Any], where: str) -> str:
    """A reasoning item's text: its content, else its encrypted_content when we made it,
    else its summary (another server's encrypted reasoning cannot be read)."""
    parts = item.get("content")
    if isinstance(parts, list) and parts:
        texts = [p.get("text") for p in parts if isinstance(p, dict)]
        if not all(isinstance(t, str) for t in texts):
            raise InvalidOptionError(f"{where}.content must be reasoning_text parts")
        return "".join(str(t) for t in texts)
    token = item.get("encrypted_content")
    if isinstance(token, str) and token.startswith(_REASONING_TOKEN):
        try:
            return base64.urlsafe_b64decode(token[len(_REASONING_TOKEN) :]).decode()
        except (binascii.Error, ValueError):
            raise InvalidOptionError(f"{where}.encrypted_content is damaged") from None
    summary = item.get("summary")
    if isinstance(summary, list):
        return "\n".join(
            str(p["text"])
            for p in summary
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""

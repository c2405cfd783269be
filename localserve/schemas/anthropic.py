"""Anthropic's Messages API (``/v1/messages``): the request fields we honour, how a
conversation of content blocks becomes the engine's chat, the message we return and
the stream events that make it.

The official ``anthropic`` SDK and Claude Code are the judges
(tests/e2e/test_compat_anthropic.py, tests/e2e/test_claude_code.py).

What the translation does:

- ``system`` (a string or text blocks) becomes a system message; ``messages`` of
  ``user`` and ``assistant`` turns become the chat (a ``system`` message among them,
  which Claude Code sends, joins the system prompt when no turn came before it, and is
  the user's words where it stands otherwise: templates have no place for it). A user turn's ``tool_result`` blocks
  become ``tool`` messages (before the turn's own text, as Anthropic puts them first),
  named after the ``tool_use`` they answer; an assistant turn's ``tool_use`` blocks
  become its ``tool_calls``, its ``thinking`` blocks its reasoning; ``redacted_thinking``
  is dropped (nothing here can read it). Consecutive turns of one role are joined into
  one, as Anthropic does.
- Images come as base64 (``source.type: "base64"``); a ``url`` source is refused: the
  daemon never fetches a URL (schemas/media.py says why).
- ``tools`` are client tools (``name``, ``description``, ``input_schema``); Anthropic's
  server tools (``web_search``, ``bash``, ``code_execution``...: a ``type`` other than
  ``custom``) run on Anthropic's servers, so they are refused, by name.
- ``tool_choice``: ``auto``, ``any`` (a call is enforced by grammar), ``tool`` (that
  one, by grammar), ``none``; ``disable_parallel_tool_use`` allows one call.
- ``thinking``: ``enabled`` turns the model's thinking on, with ``budget_tokens`` its
  thinking budget (any number of tokens from 0: Anthropic's least, 1024, is a lot for a
  small local model), ``disabled`` off, ``adaptive`` (and no ``thinking`` at all) leaves
  the model's default.
- Claude Code's billing line at the top of its system prompt is left out (see
  BILLING_HEADER): it changes with every prompt, and would defeat the prefix cache.
- Fields that change nothing here (``metadata``, ``cache_control`` on any block,
  ``service_tier``, ``container``, ``context_management``, the ``anthropic-*`` headers)
  are accepted and ignored.

Usage follows Anthropic's split of the prompt: ``input_tokens`` is the part read anew,
``cache_read_input_tokens`` the part served from the prefix cache (together the whole
prompt, which is what ``/v1/messages/count_tokens`` counts); nothing is written to a
cache on request, so ``cache_creation_input_tokens`` is 0.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from localserve.errors import InvalidOptionError
from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import (
    DoneEvent,
    Event,
    GenerateJob,
    ProgressEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from localserve.schemas.answer import Answer
from localserve.schemas.base import Request, Response
from localserve.schemas.media import check_media
from localserve.schemas.tools import check_tools

# ------------------------------------------------------------------ requests


class TextBlock(Request):
    type: Literal["text"]
    text: str


class ImageSource(Request):
    type: str  # "base64"; "url" and "file" are refused
    media_type: str | None = None  # the bytes say what they are (schemas/media.py)
    data: str | None = None
    url: str | None = None


class ImageBlock(Request):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(Request):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


def _content_kind(value: Any) -> str | None:
    return "text" if isinstance(value, str) else "blocks" if isinstance(value, list) else None


# A content field is a string or a list of blocks, told apart by the value's type, so
# that a bad block is reported as itself rather than as "not a string".
_CONTENT = Discriminator(
    _content_kind,
    custom_error_type="content_type",
    custom_error_message="content must be a string or a list of content blocks",
)
ResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(Request):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Annotated[
        Annotated[str, Tag("text")] | Annotated[list[ResultPart], Tag("blocks")], _CONTENT
    ] = ""
    is_error: bool = False


class ThinkingBlock(Request):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None  # ours is a checksum; never checked when it comes back


class RedactedThinkingBlock(Request):
    type: Literal["redacted_thinking"]
    data: str | None = None


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class InputMessage(Request):
    # "system": Claude Code's mid-conversation system messages (a beta of Anthropic's).
    role: Literal["user", "assistant", "system"]
    content: Annotated[
        Annotated[str, Tag("text")] | Annotated[list[Block], Tag("blocks")], _CONTENT
    ]


class ToolDefinition(Request):
    name: str = Field(min_length=1)
    # None or "custom": a client tool; anything else is one of Anthropic's server tools.
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class ThinkingConfig(Request):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=0)  # the think_budget option


# Claude Code starts its system prompt with a block "x-anthropic-billing-header:
# cc_version=2.1.197.1c0; cc_entrypoint=sdk-cli;" whose version suffix changes with the
# prompt: billing metadata for Anthropic's servers, nothing for the model, and at the
# very top it would keep the prefix cache from reusing anything of the ~19k tokens
# after it (llama-server blanks a part of it for the same reason). It is left out.
BILLING_HEADER = "x-anthropic-billing-header:"


class MessagesFields(Request):
    """What a message and a token count share (count_tokens takes no ``max_tokens``)."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None

    def overrides(self, max_tokens: int | None = None) -> dict[str, Any]:
        """These fields as Ollama options."""
        return {
            "num_predict": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop": self.stop_sequences,
            "think_budget": self.thinking.budget_tokens
            if self.thinking is not None and self.thinking.type == "enabled"
            else None,
        }

    def to_job(self, options: SamplingOptions, *, stream: bool = False) -> GenerateJob:
        tools = self.engine_tools()
        choice, parallel = self.choice()
        check_tools(tools, choice)
        return GenerateJob(
            messages=self.engine_messages(),
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=parallel,
            think=self.think(),
            options=options,
            # A stream learns when the runner has taken the job (message_start waits for
            # it, and carries the prompt's length); the status and the pings hang on it.
            progress=stream,
        )

    def think(self) -> bool | None:
        if self.thinking is None or self.thinking.type == "adaptive":
            return None
        return self.thinking.type == "enabled"

    def choice(self) -> tuple[str, bool]:
        """``tool_choice`` as the job's ("auto", "none", "required" or a tool's name),
        and whether parallel calls are allowed."""
        tool_choice = self.tool_choice
        if tool_choice is None:
            return ("auto" if self.tools else "none"), True
        parallel = not tool_choice.disable_parallel_tool_use
        if tool_choice.type == "tool":
            if not tool_choice.name:
                raise InvalidOptionError('tool_choice of type "tool" needs the tool\'s name')
            return tool_choice.name, parallel
        return {"any": "required"}.get(tool_choice.type, tool_choice.type), parallel

    def engine_tools(self) -> list[dict[str, Any]] | None:
        """The client tools as the chat templates take them (OpenAI's function form)."""
        if not self.tools:
            return None
        result = []
        for index, tool in enumerate(self.tools):
            if tool.type not in (None, "custom"):
                raise InvalidOptionError(
                    f"tools[{index}] is {tool.name!r} of type {tool.type!r}, one of "
                    "Anthropic's server tools, which run on Anthropic's servers; localserve "
                    "runs client tools only (name, description, input_schema)"
                )
            if tool.input_schema is None:
                raise InvalidOptionError(f"tools[{index}] ({tool.name!r}) has no input_schema")
            function: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                function["description"] = tool.description
            function["parameters"] = tool.input_schema
            result.append({"type": "function", "function": function})
        return result

    def system_text(self) -> str | None:
        """The system prompt, without Claude Code's billing line (see BILLING_HEADER)."""
        blocks = [self.system] if isinstance(self.system, str) else self.system or []
        texts = [b if isinstance(b, str) else b.text for b in blocks]
        return "\n".join(t for t in texts if not t.startswith(BILLING_HEADER)) or None

    def engine_messages(self) -> list[dict[str, Any]]:
        """The conversation in the forms chat templates know (see the module docstring)."""
        result: list[dict[str, Any]] = []
        system = self.system_text()
        if system:
            result.append({"role": "system", "content": system})
        names: dict[str, str] = {}  # tool_use ids to their tools' names
        for index, message in enumerate(self.messages):
            if message.role == "assistant":
                turns = [_assistant_turn(message.content, index, names)]
            elif message.role == "system":
                leading = all(turn["role"] == "system" for turn in result)
                turns = [_system_turn(message.content, index, leading=leading)]
            else:
                turns = _user_turns(message.content, index, names)
            for turn in turns:
                _append(result, turn)
        return result


class MessagesRequest(MessagesFields):
    max_tokens: int = Field(ge=1)
    stream: bool = False


class CountTokensRequest(MessagesFields):
    """The body of /v1/messages/count_tokens: a message's, with no ``max_tokens``."""


def _system_turn(content: str | list[Block], index: int, *, leading: bool) -> dict[str, Any]:
    """A system message in the conversation: before any turn it joins the system prompt;
    later, where chat templates have no place for one (most drop it or refuse it), it
    becomes the user's words at that point of the conversation."""
    texts: list[str] = []
    for number, block in enumerate([content] if isinstance(content, str) else content):
        if isinstance(block, str | TextBlock):
            texts.append(block if isinstance(block, str) else block.text)
        else:
            raise InvalidOptionError(
                f"messages[{index}].content[{number}]: a system message holds text blocks only"
            )
    return {"role": "system" if leading else "user", "content": "\n".join(texts)}


def _assistant_turn(
    content: str | list[Block], index: int, names: dict[str, str]
) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for number, block in enumerate(content):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ThinkingBlock):
            thinking.append(block.thinking)
        elif isinstance(block, ToolUseBlock):
            names[block.id] = block.name
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": block.input},
                }
            )
        elif not isinstance(block, RedactedThinkingBlock):
            raise InvalidOptionError(
                f"messages[{index}].content[{number}]: an assistant message cannot hold "
                f"a {block.type} block"
            )
    turn: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if thinking:
        turn["thinking"] = turn["reasoning_content"] = "\n".join(thinking)
    if calls:
        turn["tool_calls"] = calls
    return turn


def _user_turns(
    content: str | list[Block], index: int, names: dict[str, str]
) -> list[dict[str, Any]]:
    """A user message's tool results (each a ``tool`` message) and then its own turn."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    images: list[str] = []
    for number, block in enumerate(content):
        where = f"messages[{index}].content[{number}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ImageBlock):
            images.append(_image(block, where))
        elif isinstance(block, ToolResultBlock):
            results.append(_tool_result(block, where, names))
        else:
            raise InvalidOptionError(
                f"{where}: a user message cannot hold a {block.type} block "
                "(tool_use and thinking blocks are the assistant's)"
            )
    if texts or images or not results:
        turn: dict[str, Any] = {"role": "user", "content": "\n".join(texts)}
        if images:
            turn["images"] = images
        results.append(turn)
    return results


def _tool_result(block: ToolResultBlock, where: str, names: dict[str, str]) -> dict[str, Any]:
    texts: list[str] = []
    images: list[str] = []
    if isinstance(block.content, str):
        texts.append(block.content)
    for number, part in enumerate(block.content if isinstance(block.content, list) else []):
        if isinstance(part, TextBlock):
            texts.append(part.text)
        else:
            images.append(_image(part, f"{where}.content[{number}]"))
    text = "\n".join(texts)
    if block.is_error:
        # Templates have no place for a failure: the result says it in words.
        text = f"Error: {text}" if text else "Error"
    turn: dict[str, Any] = {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}
    name = names.get(block.tool_use_id)
    if name:
        turn["name"] = name
    if images:
        turn["images"] = images
    return turn


def _image(block: ImageBlock, where: str) -> str:
    """An image block's base64 bytes, checked (schemas/media.py)."""
    source = block.source
    if source.type == "url":
        raise InvalidOptionError(
            f"{where} is an image by URL: localserve does not fetch URLs; send the image's "
            'bytes as a base64 source ({"type": "base64", "media_type": ..., "data": ...})'
        )
    if source.type != "base64" or source.data is None:
        raise InvalidOptionError(
            f"{where}.source must be a base64 source with data, not type {source.type!r}"
        )
    (medium,) = check_media([source.data], f"{where}.source.data")
    if medium.kind != "image":
        raise InvalidOptionError(f"{where}.source.data is not an image")
    return medium.data


def _append(messages: list[dict[str, Any]], turn: dict[str, Any]) -> None:
    """Add a turn, joining it to the last one when both are the user's or the
    assistant's (Anthropic joins consecutive turns of one role; many templates insist
    on alternating)."""
    last = messages[-1] if messages else None
    if last is None or last["role"] != turn["role"] or turn["role"] == "tool":
        messages.append(turn)
        return
    last["content"] = "\n".join(t for t in (last["content"], turn["content"]) if t)
    for key in ("images", "tool_calls"):
        if turn.get(key):
            last[key] = [*last.get(key, []), *turn[key]]
    if turn.get("thinking"):
        joined = "\n".join(t for t in (last.get("thinking"), turn["thinking"]) if t)
        last["thinking"] = last["reasoning_content"] = joined


# -------------------------------------------------------------------- responses


class TextContent(Response):
    type: Literal["text"] = "text"
    text: str


class ThinkingContent(Response):
    type: Literal["thinking"] = "thinking"
    thinking: str
    # Anthropic's is an encrypted proof; ours is the text's SHA-256, a checksum that
    # proves nothing and is never checked when the block comes back in a conversation.
    signature: str


class ToolUseContent(Response):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = TextContent | ThinkingContent | ToolUseContent


class Usage(Response):
    input_tokens: int  # the prompt's tokens read anew
    cache_creation_input_tokens: int  # always 0: no cache is written on request
    cache_read_input_tokens: int  # the prompt's tokens found in the prefix cache
    output_tokens: int

    @classmethod
    def of(cls, total: int, cached: int, output: int) -> Usage:
        return cls(
            input_tokens=max(0, total - cached),
            cache_creation_input_tokens=0,
            cache_read_input_tokens=cached,
            output_tokens=output,
        )

    @classmethod
    def done(cls, done: DoneEvent) -> Usage:
        return cls.of(done.prompt_eval_count, done.prompt_cached, done.eval_count)


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Message(Response):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None  # null only in message_start
    stop_sequence: str | None
    usage: Usage


class TokenCount(Response):
    input_tokens: int


class MessageStart(Response):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStart(Response):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class TextDelta(Response):
    type: Literal["text_delta"] = "text_delta"
    text: str


class ThinkingDelta(Response):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class SignatureDelta(Response):
    type: Literal["signature_delta"] = "signature_delta"
    signature: str


class InputJSONDelta(Response):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDelta(Response):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: TextDelta | ThinkingDelta | SignatureDelta | InputJSONDelta


class ContentBlockStop(Response):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class StopInfo(Response):
    stop_reason: StopReason
    stop_sequence: str | None


class MessageDelta(Response):
    type: Literal["message_delta"] = "message_delta"
    delta: StopInfo
    usage: Usage  # cumulative, the input's counts included (the SDK keeps the latest)


class MessageStop(Response):
    type: Literal["message_stop"] = "message_stop"


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
)


def signature(thinking: str) -> str:
    return hashlib.sha256(thinking.encode()).hexdigest()


def tool_use_id(call: ToolCallEvent) -> str:
    """The model's own id for a call where its format has one, else a new one."""
    return call.call_id or f"toolu_{uuid.uuid4().hex[:24]}"


def stop_of(done: DoneEvent, called: bool, stops: tuple[str, ...]) -> tuple[StopReason, str | None]:
    """``stop_reason`` and ``stop_sequence``: a cut answer is ``max_tokens``; one that
    called a tool ``tool_use``; one ended by a request's stop string ``stop_sequence``
    (a template's own stop, such as the fallback format's next turn, is an end of turn)."""
    if done.done_reason == "length":
        return "max_tokens", None
    if called:
        return "tool_use", None
    if done.stop_sequence and done.stop_sequence in stops:
        return "stop_sequence", done.stop_sequence
    return "end_turn", None


class MessageShape:
    """The message, or its stream events, for one request.

    Streamed as Anthropic streams: ``message_start`` (with the prompt's length and its
    cached part when the route saw the runner take the job, ``opened_by``: its first
    progress event tells them; else zeros until ``message_delta``), then
    each content block in the order the model writes them (``content_block_start``, its
    deltas, ``content_block_stop``: a thinking block ends with its ``signature_delta``; a
    tool call comes whole, its input as one ``input_json_delta``), then ``message_delta``
    with the stop reason and the usage, and ``message_stop``. Pings and an error event
    are server/streaming.py's.
    """

    n = 1

    def __init__(self, body: MessagesRequest) -> None:
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.model = body.model
        self.stops = tuple(body.stop_sequences or ())
        self._opening: Event | None = None
        self._index = -1  # the last block's
        self._open: Literal["text", "thinking"] | None = None
        self._thinking: list[str] = []  # the open thinking block's text, for its signature
        self._called = False

    def opened_by(self, first: Event | None) -> None:
        """The stream's first event, if it came before the stream opened."""
        self._opening = first

    def head(self) -> list[StreamEvent]:
        return [self._message_start(self._opening)]

    def chunks(self, event: Event) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if isinstance(event, ThinkingEvent) and event.text:
            out += self._block("thinking")
            self._thinking.append(event.text)
            out.append(
                ContentBlockDelta(index=self._index, delta=ThinkingDelta(thinking=event.text))
            )
        elif isinstance(event, TextEvent) and event.text:
            out += self._block("text")
            out.append(ContentBlockDelta(index=self._index, delta=TextDelta(text=event.text)))
        elif isinstance(event, ToolCallEvent):
            out += self._close()
            self._called = True
            self._index += 1
            use = ToolUseContent(id=tool_use_id(event), name=event.name, input={})
            arguments = json.dumps(event.arguments, ensure_ascii=False)
            out += [
                ContentBlockStart(index=self._index, content_block=use),
                ContentBlockDelta(index=self._index, delta=InputJSONDelta(partial_json=arguments)),
                ContentBlockStop(index=self._index),
            ]
        elif isinstance(event, DoneEvent):
            out += self._close()
            reason, sequence = stop_of(event, self._called, self.stops)
            out += [
                MessageDelta(
                    delta=StopInfo(stop_reason=reason, stop_sequence=sequence),
                    usage=Usage.done(event),
                ),
                MessageStop(),
            ]
        return out

    def tail(self) -> list[StreamEvent]:
        return []

    def whole(self, answers: list[Answer]) -> Message:
        (answer,) = answers
        done = answer.done or DoneEvent("", "stop")
        content: list[ContentBlock] = []
        if answer.reasoning:
            content.append(
                ThinkingContent(thinking=answer.reasoning, signature=signature(answer.reasoning))
            )
        if answer.content:
            content.append(TextContent(text=answer.content))
        content += [
            ToolUseContent(id=tool_use_id(c), name=c.name, input=c.arguments) for c in answer.calls
        ]
        reason, sequence = stop_of(done, bool(answer.calls), self.stops)
        return Message(
            id=self.id,
            model=self.model,
            content=content,
            stop_reason=reason,
            stop_sequence=sequence,
            usage=Usage.done(done),
        )

    def _message_start(self, event: Event | None) -> MessageStart:
        # The runner's first progress event knows the prompt (a stream asks for them);
        # the final counts come in message_delta regardless.
        usage = (
            Usage.of(event.total, event.cache, 0)
            if isinstance(event, ProgressEvent)
            else Usage.of(0, 0, 0)
        )
        message = Message(
            id=self.id,
            model=self.model,
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage=usage,
        )
        return MessageStart(message=message)

    def _block(self, kind: Literal["text", "thinking"]) -> list[StreamEvent]:
        """Open a block of ``kind`` unless one is open (closing another kind first)."""
        if self._open == kind:
            return []
        out = self._close()
        self._index += 1
        self._open = kind
        block: ContentBlock = (
            TextContent(text="") if kind == "text" else ThinkingContent(thinking="", signature="")
        )
        out.append(ContentBlockStart(index=self._index, content_block=block))
        return out

    def _close(self) -> list[StreamEvent]:
        if self._open is None:
            return []
        out: list[StreamEvent] = []
        if self._open == "thinking":
            proof = signature("".join(self._thinking))
            out.append(ContentBlockDelta(index=self._index, delta=SignatureDelta(signature=proof)))
            self._thinking = []
        out.append(ContentBlockStop(index=self._index))
        self._open = None
        return out

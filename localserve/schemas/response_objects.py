"""OpenAI's Responses API (/v1/responses), what goes out: the response object, its
output items, the stream's typed events, and :class:`ResponsesShape`, which makes them
of the engine's events (the request side is schemas/responses.py).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import Field

from localserve.runtime.protocol import (
    DoneEvent,
    Event,
    ProgressEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from localserve.schemas.answer import Answer
from localserve.schemas.base import Response
from localserve.schemas.openai import call_id
from localserve.schemas.responses import ResponseRequest, ToolSet, new_id, reasoning_token

# ------------------------------------------------------------------ the response


class OutputText(Response):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)


class ReasoningText(Response):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


Status = Literal["in_progress", "completed", "incomplete"]


class ReasoningItem(Response):
    id: str
    type: Literal["reasoning"] = "reasoning"
    status: Status
    summary: list[dict[str, Any]] = Field(default_factory=list)  # none made here
    content: list[ReasoningText]
    encrypted_content: str | None = None  # with include: ["reasoning.encrypted_content"]


class MessageItem(Response):
    id: str
    type: Literal["message"] = "message"
    status: Status
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(Response):
    id: str
    type: Literal["function_call"] = "function_call"
    status: Status
    call_id: str
    name: str
    arguments: str  # JSON text
    namespace: str | None = None  # the namespace the function came in


OutputItem = Annotated[ReasoningItem | MessageItem | FunctionCallItem, Field(discriminator="type")]


class InputTokens(Response):
    cached_tokens: int  # read from the prefix cache, not computed again


class OutputTokens(Response):
    # Steps that gave reasoning text: its tokens, but for a tag the parser held back
    # and let out with the next token.
    reasoning_tokens: int


class ResponseUsage(Response):
    input_tokens: int
    input_tokens_details: InputTokens
    output_tokens: int
    output_tokens_details: OutputTokens
    total_tokens: int


class IncompleteDetails(Response):
    reason: Literal["max_output_tokens"]


class ResponseError(Response):
    code: str
    message: str


class ReasoningEcho(Response):
    effort: str | None
    summary: str | None


class ResponseObject(Response):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: ReasoningEcho
    store: bool
    temperature: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float | None
    truncation: str
    usage: ResponseUsage | None
    user: str | None
    metadata: dict[str, str]


class ResponseDeleted(Response):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(Response):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


# ------------------------------------------------------------------ stream events


class StreamEvent(Response):
    """A server-sent event of a Responses stream; ``type`` is also the SSE event name."""

    type: str
    sequence_number: int


class LifecycleEvent(StreamEvent):
    """response.created, .in_progress, .completed, .incomplete, .failed"""

    response: ResponseObject


class ItemEvent(StreamEvent):
    """response.output_item.added, .done"""

    output_index: int
    item: OutputItem


class PartEvent(StreamEvent):
    """response.content_part.added, .done"""

    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class TextDeltaEvent(StreamEvent):
    """response.output_text.delta"""

    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class TextDoneEvent(StreamEvent):
    """response.output_text.done"""

    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ReasoningDeltaEvent(StreamEvent):
    """response.reasoning_text.delta"""

    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningDoneEvent(StreamEvent):
    """response.reasoning_text.done"""

    item_id: str
    output_index: int
    content_index: int
    text: str


class ArgumentsDeltaEvent(StreamEvent):
    """response.function_call_arguments.delta"""

    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(StreamEvent):
    """response.function_call_arguments.done"""

    item_id: str
    output_index: int
    name: str
    arguments: str


class StreamErrorEvent(StreamEvent):
    """error: what went wrong after the stream started (then response.failed)."""

    code: str | None
    message: str
    param: str | None


class ResponsesShape:
    """The response object, or its stream of events, for one request.

    Streamed: response.created and .in_progress first (.in_progress again after each
    chunk of a long prompt is read: a stream that shows it is alive); then per output
    item, in the order the model wrote them, output_item.added, its part, the deltas,
    their .done events and output_item.done; at the end response.completed, or
    response.incomplete when the output limit cut the answer. The final response
    (``final``) is what ``store`` keeps.
    """

    n = 1  # the Responses API has no ``n``

    def __init__(self, body: ResponseRequest, tools: ToolSet) -> None:
        self.body = body
        self.namespaces = tools.namespaces
        self.id = new_id("resp")
        self.created = int(time.time())
        self.final: ResponseObject | None = None
        self._sequence = 0
        self._output: list[ReasoningItem | MessageItem | FunctionCallItem] = []
        self._open: ReasoningItem | MessageItem | None = None
        self._open_text: list[str] = []
        self._done: DoneEvent | None = None
        self._reasoning_steps = 0

    # -- the whole response

    def whole(self, answers: list[Answer]) -> ResponseObject:
        (answer,) = answers
        items: list[ReasoningItem | MessageItem | FunctionCallItem] = []
        if answer.reasoning:
            items.append(self._reasoning(new_id("rs"), answer.reasoning, "completed"))
        if answer.content:
            items.append(self._message(new_id("msg"), answer.content, "completed"))
        items += [self._call(call, "completed") for call in answer.calls]
        if not items:  # as a stream: still one (empty) message
            items.append(self._message(new_id("msg"), "", "completed"))
        if _status(answer.done) == "incomplete" and not isinstance(items[-1], FunctionCallItem):
            # What the limit cut, as a stream marks it (a call is only ever sent whole).
            items[-1] = items[-1].model_copy(update={"status": "incomplete"})
        self._reasoning_steps = len(answer.thinking)
        self.final = self._response(items, answer.done)
        return self.final

    # -- the stream

    def head(self) -> list[StreamEvent]:
        snapshot = self._response([], None)
        return [
            self._event(LifecycleEvent, type="response.created", response=snapshot),
            self._event(LifecycleEvent, type="response.in_progress", response=snapshot),
        ]

    def chunks(self, event: Event) -> list[StreamEvent]:
        if isinstance(event, ProgressEvent):
            if not event.processed:  # the slot was taken: nothing read yet
                return []
            snapshot = self._response([], None)
            return [self._event(LifecycleEvent, type="response.in_progress", response=snapshot)]
        if isinstance(event, ThinkingEvent):
            self._reasoning_steps += 1
            return self._delta(ReasoningItem, event.text)
        if isinstance(event, TextEvent):
            return self._delta(MessageItem, event.text) if event.text else []
        if isinstance(event, ToolCallEvent):
            return [*self._close("completed"), *self._call_events(event)]
        if isinstance(event, DoneEvent):
            self._done = event
            return self._close(_status(event))
        return []

    def tail(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if not self._output:  # no text, no reasoning, no call: still one (empty) message
            events += self._delta(MessageItem, "")
            events += self._close(_status(self._done))
        self.final = self._response(list(self._output), self._done)
        kind = "response.completed" if self.final.status == "completed" else "response.incomplete"
        events.append(self._event(LifecycleEvent, type=kind, response=self.final))
        return events

    def failed(self, message: str) -> list[StreamEvent]:
        """What ends a stream that failed after it started: an error event, then
        response.failed with what was made before."""
        failed = self._response(list(self._output), self._done).model_copy(
            update={
                "status": "failed",
                "error": ResponseError(code="server_error", message=message),
                "incomplete_details": None,
            }
        )
        return [
            self._event(
                StreamErrorEvent, type="error", code="server_error", message=message, param=None
            ),
            self._event(LifecycleEvent, type="response.failed", response=failed),
        ]

    # -- the pieces

    def _event(self, kind: type[StreamEvent], **fields: Any) -> StreamEvent:
        event = kind(sequence_number=self._sequence, **fields)
        self._sequence += 1
        return event

    def _delta(self, kind: type[ReasoningItem | MessageItem], text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if not isinstance(self._open, kind):
            events += self._close("completed")
            events += self._start(kind)
        self._open_text.append(text)
        where = self._where()
        if kind is ReasoningItem:
            events.append(
                self._event(
                    ReasoningDeltaEvent, type="response.reasoning_text.delta", delta=text, **where
                )
            )
        elif text:
            events.append(
                self._event(TextDeltaEvent, type="response.output_text.delta", delta=text, **where)
            )
        return events

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open.id, "output_index": len(self._output), "content_index": 0}

    def _start(self, kind: type[ReasoningItem | MessageItem]) -> list[StreamEvent]:
        item: ReasoningItem | MessageItem
        part: ReasoningText | OutputText
        if kind is ReasoningItem:
            item = ReasoningItem(id=new_id("rs"), status="in_progress", content=[])
            part = ReasoningText(text="")
        else:
            item = MessageItem(id=new_id("msg"), status="in_progress", content=[])
            part = OutputText(text="")
        self._open, self._open_text = item, []
        index = len(self._output)
        return [
            self._event(
                ItemEvent, type="response.output_item.added", output_index=index, item=item
            ),
            self._event(PartEvent, type="response.content_part.added", part=part, **self._where()),
        ]

    def _close(self, status: Status) -> list[StreamEvent]:
        """The .done events of the open reasoning or message item, if any."""
        item = self._open
        if item is None:
            return []
        text = "".join(self._open_text)
        where = self._where()
        events: list[StreamEvent] = []
        done: ReasoningItem | MessageItem
        if isinstance(item, ReasoningItem):
            done = self._reasoning(item.id, text, status)
            events.append(
                self._event(
                    ReasoningDoneEvent, type="response.reasoning_text.done", text=text, **where
                )
            )
            events.append(
                self._event(
                    PartEvent,
                    type="response.content_part.done",
                    part=ReasoningText(text=text),
                    **where,
                )
            )
        else:
            done = self._message(item.id, text, status)
            events.append(
                self._event(TextDoneEvent, type="response.output_text.done", text=text, **where)
            )
            events.append(
                self._event(
                    PartEvent,
                    type="response.content_part.done",
                    part=OutputText(text=text),
                    **where,
                )
            )
        events.append(
            self._event(
                ItemEvent,
                type="response.output_item.done",
                output_index=where["output_index"],
                item=done,
            )
        )
        self._output.append(done)
        self._open, self._open_text = None, []
        return events

    def _call_events(self, event: ToolCallEvent) -> list[StreamEvent]:
        done = self._call(event, "completed")
        added = done.model_copy(update={"status": "in_progress", "arguments": ""})
        index = len(self._output)
        self._output.append(done)
        place = {"item_id": done.id, "output_index": index}
        return [
            self._event(
                ItemEvent, type="response.output_item.added", output_index=index, item=added
            ),
            self._event(
                ArgumentsDeltaEvent,
                type="response.function_call_arguments.delta",
                delta=done.arguments,
                **place,
            ),
            self._event(
                ArgumentsDoneEvent,
                type="response.function_call_arguments.done",
                name=done.name,
                arguments=done.arguments,
                **place,
            ),
            self._event(ItemEvent, type="response.output_item.done", output_index=index, item=done),
        ]

    def _reasoning(self, item_id: str, text: str, status: Status) -> ReasoningItem:
        return ReasoningItem(
            id=item_id,
            status=status,
            content=[ReasoningText(text=text)],
            encrypted_content=reasoning_token(text) if self.body.encrypted_reasoning else None,
        )

    def _message(self, item_id: str, text: str, status: Status) -> MessageItem:
        return MessageItem(id=item_id, status=status, content=[OutputText(text=text)])

    def _call(self, call: ToolCallEvent, status: Status) -> FunctionCallItem:
        return FunctionCallItem(
            id=new_id("fc"),
            status=status,
            call_id=call_id(call),
            name=call.name,
            arguments=json.dumps(call.arguments),
            namespace=self.namespaces.get(call.name),
        )

    def _response(
        self,
        output: list[ReasoningItem | MessageItem | FunctionCallItem],
        done: DoneEvent | None,
    ) -> ResponseObject:
        body = self.body
        status: Literal["in_progress", "completed", "incomplete"] = (
            "in_progress" if done is None else _status(done)
        )
        usage = None
        if done is not None:
            usage = ResponseUsage(
                input_tokens=done.prompt_eval_count,
                input_tokens_details=InputTokens(cached_tokens=done.prompt_cached),
                output_tokens=done.eval_count,
                output_tokens_details=OutputTokens(
                    reasoning_tokens=min(self._reasoning_steps, done.eval_count)
                ),
                total_tokens=done.prompt_eval_count + done.eval_count,
            )
        return ResponseObject(
            id=self.id,
            created_at=self.created,
            status=status,
            error=None,
            incomplete_details=(
                IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
            ),
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            model=body.model,
            output=output,
            parallel_tool_calls=body.parallel_tool_calls,
            previous_response_id=body.previous_response_id,
            reasoning=ReasoningEcho(
                effort=body.reasoning.effort if body.reasoning else None,
                summary=body.reasoning.summary if body.reasoning else None,
            ),
            store=body.store,
            temperature=body.temperature,
            text=body.text_echo(),
            tool_choice=body.tool_choice if body.tool_choice is not None else "auto",
            tools=list(body.tools or []),
            top_p=body.top_p,
            truncation=body.truncation or "disabled",
            usage=usage,
            user=body.user,
            metadata=dict(body.metadata or {}),
        )


def _status(done: DoneEvent | None) -> Literal["completed", "incomplete"]:
    return "incomplete" if done is not None and done.done_reason == "length" else "completed"

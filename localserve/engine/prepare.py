"""From a GenerateJob to the engine's jobs: the prompt rendered and tokenized, the
grammar (a JSON format, or the tool-call grammar that enforces ``tool_choice``), the
answer parser (thinking, tool calls), and one job per answer of the request's ``n``,
each with its own seed, the later ones copying the first one's prompt cells.

Nothing here touches a llama.cpp context: the runner builds jobs of prompts with
images or sounds on a thread of its own (engine/runner.py).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from localserve.errors import InvalidOptionError
from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import GenerateJob

if TYPE_CHECKING:
    from localserve.engine.job import Job
    from localserve.engine.loading import Loaded
    from localserve.engine.prompt import Prompt

log = logging.getLogger("localserve.runner")

# The most of a prompt the debug log shows (its start and its end): a log to read, and
# the daemon reads the runner's log a line at a time, up to 1 MiB a line
# (scheduler/runner_client.py); a longer one would end its reading.
LOGGED_PROMPT_CHARS = 8000
# The context a prompt is counted in (``count``): none is this long, so nothing is dropped.
UNBOUNDED = 1 << 40


class JobBuilder:
    """Makes the engine jobs of requests to one loaded model."""

    def __init__(self, loaded: Loaded) -> None:
        self.builder = loaded.builder
        self.chat = loaded.chat
        self.preserved = loaded.preserved
        self.num_ctx = loaded.engine.num_ctx

    def build(self, request_id: str, request: GenerateJob) -> list[Job]:
        """The request's engine jobs (one per answer), its prompt rendered and tokenized."""
        from localserve.engine.grammar import grammar_for
        from localserve.engine.job import Job
        from localserve.engine.thinking_budget import ThinkingLimit

        chat = self.chat
        prompt, tools = self._prompt(request, self.num_ctx)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "prompt of %s (%d tokens): %r",
                request_id,
                len(prompt.tokens),
                self._readable(prompt),
            )
        grammar = grammar_for(request.format)
        triggers: tuple[str, ...] = ()
        thinking = chat.thinking
        opened = thinking is not None and prompt.tail.rstrip().endswith(thinking.open)
        # Thinking off: a template without a switch (or a model that thinks anyway)
        # gets its block closed at once.
        budget = 0 if request.think is False else request.options.think_budget
        if tools and chat.tools is not None:  # (a model without tools was refused above)
            from localserve.engine.tool_grammar import tool_grammar

            # The prompt opened a thinking block: the call comes after its end.
            after = thinking.close if thinking and opened and request.think is not False else ""
            enforced = tool_grammar(
                chat.tools,
                tools,
                choice=request.tool_choice,
                parallel=request.parallel_tool_calls,
                after=after,
            )
            # A format grammar (JSON mode) wins over the lazy one for "auto".
            if enforced is not None and (request.tool_choice != "auto" or grammar is None):
                grammar, triggers = enforced.gbnf, enforced.triggers
                if after and request.tool_choice != "auto":
                    room = thinking_room(self.num_ctx, len(prompt.tokens), request.options)
                    budget = room if budget < 0 else min(budget, room)
        parses = not request.raw and bool(tools or chat.thinks)
        limit = None
        # A grammar that constrains the answer from its first token leaves no thinking
        # to limit (and a forced close would break it); a lazy one waits, as the text.
        if parses and thinking is not None and budget >= 0 and (grammar is None or triggers):
            close = self.builder.model.tokenize(thinking.close, add_special=False)
            limit = ThinkingLimit(budget, thinking.open, thinking.close, tuple(close), opened)
        options = request.options
        if prompt.stops:
            options = replace(options, stop=(*options.stop, *prompt.stops))
        first: Job | None = None
        jobs: list[Job] = []
        for choice in range(max(1, request.n)):
            seeded = options
            if choice and options.seed >= 0:  # n answers, not n copies of one
                seeded = replace(options, seed=options.seed + choice)
            job = Job(
                f"{request_id}#{choice}" if choice else request_id,
                prompt.tokens,
                seeded,
                grammar,
                grammar_triggers=triggers,
                thinking=limit,
                dropped_messages=prompt.dropped_messages,
                want_context=request.want_context,
                parser_factory=self._parser_factory(request, tools, opened) if parses else None,
                preserved_tokens=self.preserved if parses else frozenset(),
                logprobs=request.top_logprobs if request.logprobs else -1,
                prompt_logprobs=request.prompt_logprobs,
                progress=request.progress,
                # The other answers copy the first one's prompt cells once it has read
                # the prompt: one prefill for all of them.
                parent=first,
                media=prompt.media,
            )
            jobs.append(job)
            first = first or job
        return jobs

    def count(self, request: GenerateJob) -> int:
        """How many tokens the request's prompt is, rendered as ``build`` renders it, but
        whole: a chat too long for the context is counted, not shortened (nor refused)."""
        prompt, _ = self._prompt(request, UNBOUNDED)
        return len(prompt.tokens)

    def render(self, request: GenerateJob) -> str:
        """The request's prompt as text, rendered by the very code that ``build`` and
        ``count`` use (so /apply-template cannot drift from a chat), whole."""
        prompt, _ = self._prompt(request, UNBOUNDED)
        return prompt.text

    def _prompt(
        self, request: GenerateJob, num_ctx: int
    ) -> tuple[Prompt, list[dict[str, Any]] | None]:
        """The request's prompt for a context of ``num_ctx`` tokens, and the tools it shows
        the model (None when it shows none)."""
        chat = self.chat
        wants_tools = bool(request.tools) and request.tool_choice != "none"
        if wants_tools and chat.tools is None:
            raise InvalidOptionError("the model does not support tools")
        if request.think and not chat.thinks:
            raise InvalidOptionError("the model does not support thinking")
        kwargs = _template_kwargs(request)
        tools = request.tools if wants_tools else None
        if request.messages is not None:
            prompt = self.builder.chat(
                request.messages,
                num_ctx=num_ctx,
                tools=tools,
                template_kwargs=kwargs,
                images={
                    i: _media_bytes(m.get("images"))
                    for i, m in enumerate(request.messages)
                    if isinstance(m, dict) and m.get("images")
                },
            )
        elif request.suffix is not None:
            prompt = self.builder.infill(request.prompt or "", request.suffix, num_ctx=num_ctx)
        else:
            prompt = self.builder.completion(
                request.prompt or "",
                system=request.system,
                raw=request.raw,
                num_ctx=num_ctx,
                context=request.context,
                template_kwargs=kwargs,
                images=_media_bytes(request.images),
            )
        return prompt, tools

    def _readable(self, prompt: Prompt) -> str:
        """The prompt as the model reads it, special tokens written out, each image or
        sound as ``[image]`` or ``[audio]`` (for the debug log)."""
        model = self.builder.model
        parts: list[bytes] = []
        for position, token in enumerate(prompt.tokens):
            medium = prompt.media.get(position)
            if medium is not None:
                parts.append(f"[{medium.kind}]".encode())
            if token >= 0:
                parts.append(model.piece(token, special=True))
        text = b"".join(parts).decode("utf-8", "replace")
        if len(text) > LOGGED_PROMPT_CHARS:
            half = LOGGED_PROMPT_CHARS // 2
            text = f"{text[:half]}[... {len(text) - 2 * half} characters ...]{text[-half:]}"
        return text

    def _parser_factory(
        self, request: GenerateJob, tools: list[dict[str, Any]] | None, opened: bool
    ) -> Callable[[str], Any]:
        from localserve.runtime.chat.parse import AnswerParser, HarmonyParser, MuseParser

        chat = self.chat
        names = [str((t.get("function") or {}).get("name", "")) for t in tools or []]
        types = parameter_types(tools or [])
        show = request.think is not False
        if chat.harmony:
            return lambda job_id: HarmonyParser(job_id, tool_names=names, show_thinking=show)
        if chat.muse:
            return lambda job_id: MuseParser(
                job_id, tool_names=names, show_thinking=show, types=types
            )
        return lambda job_id: AnswerParser(
            job_id,
            tools=chat.tools if tools else None,
            tool_names=names,
            thinking=chat.thinking,
            in_thinking=opened,
            show_thinking=show,
            types=types,
            framing=(chat.answer_open, chat.answer_end),
        )


def thinking_room(num_ctx: int, prompt_tokens: int, options: SamplingOptions) -> int:
    """How long a model may think before an enforced call must start: the room its
    answer has (``num_predict``, else the rest of the context), less what the call
    needs (a quarter, 64 to 1024 tokens). A model that has not closed its thinking
    block by then gets it closed, and the call follows: a weak model can think in
    circles until the limit and return nothing otherwise. This is its thinking budget
    (engine/thinking_budget.py), or the request's own where that is smaller."""
    room = num_ctx - prompt_tokens
    if options.num_predict > 0:
        room = min(room, options.num_predict)
    return max(1, room - min(1024, max(64, room // 4)))


def parameter_types(tools: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each tool's parameters' JSON types (for formats that write values as raw text)."""
    found: dict[str, dict[str, str]] = {}
    for tool in tools:
        function = tool.get("function") or {}
        properties = (function.get("parameters") or {}).get("properties") or {}
        if isinstance(properties, dict):
            found[str(function.get("name", ""))] = {
                str(key): str(value.get("type"))
                for key, value in properties.items()
                if isinstance(value, dict) and isinstance(value.get("type"), str)
            }
    return found


def request_of(job_id: str) -> tuple[str, int]:
    """A job id's request id and answer index (``r5#2``: the third answer of ``r5``)."""
    request_id, _, choice = job_id.partition("#")
    return request_id, int(choice or 0)


def _media_bytes(items: object) -> list[bytes]:
    """A request's base64 media (the route checked them) as bytes."""
    if not items:
        return []
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidOptionError("images must be a list of base64 strings")
    try:
        return [base64.b64decode(item, validate=True) for item in items]
    except ValueError:
        raise InvalidOptionError("an image is not valid base64") from None


def _template_kwargs(request: GenerateJob) -> dict[str, Any]:
    """Variables for the chat template: the request's own (``chat_template_kwargs``),
    and the thinking switch under the names templates read."""
    kwargs = dict(request.template_kwargs)
    if request.think is not None:
        kwargs.setdefault("enable_thinking", bool(request.think))
        kwargs.setdefault("thinking", bool(request.think))
    if isinstance(request.think, str):
        kwargs.setdefault("reasoning_effort", request.think)
    return kwargs

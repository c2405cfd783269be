"""From a request to prompt tokens: chat template, BOS handling, context overflow.

- Chat (``messages``): rendered with the model's own template (runtime/templates.py,
  sandboxed), or the documented fallback format when the GGUF has none. If the
  result does not fit the context, the oldest turns are dropped, keeping every
  system message and the latest message, until it fits with room to answer; the
  done event then says how many messages were dropped.
- Completion (``prompt``): wrapped as one user turn (plus ``system``) with the
  model's template, like Ollama's /api/generate; verbatim when ``raw`` or when the
  model has no template (a base model continues text). A raw prompt that does not
  fit is an error naming both lengths: there is nothing we may drop.

BOS: many templates write ``bos_token`` themselves, and llama.cpp's tokenizer adds
one too when the vocabulary asks for it. We strip a leading BOS from the rendered
text and let the tokenizer add exactly one (or add it ourselves when the template
wanted one and the vocabulary does not), so no prompt starts with two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from localserve.engine.llama import Model
from localserve.engine.media import MediaChunk, MediaPrompt, Projector
from localserve.errors import InvalidOptionError, PromptTooLongError
from localserve.runtime.templates import (
    FALLBACK_STOPS,
    ChatTemplate,
    strip_leading_bos,
    validate_messages,
)


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    dropped_messages: int = 0
    # The end of the rendered text: whether the template opened a thinking block.
    tail: str = ""
    # Stop strings the format adds: the fallback's next turn for a template-less chat.
    stops: tuple[str, ...] = ()
    # Images and sounds, by where their placeholders start in ``tokens`` (media.py).
    media: dict[int, MediaChunk] = field(default_factory=dict)
    # The text that was tokenized, as the template wrote it (a leading BOS included):
    # what /apply-template shows (a chat's; a completion's when a template wrapped it).
    text: str = ""


TAIL_CHARS = 64


def reserve_for_answer(num_ctx: int) -> int:
    """Room kept free for the answer when old turns are dropped."""
    return max(1, min(1024, num_ctx // 4))


class PromptBuilder:
    def __init__(
        self, model: Model, template_source: str | None, projector: Projector | None = None
    ) -> None:
        self.model = model
        self.projector = projector
        self.bos_text = model.token_text(model.bos) if model.add_bos or template_source else ""
        self.template = ChatTemplate(
            template_source,
            bos_token=self.bos_text,
            eos_token=model.token_text(model.eos),
        )

    @property
    def has_template(self) -> bool:
        return not self.template.is_fallback

    def tokens_of(self, rendered: str, media: Sequence[bytes] = ()) -> MediaPrompt:
        text, had_bos = (
            strip_leading_bos(rendered, self.bos_text) if self.bos_text else (rendered, False)
        )
        if media:
            assert self.projector is not None  # media_marker() refused it before
            found = self.projector.tokenize(text, media, add_special=self.model.add_bos)
        else:
            tokens = self.model.tokenize(text, add_special=self.model.add_bos, parse_special=True)
            found = MediaPrompt(tokens, {})
        if had_bos and not self.model.add_bos and self.model.bos >= 0:
            found = MediaPrompt(
                [self.model.bos, *found.tokens], {k + 1: v for k, v in found.media.items()}
            )
        return found

    def media_marker(self, count: int) -> str:
        """Where ``count`` media go in a message's text (before it, as Ollama puts them)."""
        if not count:
            return ""
        if self.projector is None:
            raise InvalidOptionError("the model does not support images")
        return self.projector.marker * count

    def completion(
        self,
        prompt: str,
        *,
        system: str | None,
        raw: bool,
        num_ctx: int,
        context: object = None,
        template_kwargs: Mapping[str, Any] | None = None,
        images: Sequence[bytes] = (),
    ) -> Prompt:
        tail = ""
        prompt = text = self.media_marker(len(images)) + prompt
        found = MediaPrompt([], {})
        if context:
            # Ollama's ``context``: the token ids a previous /api/generate returned; the
            # new prompt continues them (it already holds the BOS and the template).
            if not isinstance(context, list) or not all(
                isinstance(t, int) and 0 <= t < self.model.n_vocab for t in context
            ):
                raise InvalidOptionError(
                    "context must be a list of token ids from a previous response"
                )
            if images:
                assert self.projector is not None
                more = self.projector.tokenize(prompt, images, add_special=False)
                found = MediaPrompt(
                    list(context) + more.tokens,
                    {k + len(context): v for k, v in more.media.items()},
                )
            else:
                found = MediaPrompt(
                    list(context)
                    + self.model.tokenize(prompt, add_special=False, parse_special=True),
                    {},
                )
        elif raw or not self.has_template:
            # No template, but still the BOS the vocabulary asks for (as llama.cpp's
            # server does): a model fed no BOS answers noticeably worse.
            text = f"{system}\n\n{prompt}" if system and not raw else prompt
            found = self.tokens_of(text, images)
        else:
            messages: list[dict[str, Any]] = []
            if system:
                messages.append({"role": "system", "content": system})
            messages.append({"role": "user", "content": prompt})
            rendered = self.template.render(
                messages, add_generation_prompt=True, **dict(template_kwargs or {})
            )
            tail = rendered[-TAIL_CHARS:]
            found = self.tokens_of(rendered, images)
            text = rendered
        if len(found.tokens) >= num_ctx:
            raise PromptTooLongError(
                f"the prompt is {len(found.tokens)} tokens"
                + (" with its images" if images else "")
                + f", but the context holds {num_ctx}",
                hint="shorten the prompt, send fewer or smaller images, or raise num_ctx",
                tokens=len(found.tokens),
                limit=num_ctx,
            )
        return Prompt(found.tokens, tail=tail, media=found.media, text=text)

    def infill(self, prefix: str, suffix: str, *, num_ctx: int) -> Prompt:
        """Fill-in-the-middle, prefix-suffix-middle order as llama.cpp's /infill lays it
        out: [BOS] <PRE> prefix <SUF> suffix <MID>; the model writes the middle. The
        code is tokenized as text, so markers written in it stay text."""
        fim = self.model.fim_tokens()
        if fim is None:
            raise InvalidOptionError("the model does not support insert")
        pre, suf, mid = fim
        tokens = [self.model.bos] if self.model.add_bos and self.model.bos >= 0 else []
        tokens.append(pre)
        tokens += self.model.tokenize(prefix, add_special=False, parse_special=False)
        tokens.append(suf)
        tokens += self.model.tokenize(suffix, add_special=False, parse_special=False)
        tokens.append(mid)
        if len(tokens) >= num_ctx:
            raise PromptTooLongError(
                f"the prefix and suffix are {len(tokens)} tokens, but the context holds {num_ctx}",
                hint="send less code around the insertion point or raise num_ctx",
                tokens=len(tokens),
                limit=num_ctx,
            )
        return Prompt(tokens)

    def chat(
        self,
        messages: object,
        *,
        num_ctx: int,
        tools: Sequence[Mapping[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        images: Mapping[int, Sequence[bytes]] | None = None,
    ) -> Prompt:
        """``images``: the media of each message, by its index in ``messages``."""
        turns = validate_messages(messages)
        # Each message's media, found again by identity in the shortened versions below
        # (they share the message dicts); their markers go before its text.
        media_of: dict[int, Sequence[bytes]] = {}
        for index, media in (images or {}).items():
            if media:
                turn = turns[index]
                turn["content"] = self.media_marker(len(media)) + turn["content"]
                media_of[id(turn)] = media
        kwargs = dict(template_kwargs or {})
        renderings: dict[int, str] = {}
        stops = () if self.has_template else FALLBACK_STOPS
        budget = num_ctx - reserve_for_answer(num_ctx)
        # Shorter and shorter versions of the chat (each drops the oldest droppable
        # turns); more dropped never means longer, so a binary search finds the
        # fewest drops that fit with O(log n) renders, not one render per message.
        versions = [turns]
        while (shorter := _drop_oldest(versions[-1])) is not None:
            versions.append(shorter)

        def tokens_at(index: int) -> MediaPrompt:
            rendered = self.template.render(
                versions[index], add_generation_prompt=True, tools=tools, **kwargs
            )
            renderings[index] = rendered
            media = [data for turn in versions[index] for data in media_of.get(id(turn), ())]
            return self.tokens_of(rendered, media)

        def prompt(found: MediaPrompt, index: int) -> Prompt:
            dropped = len(turns) - len(versions[index])
            rendered = renderings[index]
            return Prompt(
                found.tokens, dropped, rendered[-TAIL_CHARS:], stops, found.media, rendered
            )

        first = tokens_at(0)
        if len(first.tokens) <= budget:
            return prompt(first, 0)
        low, high = 1, len(versions) - 1  # the answer lies in [low, high]
        best = tokens_at(high)
        if len(best.tokens) > budget:
            if len(best.tokens) < num_ctx:  # tight, but it fits
                return prompt(best, high)
            raise PromptTooLongError(
                f"the latest message with the system prompt is {len(best.tokens)} tokens"
                + (" with its images" if media_of else "")
                + f", but the context holds {num_ctx}",
                hint="shorten the message, send fewer or smaller images, or raise num_ctx",
                tokens=len(best.tokens),
                limit=num_ctx,
            )
        while low < high:  # invariant: ``best`` is the rendering of version ``high``
            middle = (low + high) // 2
            candidate = tokens_at(middle)
            if len(candidate.tokens) <= budget:
                high, best = middle, candidate
            else:
                low = middle + 1
        return prompt(best, high)


def _drop_oldest(turns: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The chat without its oldest message that is neither a system message nor the
    latest one (None when nothing can go). Templates often insist that the talk after
    the system prompt starts with a user turn, so answers that lost their question go
    too."""
    victim = next((i for i, m in enumerate(turns[:-1]) if m["role"] != "system"), None)
    if victim is None:
        return None
    shorter = turns[:victim] + turns[victim + 1 :]
    while True:
        first = next((i for i, m in enumerate(shorter[:-1]) if m["role"] != "system"), None)
        if first is None or shorter[first]["role"] == "user":
            return shorter
        shorter = shorter[:first] + shorter[first + 1 :]

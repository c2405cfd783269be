"""Chat templates: the Jinja in a GGUF's ``tokenizer.chat_template``, rendered safely.

A chat template comes from whoever uploaded the model, so it is treated as hostile:
it is compiled and rendered in the sandbox of runtime/template_sandbox.py, with time,
output, size and memory limits. It is rendered the way Hugging Face transformers
renders it, so real templates behave the same here, with the variables ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``, ``tools`` (undefined when
absent, as llama.cpp leaves it), ``documents`` (None unless given), plus any extra
keyword given to :meth:`ChatTemplate.render` (``enable_thinking=...``), in the shape
the template reads (runtime/template_shapes.py: today's date, ``functions``, call
ids and types where the client sent none, call arguments as text where the template
wants them so). Every failure is raised as
:class:`~localserve.errors.TemplateError` with a one-line message.

Fallback format (``FALLBACK_TEMPLATE``), for models without a chat template (Gemma 3
270M base, most base models). The blocks below are joined by one blank line
(``"\\n\\n"``):

- a system message is its text as is;
- a user message is ``User: <text>``, an assistant message ``Assistant: <text>``, a
  tool result ``Tool: <text>``;
- with ``add_generation_prompt`` (the default) a last block ``Assistant:`` follows,
  with no trailing space or newline;
- the answer ends where the model starts another ``User:`` turn (``FALLBACK_STOPS``):
  a base model continues the pattern with both sides of the talk otherwise.

For example, a system prompt and two user turns with one answer render as::

    You are terse.

    User: Hi

    Assistant: Hello!

    User: How are you?

    Assistant:

The fallback writes no BOS text: the tokenizer adds BOS when the model asks for it.

BOS rule: many templates begin with ``{{ bos_token }}``, and llama.cpp's tokenizer
also adds a BOS token when the vocabulary asks for one. :func:`strip_leading_bos`
removes one leading BOS string from the rendered text and says whether it was there;
the runner then tokenizes the rest so that the prompt starts with exactly one BOS
token: the tokenizer's own when the vocabulary adds one, else an explicit BOS when the
template wrote one, else none.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from localserve.errors import InvalidOptionError
from localserve.runtime.template_limits import DEFAULT_LIMITS, TemplateLimits
from localserve.runtime.template_sandbox import SandboxedTemplate
from localserve.runtime.template_shapes import (
    arguments_as_text,
    today,
    tool_variables,
    wants_string_arguments,
    with_call_ids,
)

__all__ = [
    "DEFAULT_LIMITS",
    "FALLBACK_STOPS",
    "FALLBACK_TEMPLATE",
    "ROLES",
    "ChatTemplate",
    "TemplateLimits",
    "strip_leading_bos",
    "validate_messages",
]

FALLBACK_TEMPLATE = (
    "{%- for message in messages -%}"
    '{{- "\\n\\n" if not loop.first else "" -}}'
    '{%- if message.role == "system" -%}'
    "{{- message.content -}}"
    '{%- elif message.role == "user" -%}'
    '{{- "User: " ~ message.content -}}'
    '{%- elif message.role == "assistant" -%}'
    '{{- "Assistant: " ~ message.content -}}'
    "{%- else -%}"
    '{{- "Tool: " ~ message.content -}}'
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    '{{- "\\n\\n" if messages else "" -}}'
    "Assistant:"
    "{%- endif -%}"
)

# Where a base model's answer in the fallback format ends: at the next turn it would
# otherwise invent (the runner adds it to a chat's stop strings).
FALLBACK_STOPS = ("\nUser:",)

ROLES = ("system", "user", "assistant", "tool")

# How much of a bad message's value an error shows.
_MESSAGE_CHARS = 300


class ChatTemplate:
    """A compiled chat template (or the fallback format) with its limits."""

    def __init__(
        self,
        source: str | None,
        *,
        bos_token: str = "",
        eos_token: str = "",
        limits: TemplateLimits = DEFAULT_LIMITS,
    ) -> None:
        self._fallback = source is None or not source.strip()
        self.source: str = FALLBACK_TEMPLATE if source is None or self._fallback else source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.limits = limits
        self._template = SandboxedTemplate(self.source, limits)
        self._lock = threading.Lock()
        self._string_arguments: bool | None = None  # found at the first call rendered

    @property
    def is_fallback(self) -> bool:
        """True when the model has no template and ``FALLBACK_TEMPLATE`` is used."""
        return self._fallback

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """Render ``messages`` (see :func:`validate_messages`) to prompt text.

        ``extra`` keywords become template variables too (``enable_thinking=False``);
        they may replace ``bos_token``, ``eos_token`` and ``documents`` but not
        ``messages``, ``add_generation_prompt`` or ``tools``.
        """
        variables: dict[str, Any] = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "documents": None,
            **today(),
            **extra,
            "add_generation_prompt": add_generation_prompt,
            **tool_variables(self._template.reads, tools),
        }
        turns = with_call_ids([dict(message) for message in messages])
        with self._lock:
            if any(turn.get("tool_calls") for turn in turns) and self._wants_string_arguments(
                variables
            ):
                turns = arguments_as_text(turns)
            return self._template.render({**variables, "messages": turns})

    def _wants_string_arguments(self, variables: dict[str, Any]) -> bool:
        if self._string_arguments is None:
            self._string_arguments = wants_string_arguments(self._template.render, variables)
        return self._string_arguments


def strip_leading_bos(text: str, bos_token: str) -> tuple[str, bool]:
    """``text`` without one leading ``bos_token`` string, and whether it had one.

    Only one is removed: a template that writes two BOS tokens keeps the second.
    An empty ``bos_token`` never matches.
    """
    if bos_token and text.startswith(bos_token):
        return text[len(bos_token) :], True
    return text, False


def validate_messages(messages: object) -> list[dict[str, Any]]:
    """Check chat messages from the wire and return normalised copies.

    Each message is an object with a ``role`` (system, user, assistant or tool)
    and a string ``content``. Content may also be a list of OpenAI-style parts:
    text parts (``{"type": "text", "text": ...}``) are joined with newlines; image
    parts left here are refused (the OpenAI schema turns ``image_url`` and
    ``input_audio`` parts into the message's ``images`` before). Content may be missing or null only on an assistant
    message with ``tool_calls`` (it becomes ""). Other keys (``tool_calls``,
    ``name``, ``images``, ``tool_call_id``...) are kept as they are.

    Raises InvalidOptionError naming the first bad message.
    """
    if not isinstance(messages, list | tuple):
        raise InvalidOptionError(
            f"messages must be a list of message objects, not {_json_type(messages)}"
        )
    result: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise InvalidOptionError(f"{where} must be an object, not {_json_type(message)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            shown = repr(role) if isinstance(role, str) else _json_type(role)
            raise InvalidOptionError(
                f"{where}.role must be one of {', '.join(ROLES)}, not {shown}"
                if "role" in message
                else f"{where} has no role (one of {', '.join(ROLES)})"
            )
        copy = dict(message)
        copy["content"] = _content_text(message, role, where)
        result.append(copy)
    return result


# -- message checks ---------------------------------------------------------------

_IMAGE_PART_TYPES = frozenset({"image", "image_url", "input_image", "image_file"})


def _content_text(message: Mapping[str, Any], role: str, where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None:
        if role == "assistant" and message.get("tool_calls"):
            return ""
        raise InvalidOptionError(f"{where}.content is required (a string)")
    if isinstance(content, list):
        texts: list[str] = []
        for number, part in enumerate(content):
            part_where = f"{where}.content[{number}]"
            if not isinstance(part, Mapping):
                raise InvalidOptionError(f"{part_where} must be an object, not {_json_type(part)}")
            kind = part.get("type")
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise InvalidOptionError(f"{part_where}.text must be a string")
                texts.append(text)
            elif kind in _IMAGE_PART_TYPES:
                raise InvalidOptionError(
                    f"{part_where} is an image part of type {kind!r}; send images as "
                    "image_url parts with data: URLs, or as Ollama's images"
                )
            else:
                shown = repr(kind) if isinstance(kind, str) else _json_type(kind)
                raise InvalidOptionError(
                    f"{part_where} has type {shown}; only text parts are supported"
                )
        return "\n".join(texts)
    raise InvalidOptionError(
        f"{where}.content must be a string or a list of text parts, not {_json_type(content)}"
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__

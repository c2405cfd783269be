"""The Jinja sandbox that chat templates run in (runtime/templates.py renders chats with it).

A chat template comes from whoever uploaded the model, so it is treated as hostile.
It is rendered the way Hugging Face transformers renders it, so real templates
behave the same here:

- jinja2's ``ImmutableSandboxedEnvironment`` with ``trim_blocks``, ``lstrip_blocks``
  and the ``loopcontrols`` extension (``{% break %}``, ``{% continue %}``); the
  transformers-only ``{% generation %}...{% endgeneration %}`` block renders its body;
- variables ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``,
  ``tools`` (undefined when absent, as llama.cpp leaves it), ``documents`` (None
  unless given), plus any extra keyword given to :meth:`ChatTemplate.render`
  (``enable_thinking=...``), in the shape the template reads (template_shapes.py);
- globals ``raise_exception(message)`` and ``strftime_now(format)``; the ``tojson``
  filter is ``json.dumps`` with ``ensure_ascii=False`` and its ``indent``,
  ``separators`` and ``sort_keys`` arguments (no HTML escaping); ``+`` of a text and
  an undefined or None value is the text, as in llama.cpp's Jinja.

and with hard limits, so that a template can neither escape nor wedge the runner:

- no loader: ``{% include %}``, ``{% import %}``, ``{% from %}`` and ``{% extends %}``
  are refused when the template is compiled; so is calling a block through
  ``self.<name>()``. ``lipsum`` and the ``pprint`` and ``urlize`` filters are removed
  (no chat template uses them);
- attributes the sandbox calls unsafe (``__class__``, ``__globals__``, ``mro``,
  ``gi_frame``, anything starting with ``_``...) fail at once, also through
  ``|attr``, ``str.format`` and ``format_map`` fields (Jinja itself would return an
  undefined value that prints as nothing); so do the methods that change the data
  the template is given (``messages.append``...). Lists the template writes itself
  (``namespace(ids=[])``) may ``append``, ``pop`` and ``extend``, as Kimi K2's
  templates do (llama.cpp's Jinja engine allows it too), charged to the budget
  below;
- time: rendering stops after ``TemplateLimits.seconds`` (default 1 s) of the
  rendering thread's CPU time, not of the wall clock: what is limited is the work a
  template makes, and a busy machine (other processes, other threads holding the
  GIL) must not make a good template fail. A ``sys.settrace`` tracer counts calls
  (and lines in template code) and checks the thread's clock every few dozen events; the tracer that was set before (a coverage tool,
  a debugger) is put back afterwards. Rendering happens in the calling thread.
  Compiling gets the same treatment (at least 2 s), as Jinja runs filters on
  constants while it compiles;
- output: at most ``TemplateLimits.max_output_chars`` characters (default 1 MiB);
- size: no single operation may build more than that many characters or items
  (``*``, ``**``, ``+``, ``%``, ``~``, ``str.format``, ``join``, ``replace``,
  ``center``..., ``|indent``, ``|wordwrap``, ``|tojson``...), checked *before* it
  runs; printing or formatting a structure is measured first (so a list that holds
  the same big string 100,000 times cannot be printed); integers stay under 4096
  bits;
- memory: everything the template builds along the way -- strings, the output of
  macros and ``{% set %}`` blocks, slices, lists and dicts from calls and filters (32
  characters an item, 8 for the references a slice or ``+`` copies) -- counts
  against a budget of 16 times the output limit, so memory cannot pile up within
  the time limit either. Real templates use about 4 times their output;
- recursion: a macro that calls itself forever hits Python's recursion limit.

Every failure -- a syntax error (raised by the constructor), ``raise_exception``
("Conversation roles must alternate..."), an undefined value used wrongly, a sandbox
violation, a limit -- is raised as :class:`~localserve.errors.TemplateError` with a
one-line message, never as another exception type.

This module compiles and renders (``SandboxedTemplate``), keeps the time limit and
words the errors; the environment with its hooks is template_environment.py, the
limits and the measurements behind the size checks are template_limits.py.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable, Generator
from typing import Any, cast

from jinja2 import nodes
from jinja2.exceptions import (
    SecurityError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.exceptions import TemplateError as JinjaTemplateError

from localserve.errors import TemplateError
from localserve.runtime.template_environment import Raised, SandboxEnvironment
from localserve.runtime.template_limits import (
    DEFAULT_LIMITS,
    MESSAGE_CHARS,
    Refusal,
    TemplateLimits,
)

__all__ = ["SandboxedTemplate"]

# Compiling may take at least this much CPU time (or the render limit, if longer).
_COMPILE_SECONDS = 2.0
# A template bigger than this is not a chat template.
_MAX_SOURCE_CHARS = 256 * 1024
# The tracer looks at the thread's CPU clock once per this many trace events.
_CHECK_EVERY = 64
# How Jinja names the code it compiles from a string.
_TEMPLATE_FILENAME = "<template>"


class SandboxedTemplate:
    """A template compiled in the sandbox; ``render`` runs it under the limits.

    Not thread-safe: the environment counts one render's work at a time (ChatTemplate
    holds a lock around it)."""

    def __init__(self, source: str, limits: TemplateLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        if len(source) > _MAX_SOURCE_CHARS:
            raise TemplateError(
                f"chat template is {len(source)} characters long; the limit is {_MAX_SOURCE_CHARS}"
            )
        self._env = SandboxEnvironment(limits)
        error: BaseException | None = None
        # Compiling runs Python too: Jinja folds constant expressions, filter calls
        # included ({{ 'a' | center(1000000) }}), into the code it generates. That gets
        # a time limit, and a budget of one output's worth: past it, Jinja leaves the
        # expressions to be computed (and limited) at render time.
        previous = sys.gettrace()
        self._env.begin_render(budget=limits.max_output_chars)
        sys.settrace(_make_tracer(time.thread_time() + max(limits.seconds, _COMPILE_SECONDS)))
        try:
            tree = self._env.parse(source)
            _refuse_loading(tree)
            self._template = self._env.from_string(tree)
        except (Exception, _Timeout) as exc:
            error = exc  # no Python calls until the tracer is gone: it could raise
        finally:
            sys.settrace(previous)
            self._env.end_render()
        if error is not None:
            failure = _describe(error, limits, compiling=True)
            del error
            raise TemplateError(_one_line(failure))
        # The names the template reads (its own variables too), for template_shapes.py;
        # from the syntax tree, not jinja2.meta, which would compile it again unlimited.
        self.reads = frozenset(
            node.name for node in tree.find_all(nodes.Name) if node.ctx == "load"
        )

    def render(self, variables: dict[str, Any]) -> str:
        limits = self.limits
        env = self._env
        cap = limits.max_output_chars
        chunks: list[str] = []
        produced = 0
        error: BaseException | None = None
        tracer = _make_tracer(time.thread_time() + limits.seconds)
        previous = sys.gettrace()
        env.begin_render()
        stream = cast(Generator[str, None, None], self._template.generate(variables))
        sys.settrace(tracer)
        try:
            try:
                for chunk in stream:
                    produced += len(chunk)
                    if produced > cap:
                        raise Refusal(f"the output passed {cap} characters")
                    chunks.append(chunk)
            finally:
                stream.close()
        except (Exception, _Timeout) as exc:
            error = exc  # no Python calls until the tracer is gone: it could raise
        finally:
            sys.settrace(previous)
            env.end_render()
        if error is not None:
            failure = _describe(error, limits)
            # Raised without a cause, so the error holds no frames (nor their values).
            del error
            raise TemplateError(_one_line(failure))
        return "".join(chunks)


# -- errors -------------------------------------------------------------------------


class _Timeout(BaseException):
    """The time limit passed. A BaseException, so no ``except Exception`` on the way
    out (in Jinja or in Python code the template calls) can swallow it."""


def _describe(exc: BaseException, limits: TemplateLimits, *, compiling: bool = False) -> str:
    if isinstance(exc, _Timeout):
        if compiling:
            seconds = max(limits.seconds, _COMPILE_SECONDS)
            return f"chat template took longer than {seconds:g} s to compile"
        return f"chat template took longer than {limits.seconds:g} s to render"
    if isinstance(exc, Raised):
        return f"chat template rejected the conversation: {exc}"
    if isinstance(exc, Refusal):
        return f"chat template exceeded a limit: {exc}"
    if isinstance(exc, SecurityError):
        return f"chat template broke the sandbox: {exc}"
    if isinstance(exc, RecursionError):
        return "chat template recursed too deeply"
    if isinstance(exc, MemoryError):
        return "chat template ran out of memory"
    if isinstance(exc, TemplateError):
        return exc.message
    if isinstance(exc, TemplateSyntaxError):
        what = "a syntax error" if compiling else "an error"
        return f"chat template has {what} on line {exc.lineno}: {exc.message}"
    if isinstance(exc, UndefinedError):
        return f"chat template used an undefined value: {exc}"
    if isinstance(exc, JinjaTemplateError):
        return f"chat template failed: {exc}"
    return f"chat template failed: {type(exc).__name__}: {exc}"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def _refuse_loading(tree: nodes.Template) -> None:
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        tag = {
            nodes.Extends: "extends",
            nodes.Include: "include",
            nodes.Import: "import",
            nodes.FromImport: "from ... import",
        }[type(node)]
        raise TemplateError(
            f"chat template uses {{% {tag} %}} on line {node.lineno}: "
            "templates cannot load other templates or files"
        )


# -- the time limit -----------------------------------------------------------------

_TraceFunction = Callable[[types.FrameType, str, Any], Any]


def _make_tracer(deadline: float) -> _TraceFunction:
    """A ``sys.settrace`` function that raises _Timeout once the thread's CPU clock
    (``time.thread_time``) passes ``deadline``.

    Every call event counts (Jinja's runtime, filters, our hooks); only frames of
    compiled template code get the local tracer, which counts their lines too, so an
    empty loop nested in another is caught without slowing every Python line.
    """
    countdown = _CHECK_EVERY
    clock = time.thread_time

    def on_line(frame: types.FrameType, event: str, arg: Any) -> _TraceFunction:
        nonlocal countdown
        countdown -= 1
        if countdown <= 0:
            countdown = _CHECK_EVERY
            if clock() > deadline:
                raise _Timeout
        return on_line

    def on_call(frame: types.FrameType, event: str, arg: Any) -> _TraceFunction | None:
        nonlocal countdown
        countdown -= 1
        if countdown <= 0:
            countdown = _CHECK_EVERY
            if clock() > deadline:
                raise _Timeout
        return on_line if frame.f_code.co_filename == _TEMPLATE_FILENAME else None

    return on_call

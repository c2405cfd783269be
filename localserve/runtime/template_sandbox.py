"""The Jinja sandbox that chat templates run in (runtime/templates.py renders chats with it).

A chat template comes from whoever uploaded the model, so it is treated as hostile.
It is rendered the way Hugging Face transformers renders it, so real templates
behave the same here:

- jinja2's ``ImmutableSandboxedEnvironment`` with ``trim_blocks``, ``lstrip_blocks``
  and the ``loopcontrols`` extension (``{% break %}``, ``{% continue %}``); the
  transformers-only ``{% generation %}...{% endgeneration %}`` block renders its body;
- variables ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``,
  ``tools`` (None when absent), ``documents`` (None unless given), plus any extra
  keyword given to :meth:`ChatTemplate.render` (``enable_thinking=...``);
- globals ``raise_exception(message)`` and ``strftime_now(format)``; the ``tojson``
  filter is ``json.dumps`` with ``ensure_ascii=False`` and its ``indent``,
  ``separators`` and ``sort_keys`` arguments (no HTML escaping).

and with hard limits, so that a template can neither escape nor wedge the runner:

- no loader: ``{% include %}``, ``{% import %}``, ``{% from %}`` and ``{% extends %}``
  are refused when the template is compiled; so is calling a block through
  ``self.<name>()``. ``lipsum`` and the ``pprint`` and ``urlize`` filters are removed
  (no chat template uses them);
- attributes the sandbox calls unsafe (``__class__``, ``__globals__``, ``mro``,
  ``gi_frame``, anything starting with ``_``...) fail at once, also through
  ``|attr``, ``str.format`` and ``format_map`` fields (Jinja itself would return an
  undefined value that prints as nothing);
- time: rendering stops after ``TemplateLimits.seconds`` (default 1 s). A
  ``sys.settrace`` tracer counts calls (and lines in template code) and checks the
  clock every few dozen events; the tracer that was set before (a coverage tool,
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
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import types
from collections import deque
from collections.abc import (
    Callable,
    Generator,
    ItemsView,
    Iterable,
    KeysView,
    Mapping,
    Sequence,
    ValuesView,
)
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, cast

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import (
    SecurityError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.exceptions import TemplateError as JinjaTemplateError
from jinja2.ext import Extension
from jinja2.filters import make_attrgetter
from jinja2.parser import Parser
from jinja2.runtime import BlockReference, Context, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Cycler, Namespace, pass_environment, pass_eval_context

from localserve.errors import InvalidOptionError, TemplateError

__all__ = ["DEFAULT_LIMITS", "SandboxedTemplate", "TemplateLimits"]


@dataclass(frozen=True)
class TemplateLimits:
    """Hard limits for one render: wall-clock seconds and characters of output."""

    seconds: float = 1.0
    max_output_chars: int = 1 << 20

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise InvalidOptionError(f"template time limit must be positive, not {self.seconds}")
        if self.max_output_chars < 1:
            raise InvalidOptionError(
                f"template output limit must be positive, not {self.max_output_chars}"
            )


DEFAULT_LIMITS = TemplateLimits()

# Compiling may take at least this long (or the render limit, if longer).
_COMPILE_SECONDS = 2.0
# A template bigger than this is not a chat template.
_MAX_SOURCE_CHARS = 256 * 1024
# Integers a template computes stay below this many bits (about 1,200 digits).
_MAX_INT_BITS = 4096
# Everything a render builds along the way, in characters or list items, at most
# this many times the output limit.
_WORK_FACTOR = 16
# tojson's indent, in spaces.
_MAX_JSON_INDENT = 64
# What one item of a list, tuple, dict or set costs the budget, in characters: a
# call may make a new object per item (split() makes ~60 bytes an item); a slice, '+'
# or '*' only copies references (8 bytes each).
_ITEM_WEIGHT = 32
_REF_WEIGHT = 8
# The tracer looks at the clock once per this many trace events.
_CHECK_EVERY = 64
# How Jinja names the code it compiles from a string.
_TEMPLATE_FILENAME = "<template>"
_MESSAGE_CHARS = 300


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
        self._env = _SandboxEnvironment(limits)
        error: BaseException | None = None
        # Compiling runs Python too: Jinja folds constant expressions, filter calls
        # included ({{ 'a' | center(1000000) }}), into the code it generates. That gets
        # a time limit, and a budget of one output's worth: past it, Jinja leaves the
        # expressions to be computed (and limited) at render time.
        previous = sys.gettrace()
        self._env.begin_render(budget=limits.max_output_chars)
        sys.settrace(_make_tracer(time.monotonic() + max(limits.seconds, _COMPILE_SECONDS)))
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

    def render(self, variables: dict[str, Any]) -> str:
        limits = self.limits
        env = self._env
        cap = limits.max_output_chars
        chunks: list[str] = []
        produced = 0
        error: BaseException | None = None
        tracer = _make_tracer(time.monotonic() + limits.seconds)
        previous = sys.gettrace()
        env.begin_render()
        stream = cast(Generator[str, None, None], self._template.generate(variables))
        sys.settrace(tracer)
        try:
            try:
                for chunk in stream:
                    produced += len(chunk)
                    if produced > cap:
                        raise _Refusal(f"the output passed {cap} characters")
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


class _Refusal(Exception):
    """A template asked for something over a limit; raised before it happens."""


class _Raised(Exception):
    """The template called ``raise_exception(message)``."""


class _Timeout(BaseException):
    """The time limit passed. A BaseException, so no ``except Exception`` on the way
    out (in Jinja or in Python code the template calls) can swallow it."""


def _describe(exc: BaseException, limits: TemplateLimits, *, compiling: bool = False) -> str:
    if isinstance(exc, _Timeout):
        if compiling:
            seconds = max(limits.seconds, _COMPILE_SECONDS)
            return f"chat template took longer than {seconds:g} s to compile"
        return f"chat template took longer than {limits.seconds:g} s to render"
    if isinstance(exc, _Raised):
        return f"chat template rejected the conversation: {exc}"
    if isinstance(exc, _Refusal):
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
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


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
    """A ``sys.settrace`` function that raises _Timeout once ``deadline`` passes.

    Every call event counts (Jinja's runtime, filters, our hooks); only frames of
    compiled template code get the local tracer, which counts their lines too, so an
    empty loop nested in another is caught without slowing every Python line.
    """
    countdown = _CHECK_EVERY
    monotonic = time.monotonic

    def on_line(frame: types.FrameType, event: str, arg: Any) -> _TraceFunction:
        nonlocal countdown
        countdown -= 1
        if countdown <= 0:
            countdown = _CHECK_EVERY
            if monotonic() > deadline:
                raise _Timeout
        return on_line

    def on_call(frame: types.FrameType, event: str, arg: Any) -> _TraceFunction | None:
        nonlocal countdown
        countdown -= 1
        if countdown <= 0:
            countdown = _CHECK_EVERY
            if monotonic() > deadline:
                raise _Timeout
        return on_line if frame.f_code.co_filename == _TEMPLATE_FILENAME else None

    return on_call


# -- sizes --------------------------------------------------------------------------

_SEQUENCES = (str, bytes, bytearray, list, tuple)
_CONTAINERS = (list, tuple, set, frozenset, deque, KeysView, ValuesView, ItemsView)


def _text_length(item: Any) -> int:
    """Length a str.join counts for an item (anything else makes join raise)."""
    return len(item) if isinstance(item, str | bytes) else 0


def _measure(value: object, limit: int) -> int:
    """About how many characters ``str(value)`` (or its JSON) would take, counting a
    shared item once per appearance, as printing does; stops early past ``limit``."""
    total = 0
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif item is None or isinstance(item, bool | float | Undefined):
            total += 24
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, bytes | bytearray):
            total += 4 * len(item) + 3
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            if total > limit:
                break
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            total += 2 + 2 * len(item)
            if total > limit:
                break
            stack.extend(item)
        elif isinstance(item, Namespace):
            total += 16
            stack.append(getattr(item, "_Namespace__attrs", {}))
        elif isinstance(item, types.MethodType):
            total += 64
            stack.append(item.__self__)
        else:
            total += 64  # default reprs: functions, macros, loop objects, classes
        if total > limit:
            break
    return total


def _size(value: object, item_weight: int = _ITEM_WEIGHT) -> int:
    """What a freshly built value costs the budget: its characters, or ``item_weight``
    per item of a container."""
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, list | tuple | dict | set | frozenset):
        return item_weight * len(value)
    if isinstance(value, Namespace):
        return item_weight * len(getattr(value, "_Namespace__attrs", ()))
    if isinstance(value, Cycler):
        return item_weight * len(value.items)
    return 0


def _widths_total(numbers: Iterable[str], cap: int) -> int:
    total = 0
    for number in numbers:
        if len(number) > 9:
            raise _Refusal(f"the format asks for a width of {len(number)} digits")
        total += int(number)
    if total > cap:
        raise _Refusal(f"the format asks for widths of {total} characters (limit {cap})")
    return total


def _percent_widths(fmt: str, cap: int) -> tuple[int, bool]:
    """The widths and precisions a printf-style format asks for, and whether any is '*'.

    Scans conversions as Python does: ``%``, an optional ``(key)`` that may hold nested
    parentheses, flags, width, ``.precision``; then one more character is skipped (the
    type, or the second ``%`` of ``%%``).
    """
    numbers: list[str] = []
    star = False
    end = len(fmt)
    i = 0
    while (i := fmt.find("%", i) + 1) > 0:
        if fmt.startswith("(", i):
            depth = 0
            while i < end:
                depth += (fmt[i] == "(") - (fmt[i] == ")")
                i += 1
                if depth == 0:
                    break
        while i < end and fmt[i] in "-#0 +":
            i += 1
        for part in ("width", "precision"):
            if part == "precision":
                if not fmt.startswith(".", i):
                    break
                i += 1
            if fmt.startswith("*", i):
                star = True
                i += 1
                continue
            start = i
            while i < end and fmt[i] in "0123456789":
                i += 1
            if i > start:
                numbers.append(fmt[start:i])
        i += 1
    return _widths_total(numbers, cap), star


# -- the environment ----------------------------------------------------------------


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator with three more hooks into the environment: ``~``
    (concatenation), slices and output buffers (macros, set blocks, filter and call
    blocks) go through checks that Jinja's own generated code skips."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.new_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.checked_slice(")
        self.visit(node.node, frame)
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            self.write(", ")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write(")")


class _Buffer(list[str]):
    """An output buffer that charges what is written into it to the render's budget."""

    __slots__ = ("_env",)

    def __init__(self, env: _SandboxEnvironment) -> None:
        super().__init__()
        self._env = env

    def append(self, item: str) -> None:
        self._env.charge(len(item))
        super().append(item)

    def extend(self, items: Iterable[str]) -> None:
        items = tuple(items)
        self._env.charge(sum(len(item) for item in items))
        super().extend(items)


class _GenerationBlock(Extension):
    """transformers' ``{% generation %}...{% endgeneration %}`` (it marks the
    assistant's tokens for training): here it just renders its body."""

    tags = {"generation"}  # noqa: RUF012 -- Jinja's own annotation

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _CappedFormatter(SandboxedFormatter):
    """``str.format`` for templates: sandboxed field lookup, with widths, printed
    structures and the total length capped."""

    def __init__(self, env: _SandboxEnvironment) -> None:
        super().__init__(env)
        self._capped_env = env
        self._produced = 0

    def format_capped(self, fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        self._produced = len(fmt)
        result = self.vformat(fmt, args, kwargs)
        self._capped_env.charge(len(result))
        return result

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            self._capped_env.check_printable(value)
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        env = self._capped_env
        _widths_total(re.findall("[0-9]+", format_spec), env.cap)
        env.check_printable(value)
        text = super().format_field(value, format_spec)
        self._produced += len(text)
        if self._produced > env.cap:
            raise _Refusal(f"str.format would produce more than {env.cap} characters")
        return text


def _raise_exception(message: object = "") -> NoReturn:
    if not isinstance(message, str):  # printing it could be a bomb of its own
        limit = 4 * _MESSAGE_CHARS
        message = str(message) if _measure(message, limit) <= limit else type(message).__name__
    raise _Raised(message[: 4 * _MESSAGE_CHARS])


def _strftime_now(format: str = "%Y-%m-%d") -> str:
    if not isinstance(format, str) or len(format) > 256:
        raise _Refusal("strftime_now takes a format string of at most 256 characters")
    # glibc accepts field widths (%1000000000Y): refuse them.
    if re.search(r"%[-_^#0]*[1-9]", format):
        raise _Refusal("strftime_now formats may not set field widths")
    return datetime.now().strftime(format)


# Filters that do not turn their whole argument into text, so its size needs no check.
_UNMEASURED_FILTERS = frozenset(
    {
        "abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float",
        "groupby", "int", "items", "join", "last", "length", "list", "map", "max", "min",
        "random", "reject", "rejectattr", "reverse", "round", "select", "selectattr",
        "slice", "sort", "tojson", "unique",
    }
)  # fmt: skip
_REMOVED_FILTERS = ("pprint", "urlize")


class _SandboxEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with limits. One per ChatTemplate; renders one at a time."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, limits: TemplateLimits) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
            extensions=["jinja2.ext.loopcontrols", _GenerationBlock],
            finalize=self._finalize,
            cache_size=0,
        )
        self.cap = limits.max_output_chars
        self.work_budget = _WORK_FACTOR * limits.max_output_chars
        self._work_left = 0
        self._rendering = False
        self.globals.pop("lipsum", None)
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        for name in _REMOVED_FILTERS:
            self.filters.pop(name, None)
        self.filters = {name: self._wrap_filter(name, f) for name, f in self.filters.items()}
        self.filters.update(
            {
                "tojson": self._tojson,
                "join": self._join,
                "format": self._format,
                "indent": self._indent,
                "replace": self._replace,
                "wordwrap": self._wordwrap,
                "batch": self._batch,
                "slice": self._slice,
            }
        )

    # -- the budget

    def begin_render(self, budget: int | None = None) -> None:
        self._work_left = self.work_budget if budget is None else budget
        self._rendering = True

    def end_render(self) -> None:
        self._rendering = False

    def charge(self, amount: int) -> None:
        """Count ``amount`` characters (or items) built by the template."""
        if self._rendering:
            self._work_left -= amount
            if self._work_left < 0:
                raise _Refusal(
                    f"the template built more than {self.work_budget} characters of text "
                    "on the way to its output"
                )

    def charge_result(self, value: Any, item_weight: int = _ITEM_WEIGHT) -> None:
        """Charge a value a call or an operator just built; refuse big integers
        (``int.from_bytes``, ``|int``), which every later ``+`` or ``-`` would copy."""
        if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise _Refusal(f"the template made an integer over {_MAX_INT_BITS} bits")
        self.charge(_size(value, item_weight))

    def check_size(self, size: int, what: str) -> None:
        if size > self.cap:
            raise _Refusal(f"{what} would make {size} characters or items (limit {self.cap})")

    def check_printable(self, value: Any) -> int:
        if isinstance(value, str):
            return len(value)
        size = _measure(value, self.cap)
        if size > self.cap:
            raise _Refusal(
                f"printing a {type(value).__name__} would take more than {self.cap} characters"
            )
        return size

    def _check_ints(self, args: Iterable[Any]) -> None:
        for arg in args:
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > self.cap:
                raise _Refusal(f"an argument of {arg.bit_length()} bits is too large")

    # -- hooks called by the generated code

    def _finalize(self, value: Any) -> Any:
        if type(value) is not str:
            self.charge(self.check_printable(value))
        return value

    def new_buffer(self) -> _Buffer:
        return _Buffer(self)

    def checked_concat(self, values: tuple[Any, ...]) -> str:
        total = 0
        for value in values:
            total += self.check_printable(value)
            self.check_size(total, "'~'")
        self.charge(total)
        return "".join([str(value) for value in values])

    def checked_slice(self, obj: Any, start: Any, stop: Any, step: Any) -> Any:
        part = slice(start, stop, step)
        if isinstance(obj, _SEQUENCES):
            with contextlib.suppress(TypeError):  # then obj[part] raises the real error
                items = len(range(*part.indices(len(obj))))
                self.charge(
                    items if isinstance(obj, str | bytes | bytearray) else _REF_WEIGHT * items
                )
        return obj[part]

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and type(left) is str and type(right) is str:
            # The common case, kept cheap: the check and charge() inlined.
            size = len(left) + len(right)
            if size > self.cap:
                self.check_size(size, "'+'")
            if self._rendering:
                self._work_left -= size
                if self._work_left < 0:
                    self.charge(0)
            return left + right
        if operator == "*":
            self._check_multiply(left, right)
        elif operator == "**":
            self._check_power(left, right)
        elif operator == "+":
            if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
                self.check_size(len(left) + len(right), "'+'")
        elif operator == "%" and isinstance(left, str):
            self._check_percent(left, right)
        result = self.binop_table[operator](left, right)
        self.charge_result(result, _REF_WEIGHT)  # '+' and '*' of lists copy references
        return result

    def _check_multiply(self, left: Any, right: Any) -> None:
        if isinstance(left, _SEQUENCES) and isinstance(right, int):
            self.check_size(len(left) * right, "'*'")
        elif isinstance(right, _SEQUENCES) and isinstance(left, int):
            self.check_size(len(right) * left, "'*'")
        elif (
            isinstance(left, int)
            and isinstance(right, int)
            and left.bit_length() + right.bit_length() > _MAX_INT_BITS
        ):
            raise _Refusal(f"'*' would make an integer over {_MAX_INT_BITS} bits")

    def _check_power(self, left: Any, right: Any) -> None:
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and left.bit_length() * right > _MAX_INT_BITS
        ):
            raise _Refusal(f"'**' would make an integer over {_MAX_INT_BITS} bits")

    def _check_percent(self, fmt: str, args: Any) -> None:
        widths, star = _percent_widths(fmt, self.cap)
        size = len(fmt) + widths + _measure(args, self.cap)
        if star and isinstance(args, tuple):  # '%*s': widths come from the arguments
            size += sum(abs(a) for a in args if isinstance(a, int))
        self.check_size(size, "'%' formatting")

    # -- attributes, calls, str.format

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr in _UNSAFE_NAMES:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        # Jinja returns an Undefined that fails only when used, and an Undefined
        # prints as "": refuse the access itself.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if not isinstance(value, types.MethodType | types.BuiltinMethodType):
            return None
        name = value.__name__
        owner = value.__self__
        if name not in ("format", "format_map") or not isinstance(owner, str):
            return None
        fmt = str(owner)
        formatter = _CappedFormatter(self)

        if name == "format":

            def format(*args: Any, **kwargs: Any) -> str:
                return formatter.format_capped(fmt, args, kwargs)

            return format

        def format_map(mapping: Mapping[str, Any]) -> str:
            return formatter.format_capped(fmt, (), mapping)

        return format_map

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, Macro):  # its output was charged as it was written
            return super().call(context, obj, *args, **kwargs)
        if isinstance(obj, BlockReference):
            # self.name() joins the block's output in one go, past every check.
            raise SecurityError("calling a block (self.<name>()) is not allowed")
        if isinstance(obj, types.BuiltinMethodType | types.MethodType):
            wrapped = self.wrap_str_format(obj)
            if wrapped is not None:  # a str.format that did not come through getattr
                return super().call(context, wrapped, *args, **kwargs)
            owner = getattr(obj, "__self__", None)
            # Methods written in C ('-'.center(10**9), (1).to_bytes(10**9),
            # (1).from_bytes(...)) and Markup's Python ones (|safe makes a Markup).
            if isinstance(obj, types.BuiltinMethodType) or isinstance(owner, str | bytes):
                self._check_ints(args)
                self._check_ints(kwargs.values())
            if isinstance(owner, str | bytes):
                args = self._check_text_method(owner, obj.__name__, args, kwargs)
        # Everything else is charged for what it returns: dict(...), namespace(...),
        # cycler(...), {}.fromkeys(...)...
        result = super().call(context, obj, *args, **kwargs)
        self.charge_result(result)
        return result

    def _check_text_method(
        self, text: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        if name == "join" and len(args) == 1:
            items, _ = self._join_items(args[0], len(text), _text_length)
            return (items,)
        if name == "replace" and len(args) >= 2:
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            self.check_size(_replaced_size(text, args[0], args[1], count), "replace")
        elif name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(tabsize, int):
                tab = "\t" if isinstance(text, str) else b"\t"
                self.check_size(len(text) + text.count(tab) * tabsize, "expandtabs")  # type: ignore[arg-type]
        elif name == "translate" and args and isinstance(args[0], Mapping):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            self.check_size(len(text) * max(longest, 1), "translate")
        return args

    def _join_items(
        self, items: Iterable[Any], separator_length: int, measure: Callable[[Any], int]
    ) -> tuple[list[Any], int]:
        """Collect a join's items, refusing the join as soon as the text so far passes
        the cap. Measuring after ``list(items)`` would first drain a huge lazy
        iterable (``range(10**5) | map(...)``) through the tracer, and on a slow
        machine the render time limit would fire before the size check could."""
        kept: list[Any] = []
        size = 0
        for item in items:
            size += measure(item) + (separator_length if kept else 0)
            self.check_size(size, "join")
            kept.append(item)
        return kept, size

    # -- filters

    def _wrap_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        skip = 1 if hasattr(func, "jinja_pass_arg") else 0
        measured = name not in _UNMEASURED_FILTERS

        def checked(*args: Any, **kwargs: Any) -> Any:
            own = args[skip:]
            self._check_ints(own)
            self._check_ints(kwargs.values())
            if measured:
                for arg in (*own, *kwargs.values()):
                    self.check_printable(arg)
            result = func(*args, **kwargs)
            self.charge_result(result)
            return result

        checked.__name__ = getattr(func, "__name__", name)
        checked.__doc__ = func.__doc__
        if skip:
            checked.jinja_pass_arg = func.jinja_pass_arg  # type: ignore[attr-defined]
        return checked

    def _tojson(
        self,
        value: Any,
        ensure_ascii: bool = False,
        indent: int | str | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        if isinstance(indent, int) and not 0 <= indent <= _MAX_JSON_INDENT:
            raise _Refusal(f"tojson indent must be between 0 and {_MAX_JSON_INDENT}")
        if isinstance(indent, str) and len(indent) > _MAX_JSON_INDENT:
            raise _Refusal(f"tojson indent may be at most {_MAX_JSON_INDENT} characters")
        encoder = json.JSONEncoder(
            ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )
        parts: list[str] = []
        size = 0
        # The pure-Python encoder yields piece by piece: stop as soon as it is too long.
        for part in encoder.iterencode(value):
            size += len(part)
            self.check_size(size, "tojson")
            parts.append(part)
        self.charge(size)
        return "".join(parts)

    @pass_eval_context
    def _join(self, eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
        self.check_printable(d)
        if attribute is not None:
            value = map(make_attrgetter(self, attribute), value)
        items, size = self._join_items(value, len(str(d)), self.check_printable)
        self.charge(size)
        return str(d).join([str(item) for item in items])

    def _format(self, value: Any, *args: Any, **kwargs: Any) -> str:
        if args and kwargs:  # Jinja's own filter raises the right error
            return str(self._originals["format"](value, *args, **kwargs))
        self.check_printable(value)
        fmt = str(value)
        values: Any = kwargs or args
        self._check_percent(fmt, values)
        result: str = fmt % values
        self.charge(len(result))
        return result

    def _indent(
        self, s: Any, width: int | str = 4, first: bool = False, blank: bool = False
    ) -> str:
        self.check_printable(s)
        text = str(s)
        per_line = len(width) if isinstance(width, str) else int(width)
        self._check_ints([per_line])
        self.check_size(len(text) + (text.count("\n") + 1) * per_line, "indent")
        result: str = self._originals["indent"](text, width, first, blank)
        self.charge(len(result))
        return result

    @pass_eval_context
    def _replace(self, eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
        for arg in (s, old, new):
            self.check_printable(arg)
        text = str(s)
        self._check_ints([count])
        self.check_size(_replaced_size(text, str(old), str(new), count), "replace")
        result: str = self._originals["replace"](eval_ctx, text, old, new, count)
        self.charge(len(result))
        return result

    @pass_environment
    def _wordwrap(
        self,
        environment: Any,
        s: Any,
        width: int = 79,
        break_long_words: bool = True,
        wrapstring: str | None = None,
        break_on_hyphens: bool = True,
    ) -> str:
        self.check_printable(s)
        self.check_printable(wrapstring)
        text = str(s)
        self._check_ints([width])
        lines = 2 * len(text) // max(int(width), 1) + 2
        newline = self.newline_sequence if wrapstring is None else str(wrapstring)
        self.check_size(len(text) + lines * len(newline), "wordwrap")
        result: str = self._originals["wordwrap"](
            environment, text, width, break_long_words, wrapstring, break_on_hyphens
        )
        self.charge(len(result))
        return result

    def _batch(self, value: Any, linecount: int, fill_with: Any = None) -> Any:
        self._check_ints([linecount])
        self.charge(_ITEM_WEIGHT * abs(int(linecount)))
        return self._originals["batch"](value, linecount, fill_with)

    @pass_eval_context
    def _slice(self, eval_ctx: Any, value: Any, slices: int, fill_with: Any = None) -> Any:
        self._check_ints([slices])
        self.charge(2 * _ITEM_WEIGHT * abs(int(slices)))  # a new list each
        return self._originals["slice"](eval_ctx, value, slices, fill_with)

    @property
    def _originals(self) -> Mapping[str, Callable[..., Any]]:
        return _JINJA_FILTERS


def _replaced_size(text: str | bytes, old: Any, new: Any, count: Any) -> int:
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return len(text)  # the call itself raises TypeError
    found = len(text) + 1 if not old else text.count(old)  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


_UNSAFE_NAMES = frozenset(
    {
        "mro", "func_globals", "func_code", "func_closure", "im_func", "im_self", "f_globals",
        "f_locals", "f_builtins", "f_back", "f_code", "gi_frame", "gi_code", "gi_yieldfrom",
        "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code", "ag_await", "tb_frame",
        "tb_next",
    }
)  # fmt: skip


def _jinja_filters() -> dict[str, Callable[..., Any]]:
    from jinja2.filters import FILTERS

    return dict(FILTERS)


_JINJA_FILTERS = _jinja_filters()

"""The Jinja environment a chat template runs in: jinja2's immutable sandbox with a
hook on every operation that can build something big.

The generated code sends ``~``, slices and output buffers through the environment
(``_CodeGenerator``); ``+``, ``*``, ``**`` and ``%``, calls, ``str.format`` and the
filters that can grow their input are checked against the cap before they run and
charged to the render's work budget after (template_limits.py measures). Unsafe
attributes fail at once; ``lipsum``, ``pprint`` and ``urlize`` are gone. The time
limit and the error messages are template_sandbox.py's, whose docstring lists every
rule.
"""

from __future__ import annotations

import contextlib
import json
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension
from jinja2.filters import make_attrgetter
from jinja2.parser import Parser
from jinja2.runtime import BlockReference, Context, Macro, Undefined
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEnvironment,
    SandboxedFormatter,
)
from jinja2.utils import pass_environment, pass_eval_context

from localserve.runtime.template_limits import (
    ITEM_WEIGHT,
    MESSAGE_CHARS,
    REF_WEIGHT,
    Refusal,
    TemplateLimits,
    budget_cost,
    measure,
    percent_widths,
    replaced_size,
    text_length,
    widths_total,
)

__all__ = ["Raised", "SandboxEnvironment", "TemplateList"]

# Integers a template computes stay below this many bits (about 1,200 digits).
_MAX_INT_BITS = 4096
# Everything a render builds along the way, in characters or list items, at most
# this many times the output limit.
_WORK_FACTOR = 16
# tojson's indent, in spaces.
_MAX_JSON_INDENT = 64

_SEQUENCES = (str, bytes, bytearray, list, tuple)


class Raised(Exception):
    """The template called ``raise_exception(message)``."""


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator with more hooks into the environment: ``~``
    (concatenation), slices and output buffers (macros, set blocks, filter and call
    blocks) go through checks that Jinja's own generated code skips, and the lists
    the template writes (``[]``, ``[a, b]``) are made by it (see ``TemplateList``)."""

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.template_list(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Const(self, node: nodes.Const, frame: Frame) -> None:
        if isinstance(node.value, list):  # a list literal Jinja folded to a constant
            self.write("environment.template_list(")
            super().visit_Const(node, frame)
            self.write(")")
            return
        super().visit_Const(node, frame)

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

    def __init__(self, env: SandboxEnvironment) -> None:
        super().__init__()
        self._env = env

    def append(self, item: str) -> None:
        self._env.charge(len(item))
        super().append(item)

    def extend(self, items: Iterable[str]) -> None:
        items = tuple(items)
        self._env.charge(sum(len(item) for item in items))
        super().extend(items)


class TemplateList(list[Any]):
    """A list the template wrote itself (``namespace(ids=[])``): unlike the data it
    is given (``messages``, ``tools``), it may grow and shrink (``append``, ``pop``,
    ``extend``), as Kimi K2's templates queue call ids in one. What it takes is
    charged to the render's budget."""

    __slots__ = ("_env",)

    def __init__(self, env: SandboxEnvironment, items: Iterable[Any] = ()) -> None:
        super().__init__(items)
        self._env = env
        env.charge(REF_WEIGHT * len(self))

    def append(self, item: Any) -> None:
        self._env.charge(REF_WEIGHT)
        super().append(item)

    def extend(self, items: Iterable[Any]) -> None:
        kept, _ = self._env._join_items(items, 0, lambda _: REF_WEIGHT)
        self._env.charge(REF_WEIGHT * len(kept))
        super().extend(kept)


_GROWABLE = frozenset({"append", "pop", "extend"})


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

    def __init__(self, env: SandboxEnvironment) -> None:
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
        widths_total(re.findall("[0-9]+", format_spec), env.cap)
        env.check_printable(value)
        text = super().format_field(value, format_spec)
        self._produced += len(text)
        if self._produced > env.cap:
            raise Refusal(f"str.format would produce more than {env.cap} characters")
        return text


def _nothing(value: Any) -> bool:
    return value is None or isinstance(value, Undefined)


def _text_and_nothing(left: Any, right: Any) -> bool:
    return (isinstance(left, str) and _nothing(right)) or (
        _nothing(left) and isinstance(right, str)
    )


def _raise_exception(message: object = "") -> NoReturn:
    if not isinstance(message, str):  # printing it could be a bomb of its own
        limit = 4 * MESSAGE_CHARS
        message = str(message) if measure(message, limit) <= limit else type(message).__name__
    raise Raised(message[: 4 * MESSAGE_CHARS])


def _strftime_now(format: str = "%Y-%m-%d") -> str:
    if not isinstance(format, str) or len(format) > 256:
        raise Refusal("strftime_now takes a format string of at most 256 characters")
    # glibc accepts field widths (%1000000000Y): refuse them.
    if re.search(r"%[-_^#0]*[1-9]", format):
        raise Refusal("strftime_now formats may not set field widths")
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


class SandboxEnvironment(ImmutableSandboxedEnvironment):
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
                raise Refusal(
                    f"the template built more than {self.work_budget} characters of text "
                    "on the way to its output"
                )

    def charge_result(self, value: Any, item_weight: int = ITEM_WEIGHT) -> None:
        """Charge a value a call or an operator just built; refuse big integers
        (``int.from_bytes``, ``|int``), which every later ``+`` or ``-`` would copy."""
        if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise Refusal(f"the template made an integer over {_MAX_INT_BITS} bits")
        self.charge(budget_cost(value, item_weight))

    def check_size(self, size: int, what: str) -> None:
        if size > self.cap:
            raise Refusal(f"{what} would make {size} characters or items (limit {self.cap})")

    def check_printable(self, value: Any) -> int:
        if isinstance(value, str):
            return len(value)
        size = measure(value, self.cap)
        if size > self.cap:
            raise Refusal(
                f"printing a {type(value).__name__} would take more than {self.cap} characters"
            )
        return size

    def _check_ints(self, args: Iterable[Any]) -> None:
        for arg in args:
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > self.cap:
                raise Refusal(f"an argument of {arg.bit_length()} bits is too large")

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
                    items if isinstance(obj, str | bytes | bytearray) else REF_WEIGHT * items
                )
        return obj[part]

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and _text_and_nothing(left, right):
            # llama.cpp's Jinja adds a text and an undefined or None value as the text
            # alone (Command R+ adds each parameter's optional description).
            left, right = ("" if _nothing(left) else left), ("" if _nothing(right) else right)
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
        self.charge_result(result, REF_WEIGHT)  # '+' and '*' of lists copy references
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
            raise Refusal(f"'*' would make an integer over {_MAX_INT_BITS} bits")

    def _check_power(self, left: Any, right: Any) -> None:
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and left.bit_length() * right > _MAX_INT_BITS
        ):
            raise Refusal(f"'**' would make an integer over {_MAX_INT_BITS} bits")

    def _check_percent(self, fmt: str, args: Any) -> None:
        widths, star = percent_widths(fmt, self.cap)
        size = len(fmt) + widths + measure(args, self.cap)
        if star and isinstance(args, tuple):  # '%*s': widths come from the arguments
            size += sum(abs(a) for a in args if isinstance(a, int))
        self.check_size(size, "'%' formatting")

    # -- attributes, calls, str.format

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr in _UNSAFE_NAMES:
            return False
        if isinstance(obj, TemplateList) and attr in _GROWABLE:
            return SandboxedEnvironment.is_safe_attribute(self, obj, attr, value)
        return super().is_safe_attribute(obj, attr, value)

    def template_list(self, items: Iterable[Any]) -> TemplateList:
        return TemplateList(self, items)

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
            items, _ = self._join_items(args[0], len(text), text_length)
            return (items,)
        if name == "replace" and len(args) >= 2:
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            self.check_size(replaced_size(text, args[0], args[1], count), "replace")
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
            raise Refusal(f"tojson indent must be between 0 and {_MAX_JSON_INDENT}")
        if isinstance(indent, str) and len(indent) > _MAX_JSON_INDENT:
            raise Refusal(f"tojson indent may be at most {_MAX_JSON_INDENT} characters")
        if isinstance(value, Iterator):  # ``tools | map(attribute='function') | tojson``
            value, _ = self._join_items(value, 0, lambda _: REF_WEIGHT)
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
        self.check_size(replaced_size(text, str(old), str(new), count), "replace")
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
        self.charge(ITEM_WEIGHT * abs(int(linecount)))
        return self._originals["batch"](value, linecount, fill_with)

    @pass_eval_context
    def _slice(self, eval_ctx: Any, value: Any, slices: int, fill_with: Any = None) -> Any:
        self._check_ints([slices])
        self.charge(2 * ITEM_WEIGHT * abs(int(slices)))  # a new list each
        return self._originals["slice"](eval_ctx, value, slices, fill_with)

    @property
    def _originals(self) -> Mapping[str, Callable[..., Any]]:
        return _JINJA_FILTERS


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

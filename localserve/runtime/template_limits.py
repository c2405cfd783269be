"""The limits a chat template renders under, and the measurements that enforce them.

``TemplateLimits`` holds the two a caller sets (seconds, characters of output); the
rest follow from them. An operation that could build something big is measured
*before* it runs -- ``measure`` estimates what printing a structure would take,
``percent_widths`` and ``widths_total`` what a format string asks for,
``replaced_size`` what a replace would make -- and refused with ``Refusal`` past the
cap; what it did build is charged to the render's work budget at ``budget_cost``.
template_environment.py applies them; template_sandbox.py lists every rule.
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import ItemsView, Iterable, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from typing import Any

from jinja2.runtime import Undefined
from jinja2.utils import Cycler, Namespace

from localserve.errors import InvalidOptionError

__all__ = [
    "DEFAULT_LIMITS",
    "ITEM_WEIGHT",
    "MESSAGE_CHARS",
    "REF_WEIGHT",
    "Refusal",
    "TemplateLimits",
    "budget_cost",
    "measure",
    "percent_widths",
    "replaced_size",
    "text_length",
    "widths_total",
]


@dataclass(frozen=True)
class TemplateLimits:
    """Hard limits for one render: seconds of the rendering thread's CPU time and characters of output."""

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

# What one item of a list, tuple, dict or set costs the budget, in characters: a
# call may make a new object per item (split() makes ~60 bytes an item); a slice, '+'
# or '*' only copies references (8 bytes each).
ITEM_WEIGHT = 32
REF_WEIGHT = 8
# One-line error messages are cut to this many characters.
MESSAGE_CHARS = 300


class Refusal(Exception):
    """A template asked for something over a limit; raised before it happens."""


_CONTAINERS = (list, tuple, set, frozenset, deque, KeysView, ValuesView, ItemsView)


def text_length(item: Any) -> int:
    """Length a str.join counts for an item (anything else makes join raise)."""
    return len(item) if isinstance(item, str | bytes) else 0


def measure(value: object, limit: int) -> int:
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


def budget_cost(value: object, item_weight: int = ITEM_WEIGHT) -> int:
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


def widths_total(numbers: Iterable[str], cap: int) -> int:
    total = 0
    for number in numbers:
        if len(number) > 9:
            raise Refusal(f"the format asks for a width of {len(number)} digits")
        total += int(number)
    if total > cap:
        raise Refusal(f"the format asks for widths of {total} characters (limit {cap})")
    return total


def percent_widths(fmt: str, cap: int) -> tuple[int, bool]:
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
    return widths_total(numbers, cap), star


def replaced_size(text: str | bytes, old: Any, new: Any, count: Any) -> int:
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return len(text)  # the call itself raises TypeError
    found = len(text) + 1 if not old else text.count(old)  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)

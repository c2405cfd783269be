"""Whether a text is a prefix of some JSON document: what a JSON grammar guarantees
for an answer that was cut off at ``num_predict``, so tests check it on every run,
not only when the model happened to finish.

Raw control characters inside strings are accepted (as ``json.loads(strict=False)``
does): llama.cpp's grammar sees a byte-fallback token of a random-weight model as its
``<0x0F>`` text, so such bytes can slip into strings.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
# What a number can start with: a sign, then an integer part before any fraction or
# exponent, and a digit in the fraction before an exponent ("1.e5" cannot go on).
_PARTIAL_NUMBER = re.compile(r"-?((0|[1-9]\d*)(\.\d*|(\.\d+)?[eE][+-]?\d*)?)?")
_WS = " \t\n\r"


class _End(Exception):
    """The text ended where more JSON could follow."""


def is_json_prefix(text: str) -> bool:
    """True when ``text`` is a (possibly whole) JSON value, or can be completed to one."""
    try:
        end = _value(text, 0)
    except _End:
        return True
    except ValueError:
        return False
    return _skip(text, end) == len(text)


def _skip(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _value(s: str, i: int) -> int:
    i = _skip(s, i)
    if i == len(s):
        raise _End
    c = s[i]
    if c == "{":
        return _container(s, i + 1, "}", keyed=True)
    if c == "[":
        return _container(s, i + 1, "]", keyed=False)
    if c == '"':
        return _string(s, i + 1)
    for literal in ("true", "false", "null"):
        if s.startswith(literal, i):
            return i + len(literal)
        if literal.startswith(s[i:]):
            raise _End
    if _PARTIAL_NUMBER.fullmatch(s, i):
        raise _End  # the text ends inside a number, which may go on
    number = _NUMBER.match(s, i)
    if number:
        return number.end()
    raise ValueError(f"not JSON at {i}")


def _string(s: str, i: int) -> int:
    while i < len(s):
        c = s[i]
        if c == '"':
            return i + 1
        if c == "\\":
            if i + 1 == len(s):
                raise _End
            escape = s[i + 1]
            if escape == "u":
                digits = s[i + 2 : i + 6]
                if not re.fullmatch(r"[0-9a-fA-F]*", digits):
                    raise ValueError("bad \\u escape")
                if len(digits) < 4:
                    raise _End
                i += 6
                continue
            if escape not in '"\\/bfnrt':
                raise ValueError("bad escape")
            i += 2
            continue
        i += 1
    raise _End


def _container(s: str, i: int, close: str, *, keyed: bool) -> int:
    i = _skip(s, i)
    if i == len(s):
        raise _End
    if s[i] == close:
        return i + 1
    while True:
        if keyed:
            i = _skip(s, i)
            if i == len(s):
                raise _End
            if s[i] != '"':
                raise ValueError("a key must be a string")
            i = _skip(s, _string(s, i + 1))
            if i == len(s):
                raise _End
            if s[i] != ":":
                raise ValueError("':' expected")
            i += 1
        i = _skip(s, _value(s, i))
        if i == len(s):
            raise _End
        if s[i] == close:
            return i + 1
        if s[i] != ",":
            raise ValueError("',' expected")
        i += 1

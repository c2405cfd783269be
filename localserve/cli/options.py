"""Model options typed on the command line: ``-o KEY=VALUE`` and chat's ``/set parameter``.

Values are parsed the way people write them (``42``, ``0.7``, ``true``, ``["a","b"]``,
anything else a string), then checked with the daemon's own rules
(localserve.schemas.options) before any request goes out: a typo such as
``temprature`` or ``num_predict=abc`` is one clear error, not a 400 after a model
load. ``stop`` may be given several times; each adds a stop sequence.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from localserve.errors import InvalidOptionError

LIST_KEYS = frozenset({"stop"})


def known_keys() -> list[str]:
    """Every option name the daemon accepts (those it ignores included), sorted."""
    from localserve.schemas.options import IGNORED_KEYS, LOAD_KEYS, SAMPLING_KEYS

    return sorted(LOAD_KEYS | SAMPLING_KEYS | IGNORED_KEYS)


def useful_keys() -> list[str]:
    """The options that change something here (shown in help and hints)."""
    from localserve.schemas.options import LOAD_KEYS, SAMPLING_KEYS

    return sorted(LOAD_KEYS | SAMPLING_KEYS)


def parse_value(text: str) -> Any:
    """``"42"`` -> 42, ``"0.5"`` -> 0.5, ``"true"`` -> True, a JSON list -> list, else the text."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(stripped)
        except ValueError:
            pass
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except ValueError:
            raise InvalidOptionError(f"{text!r} is not a valid JSON list") from None
        return value
    return text


def check_key(key: str) -> str:
    key = key.strip()
    known = known_keys()
    if key in known:
        return key
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise InvalidOptionError(
        f"unknown option {key!r}", hint=f"{hint}options: {', '.join(useful_keys())}"
    )


def set_option(options: dict[str, Any], key: str, values: Sequence[str]) -> dict[str, Any]:
    """A copy of ``options`` with ``key`` set from its textual ``values`` (checked)."""
    key = check_key(key)
    if not values:
        raise InvalidOptionError(f"option {key!r} needs a value")
    updated = dict(options)
    if key in LIST_KEYS:
        items: list[Any] = []
        for text in values:
            value = parse_value(text) if text.strip().startswith("[") else text
            items += value if isinstance(value, list) else [value]
        if any(not isinstance(item, str) or not item for item in items):
            raise InvalidOptionError(f"{key} takes non-empty strings")
        updated[key] = items
    else:
        if len(values) > 1:
            raise InvalidOptionError(f"option {key!r} takes one value, got {len(values)}")
        updated[key] = parse_value(values[0])
    validate(updated)
    return updated


def parse_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """``["temperature=0", "stop=a", "stop=b"]`` -> ``{"temperature": 0, "stop": ["a", "b"]}``."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidOptionError(
                f"invalid option {pair!r}", hint="write options as KEY=VALUE, e.g. -o temperature=0"
            )
        key = check_key(key)
        if key in LIST_KEYS:
            options = set_option(options, key, [*options.get(key, []), text])
        else:
            options = set_option(options, key, [text])
    return options


def validate(options: Mapping[str, Any]) -> None:
    """Raise InvalidOptionError for a value the daemon would refuse (type or range)."""
    from localserve.schemas.options import split_options

    # The placeholders only stand in for daemon settings the check needs.
    split_options(dict(options), num_ctx=2048, num_parallel=1)


def describe(value: Any) -> str:
    """A value as a person would type it back (for /show parameters)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return " ".join(json.dumps(v) if isinstance(v, str) else str(v) for v in value)
    return str(value)

"""The judge of cut-off JSON answers (tests/support/json_prefix.py) judged in turn: it must
take every beginning of a real document and refuse text no completion can save, or the
JSON-mode tests that lean on it could not fail."""

from __future__ import annotations

import itertools
import json

import pytest

from tests.support.json_prefix import is_json_prefix

DOCUMENTS = [
    {"a": 1, "b": [True, False, None], "c": {"d": "e"}},
    [-0.5, 1e-07, 12345678901234567890, -3, 0, 2.5e300],
    {"text": 'quote " backslash \\ slash / newline \n tab \t bell \x07', "é": "ü"},
    "\u2603 snow and \U0001f600",
    [[[[]]], {}, [{}], {"": ""}],
    {"nested": {"deeper": {"deepest": [1, {"x": [None]}]}}},
    True,
    None,
    -12.75e-3,
    "",
]


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("ascii", [True, False])
def test_every_beginning_of_a_document_is_a_prefix(
    document: object, indent: int | None, ascii: bool
) -> None:
    text = json.dumps(document, indent=indent, ensure_ascii=ascii)
    for end in range(len(text) + 1):
        assert is_json_prefix(text[:end]), text[:end]
    assert is_json_prefix(text + "\n  ")  # whitespace after a whole value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "-",
        "-0",
        "-0.",
        "0.5e",
        "1E+",
        "1e-0",
        "[1.",
        '{"a": -',
        "t",
        "fals",
        "[nu",
        '"\\',
        '"\\u',
        '"\\u00',
        '"\\uD83D',
        '{"k": "v\\',
        '{"k"',
        '{"k" ',
        '{"k":',
        '{"k": 1,',
        '{"k": 1, "',
        "[1, 2,",
        "[[[[",
        '"raw \x0f control"',  # llama.cpp's byte tokens in a grammar string (module doc)
    ],
)
def test_accepted(text: str) -> None:
    assert is_json_prefix(text)


@pytest.mark.parametrize(
    "text",
    [
        # Numbers no digit can finish.
        "e",
        "E5",
        "-e",
        "-.",
        "-.5",
        ".5",
        "1.e5",
        "1.e",
        "[1.e",
        "+1",
        "01",
        "-01",
        "1e5.",
        "0x1",
        "1 2",
        "[1;2]",
        # Literals.
        "truex",
        "tx",
        "[tr]",
        "nul]",
        "True",
        "None",
        "NaN",
        "Infinity",
        # Containers.
        "]",
        "}",
        "[,",
        "[1,]",
        "[1 2",
        "[1}",
        "{]",
        "{,",
        "{1",
        "{'a'",
        '{"a" 1',
        '{"a":}',
        '{"a":1,}',
        '{"a":1 "b"',
        '{"a",',
        # Strings.
        '"\\x"',
        '"\\u12G4"',
        "'single'",
        # More than one value.
        "{}{}",
        "{} x",
        "[] []",
        '"a""b"',
        "1,",
    ],
)
def test_rejected(text: str) -> None:
    assert not is_json_prefix(text)


# The exhaustive check: every text of up to three characters from this alphabet, against
# an oracle that looks for a completion json.loads takes. A completion finishes the
# innermost unfinished part, then closes the open containers outward.
ALPHABET = '[]{}",:01-.e+\\t '
INNER = ["", "0", '"', '":0', '""', '"":0', ":0", "0000", '0000"', "rue", "ue", "e", '"0"']
CLOSERS = ["".join(c) for n in range(4) for c in itertools.product("]}", repeat=n)]


def completable(text: str) -> bool:
    for inner, closers in itertools.product(INNER, CLOSERS):
        try:
            json.loads(text + inner + closers, strict=False)
        except ValueError:
            continue
        return True
    return False


def test_agrees_with_a_search_for_completions_on_every_short_text() -> None:
    disagreements = []
    alive = {""}  # the completable texts one character shorter
    for n in range(1, 4):
        found = set()
        for text in map("".join, itertools.product(ALPHABET, repeat=n)):
            # A text that extends one no completion saves is no better: no search.
            if text[:-1] in alive and completable(text):
                found.add(text)
            if is_json_prefix(text) != (text in found):
                disagreements.append(text)
        alive = found
    assert disagreements == []

"""The pieces `run` and `ps` use, without a process: option parsing, durations, the word
wrapper, ps's columns, and docs/cli.md kept in step with the app."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from localserve.errors import InvalidOptionError


def test_docs_match_the_app() -> None:
    from localserve.cli import docs

    assert docs.DOC_PATH.read_text() == docs.render(), (
        "docs/cli.md is stale: run python -m localserve.cli.docs --write"
    )


def test_docs_list_every_exit_code() -> None:
    from localserve.cli import docs, errors

    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    for code in codes:
        assert f"\n| {code} | " in docs.EXIT_CODES


def test_option_parsing() -> None:
    from localserve.cli.options import parse_pairs, parse_value, set_option

    assert parse_value("42") == 42
    assert parse_value("0.5") == 0.5
    assert parse_value("true") is True
    assert parse_value('["a", "b"]') == ["a", "b"]
    assert parse_value("hello") == "hello"
    assert parse_pairs(["temperature=0", "stop=a", "stop=b=c", "num_ctx=1024"]) == {
        "temperature": 0,
        "stop": ["a", "b=c"],
        "num_ctx": 1024,
    }
    assert parse_pairs(['stop=["x", "y"]']) == {"stop": ["x", "y"]}
    assert set_option({}, "stop", ["<end>", "###"]) == {"stop": ["<end>", "###"]}
    for bad in (["seed=1.5"], ["temperature=hot"], ["nope=1"], ["=1"], ["top_k=true"]):
        with pytest.raises(InvalidOptionError):
            parse_pairs(bad)


def test_word_wrapper_breaks_between_words() -> None:
    from localserve.cli.answer import WordWrapper

    def wrap(tokens: list[str], width: int = 21) -> str:  # 20 usable columns
        out = io.StringIO()
        wrapper = WordWrapper(out, width)
        for token in tokens:
            wrapper.write(token)
        wrapper.end_line()
        return out.getvalue()

    assert wrap(["The quick", " brown fox", " jumps over", " the lazy", " dog\nagain"]) == (
        "The quick brown fox \njumps over the lazy \ndog\nagain\n"
    )
    # "foxe" was already printed when "s" hit the edge: erased and printed again below.
    assert wrap(["The quick brown fo", "xes run"]) == (
        "The quick brown foxe\x1b[4D\x1b[K\nfoxes run\n"
    )
    assert wrap(["x" * 25]) == "x" * 20 + "\n" + "x" * 5 + "\n"  # longer than a line: cut
    assert wrap(["done\n"]) == "done\n"  # never a second newline

    raw = io.StringIO()
    unwrapped = WordWrapper(raw, None)
    unwrapped.write("a\x1b[31mb")
    unwrapped.end_line()
    assert raw.getvalue() == "a\x1b[31mb\n"  # piped: byte for byte (plus the newline)
    shown = io.StringIO()
    WordWrapper(shown, 80).write("a\x1b[31mb\r\n")
    assert shown.getvalue() == "a\ufffd[31mb\n"  # a terminal never runs the model's escapes


def test_ps_columns() -> None:
    from localserve.cli.output import human_until

    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert human_until(now + timedelta(minutes=4, seconds=30), now) == "4 minutes from now"
    assert human_until(now + timedelta(seconds=1), now) == "1 second from now"
    assert human_until(datetime(9999, 12, 31, tzinfo=UTC), now) == "Forever"
    assert human_until(now - timedelta(seconds=1), now) == "Stopping..."


def test_durations() -> None:
    from localserve.cli.answer import format_duration

    assert format_duration(850_000) == "850.00µs"
    assert format_duration(12_300_000) == "12.30ms"
    assert format_duration(1_520_000_000) == "1.52s"
    assert format_duration(123_400_000_000) == "2m3.4s"
    assert format_duration(15) == "15ns"


LONG_NAME = "hf.co/unsloth/gemma-3-270m-it-GGUF:Q4_K_M"  # 41 characters
ROW = (LONG_NAME, "abcdef123456", "291 MB", "100% CPU", "32768 (trained)", "4 minutes from now")
COLUMNS = ("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")


def test_a_table_in_a_pipe_cuts_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 33: in a script (no terminal, 80 columns) every value is whole; the line
    runs long instead."""
    from localserve.cli import output

    monkeypatch.setenv("COLUMNS", "80")
    output.print_table(COLUMNS, [ROW])
    header, line = capsys.readouterr().out.splitlines()
    assert header.split() == list(COLUMNS)
    assert line.split("  ")[0] == LONG_NAME
    for value in ROW:
        assert value in line
    assert len(line.rstrip()) > 80


def test_a_narrow_terminal_cuts_the_name_not_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from localserve.cli import output

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=90, color_system=None)
    monkeypatch.setattr(output, "stdout", lambda: terminal)
    output.print_table(COLUMNS, [ROW])
    line = screen.getvalue().splitlines()[1]
    assert len(line.rstrip()) <= 90
    assert LONG_NAME not in line and "…" in line.split("  ")[0]  # the name, cut
    for value in ROW[1:]:
        assert value in line  # every figure whole

"""Streaming text: UTF-8 reassembly across tokens and stop strings held back until safe."""

from __future__ import annotations

import pytest

from localserve.engine.text import StopMatcher, Utf8Stream


def test_multibyte_character_split_across_tokens() -> None:
    stream = Utf8Stream()
    data = "héllo 🦙 世界".encode()
    out = [stream.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) + stream.flush() == "héllo 🦙 世界"
    assert all("\ufffd" not in piece for piece in out)  # never half a character


def test_invalid_bytes_become_replacement_characters() -> None:
    stream = Utf8Stream()
    assert stream.feed(b"ok \xff ") == "ok \ufffd "
    assert stream.feed(b"\xf0\x9f") == ""  # unfinished: held
    assert stream.flush() == "\ufffd"  # the end came first


def feed_all(matcher: StopMatcher, pieces: list[str]) -> list[str]:
    return [matcher.feed(p) for p in pieces] + [matcher.flush()]


def test_stop_split_across_pieces_is_not_leaked() -> None:
    matcher = StopMatcher(["</answer>"])
    shown = feed_all(matcher, ["The result", " is 42</", "ans", "wer> and more"])
    assert "".join(shown) == "The result is 42"
    assert matcher.stopped
    assert all("</" not in piece for piece in shown)


def test_false_alarm_is_released() -> None:
    matcher = StopMatcher(["STOP"])
    shown = feed_all(matcher, ["ST", "O", "RY time"])
    assert shown[0] == "" and shown[1] == ""  # could still become STOP
    assert "".join(shown) == "STORY time"
    assert not matcher.stopped


def test_held_text_is_released_at_the_end() -> None:
    matcher = StopMatcher(["\n\nUser:"])
    assert "".join(feed_all(matcher, ["answer", "\n\n", "Us"])) == "answer\n\nUs"


@pytest.mark.parametrize(("stops", "matched"), [(["a", "abc"], "a"), (["bc", "abcd"], "abcd")])
def test_earliest_stop_wins(stops: list[str], matched: str) -> None:
    matcher = StopMatcher(stops)
    assert matcher.matched == ""
    assert "".join(feed_all(matcher, ["xxab", "cd"])) == "xx"  # the stop that starts first
    assert matcher.matched == matched  # which one it was (Anthropic's stop_sequence)


def test_no_stops_is_a_pass_through() -> None:
    matcher = StopMatcher([])
    assert feed_all(matcher, ["a", "b"]) == ["a", "b", ""]

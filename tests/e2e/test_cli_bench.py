"""`localserve bench`: real processes against a real daemon serving the tiny model.

Token counts are kept small so that the whole module stays quick; the numbers the
tiny model gives are meaningless as speeds, but they must still be consistent.
(tests/unit/test_bench.py has the arithmetic.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from localserve.client import bench
from tests.support.cli import cli
from tests.support.daemon import Daemon, daemon_env, free_port, stopped_afterwards

SMALL = ("--prompt-tokens", "48", "--decode-tokens", "6", "--reps", "1")


@pytest.fixture(scope="module")
def env(daemon: Daemon) -> dict[str, str]:
    """The environment of a user whose LOCALSERVE_HOST points at the test daemon."""
    return daemon_env(daemon.home, daemon.port)


def assert_one_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: "), result.stderr
    assert len(result.stderr.splitlines()) <= 2  # the message, and perhaps a hint
    assert result.stdout == ""
    for needle in needles:
        assert needle in result.stderr


def metrics(daemon: Daemon) -> dict[str, float]:
    text = httpx.get(daemon.url + "/metrics", trust_env=False, timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_table_has_a_row_per_measurement(env: dict[str, str]) -> None:
    result = cli("bench", "tiny", *SMALL, "--concurrency", "2,1", env=env)
    assert result.returncode == 0, result.stderr
    title, header, *rows = result.stdout.strip().splitlines()
    assert title.startswith("tiny: ") and "medians of 1 run(s)" in title
    assert header.split() == [
        "TEST", "STREAMS", "TOKENS", "TOK/S", "PER", "STREAM", "TOK/S", "TTFT", "P50", "TTFT", "P95",
    ]  # fmt: skip
    cells = [row.split() for row in rows]
    assert [c[:2] for c in cells] == [
        ["prefill", "1"],
        ["decode", "1"],
        ["concurrent", "1"],  # levels sorted, whatever order they were given in
        ["concurrent", "2"],
    ]
    assert cells[1][2] == "6"  # decode tokens, exactly as asked
    for row in cells[2:]:
        assert row[2] == "6"
        assert row[-1] == "ms" and row[-3] == "ms"
        assert float(row[-2]) >= float(row[-4]) > 0  # TTFT p95 >= p50


def test_json_numbers_are_consistent(daemon: Daemon, env: dict[str, str]) -> None:
    reps, decode, levels = 2, 8, (1, 3)
    before = metrics(daemon)
    result = cli(
        "bench", "tiny", "--json", "--prompt-tokens", "200", "--decode-tokens", str(decode),
        "--concurrency", ",".join(map(str, levels)), "--reps", str(reps), env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no spinner when stderr is not a terminal
    report = json.loads(result.stdout)
    after = metrics(daemon)

    assert report["model"] == "tiny" and report["reps"] == reps
    assert report["load"]["already_loaded"] == (report["load"]["seconds"] == 0)
    # Calibrated against the daemon's own count: about the tokens asked for.
    assert abs(report["prefill"]["prompt_tokens"] - 200) <= 20
    assert report["prefill"]["tokens_per_s"] > 0
    assert report["decode"] == {"tokens": decode, "tokens_per_s": report["decode"]["tokens_per_s"]}
    assert report["decode"]["tokens_per_s"] > 0
    assert [level["streams"] for level in report["concurrency"]] == list(levels)
    for level in report["concurrency"]:
        assert level["tokens_per_stream"] == decode
        assert level["aggregate_tokens_per_s"] > 0 and level["per_stream_tokens_per_s"] > 0
        assert level["ttft_p95_ms"] >= level["ttft_p50_ms"] > 0

    # The daemon generated exactly what the benchmark says it asked for: a warm-up,
    # one token per prefill, the decode stream, and every concurrent stream.
    generated = (
        after["localserve_generated_tokens_total"] - before["localserve_generated_tokens_total"]
    )
    expected = bench.WARMUP_DECODE_TOKENS + reps * (1 + decode + sum(levels) * decode)
    assert generated == expected
    # No long prompt was served from the prefix cache (each starts with its own word):
    # at most a BOS or a word shared by chance per request, far from one 200-token prompt.
    cached = (
        after["localserve_prefix_cache_tokens_total"]
        - before["localserve_prefix_cache_tokens_total"]
    )
    assert cached < 100, cached


def test_speculation_rows_drafts_on_and_off(daemon: Daemon, env: dict[str, str]) -> None:
    before = metrics(daemon)
    args = ("--concurrency", "1", "--speculation")
    # Long enough answers that the copy task repeats itself: the tiny model's greedy
    # text falls into a loop within a few dozen tokens, and its own earlier tokens
    # are then what the n-gram drafts propose.
    decode = 48
    sized = ("--prompt-tokens", "48", "--decode-tokens", str(decode), "--reps", "1")
    result = cli("bench", "tiny", *sized, *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["speculation"]
    after = metrics(daemon)
    assert [(r["task"], r["streams"]) for r in rows] == [
        ("copy", 1), ("copy", 4), ("free", 1), ("free", 4),
    ]  # fmt: skip
    for row in rows:
        assert row["on_tokens_per_s"] > 0 and row["off_tokens_per_s"] > 0
        assert row["speedup"] == pytest.approx(row["on_tokens_per_s"] / row["off_tokens_per_s"])
        assert 0 <= row["accepted"] <= row["drafted"]
    # The copy task is what drafts are for: some were drafted and kept, at 1 stream and
    # at 4 (where a sequence beside others waits for a longer match).
    for row in rows[:2]:
        assert row["accepted"] > 0, row
    # The counts are the daemon's own: its metrics saw at least these drafts (and those
    # of the other measurements, whose greedy streams draft too).
    drafted = after["localserve_draft_tokens_total"] - before["localserve_draft_tokens_total"]
    kept = (
        after["localserve_draft_accepted_tokens_total"]
        - before["localserve_draft_accepted_tokens_total"]
    )
    assert drafted >= sum(r["drafted"] for r in rows) and kept >= sum(r["accepted"] for r in rows)
    # Every speculation stream ran twice (drafts on, then off) for ``decode`` tokens.
    generated = (
        after["localserve_generated_tokens_total"] - before["localserve_generated_tokens_total"]
    )
    streams = 1 + 4
    expected = bench.WARMUP_DECODE_TOKENS + (1 + decode + 1 * decode) + 2 * 2 * streams * decode
    assert generated == expected

    table = cli("bench", "tiny", *SMALL, *args, env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("speculative decoding"))
    assert lines[start + 1].split() == [
        "TASK",
        "STREAMS",
        "DRAFTS",
        "OFF",
        "DRAFTS",
        "ON",
        "SPEEDUP",
        "KEPT",
    ]
    assert [line.split()[:2] for line in lines[start + 2 :]] == [
        ["copy", "1"], ["copy", "4"], ["free", "1"], ["free", "4"],
    ]  # fmt: skip


def test_prompt_longer_than_the_context_is_refused(env: dict[str, str]) -> None:
    # The tiny model's context is 2048 tokens.
    result = cli("bench", "tiny", "--prompt-tokens", "5000", "--reps", "1", env=env)
    assert_one_error(result, 2, "--prompt-tokens 5000 does not fit", "2048")
    result = cli("bench", "tiny", "--decode-tokens", "4000", "--reps", "1", env=env)
    assert_one_error(result, 2, "--decode-tokens 4000 does not fit")


def test_unknown_model_is_not_found(env: dict[str, str]) -> None:
    assert_one_error(cli("bench", "nothere", *SMALL, env=env), 3, "not found", "localserve list")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--concurrency", "0"], "between 1 and 256, got 0"),
        (["--concurrency", "1,x"], "positive integers separated by commas"),
        (["--concurrency", ""], "positive integers separated by commas"),
        (["--concurrency", "1,-4"], "got -4"),
        (["--concurrency", "1000"], "between 1 and 256"),
        (["--reps", "0"], "--reps must be at least 1"),
        (["--prompt-tokens", "0"], "--prompt-tokens must be at least 1"),
        (["--decode-tokens", "1"], "--decode-tokens must be at least 2"),
    ],
)
def test_bad_options_fail_before_any_request(args: list[str], needle: str, tmp_path: Path) -> None:
    # No daemon at this address: a request (or an auto-start) would show in the result.
    nowhere = daemon_env(tmp_path / "home", free_port())
    assert_one_error(cli("bench", "tiny", *args, env=nowhere), 2, needle)
    assert not (tmp_path / "home" / "state").exists()  # no daemon was started


def test_bad_model_name_fails_before_any_request(tmp_path: Path) -> None:
    nowhere = daemon_env(tmp_path / "home", free_port())
    assert_one_error(cli("bench", "../etc/x", env=nowhere), 2, "invalid model name")
    assert not (tmp_path / "home" / "state").exists()


def test_ctrl_c_stops_the_streams_and_exits_130(daemon: Daemon, env: dict[str, str]) -> None:
    # Long enough that it is surely still running when interrupted.
    args = ("--prompt-tokens", "16", "--decode-tokens", "1800", "--concurrency", "4", "--reps", "50")  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "localserve", "bench", "tiny", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + 60
        while metrics(daemon)["localserve_busy_slots"] < 1:  # a stream is generating
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the benchmark never started generating"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "bench interrupted; its requests were cancelled"
    assert "Traceback" not in stderr
    assert stdout == ""
    # The daemon let go of the streams (it would take far longer to finish 50 reps),
    # and it still answers.
    deadline = time.monotonic() + 30
    while metrics(daemon)["localserve_busy_slots"] > 0:
        assert time.monotonic() < deadline, "the interrupted streams kept their slots"
        time.sleep(0.05)
    again = cli("bench", "tiny", *SMALL, "--concurrency", "1", "--json", env=env)
    assert again.returncode == 0, again.stderr


def test_starts_the_daemon_when_none_answers(tmp_path: Path, tiny_gguf_path: Path) -> None:
    home = tmp_path / "home"
    user = daemon_env(home, free_port())
    assert cli("import", str(tiny_gguf_path), "tiny", env=user).returncode == 0
    with stopped_afterwards(home):
        result = cli("bench", "tiny", *SMALL, "--concurrency", "1", "--json", env=user)
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines() == ["starting localserve daemon..."]
        report = json.loads(result.stdout)
        assert report["load"]["already_loaded"] is False  # a fresh daemon loaded it
        assert report["load"]["seconds"] > 0
        assert cli("stop", env=user).returncode == 0


def sample(ttft_s: float, end_s: float, tokens: int, eval_s: float) -> bench.StreamSample:
    return bench.StreamSample(
        ttft_s=ttft_s,
        end_s=end_s,
        prompt_tokens=10,
        prompt_eval_ns=1_000_000,
        tokens=tokens,
        eval_ns=round(eval_s * 1e9),
    )

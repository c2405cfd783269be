"""`localserve run MODEL` on a terminal: the interactive chat, driven through a pseudo-terminal.

The chat runs as a real process whose stdin, stdout and stderr are the slave side of a
pty that is also its controlling terminal, so Ctrl+C typed as ``\\x03`` reaches it the
way a person's does: prompt_toolkit reads it as a key at the prompt, and the terminal
driver turns it into SIGINT while an answer streams. A reader thread collects what the
chat draws; ``expect`` waits for text with the escape sequences stripped.

The daemon serves a tiny model with a 64k context and greedy sampling never picks its
end token, so ``num_predict 100000`` really is a long answer: a stopped answer must be
the chat's doing (and the daemon's slot must come free soon after).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import Daemon, daemon_env, running_daemon
from tests.support.tiny_gguf import write_tiny_gguf

ANSI = re.compile(
    r"\x1b\[[0-9;?<=>]*[ -/]*[@-~]"  # CSI: cursor moves, colours, erases, modes
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: window titles
    r"|\x1b[()][0-9A-Za-z]|\x1b[=>78]"  # charsets, keypad modes, save/restore cursor
    r"|\r"
)
# An empty prompt shows its placeholder: that marks a fresh prompt, while a bare ">>> "
# also appears each time prompt_toolkit redraws the line being typed.
FRESH_PROMPT = re.escape(">>> Send a message (/? for help)")


def plain(raw: str) -> str:
    return ANSI.sub("", raw)


class Terminal:
    """A process on a pseudo-terminal: type into it, wait for what it prints."""

    def __init__(self, args: list[str], env: dict[str, str], cols: int = 100) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
        self.process = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            # After setsid: make the pty the controlling terminal, so ^C becomes SIGINT.
            # (Safe with threads around: one ioctl, no locks, no allocation to speak of.)
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # noqa: PLW1509
        )
        os.close(slave)
        self._raw = bytearray()
        self._lock = threading.Lock()
        self.position = 0  # expect() searches from here
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            with self._lock:
                self._raw += data

    @property
    def text(self) -> str:
        with self._lock:
            return plain(self._raw.decode(errors="replace"))

    def send(self, data: str) -> None:
        os.write(self.master, data.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r")  # Enter in raw mode

    def expect(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait for ``pattern`` (a regex) after ``position``; move past it."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            text = self.text
            match = regex.search(text, self.position)
            if match:
                self.position = match.end()
                return match
            if time.monotonic() > deadline or (
                self.process.poll() is not None and not self._reader.is_alive()
            ):
                raise AssertionError(
                    f"{pattern!r} did not appear; the terminal shows:\n{text[-3000:]}"
                )
            time.sleep(0.02)

    def expect_prompt(self, timeout: float = 30.0) -> str:
        """Wait for the next fresh ``>>> `` prompt; returns what came before it."""
        start = self.position
        match = self.expect(FRESH_PROMPT, timeout)
        return self.text[start : match.start()]

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        os.close(self.master)
        self._reader.join(5)


@pytest.fixture(scope="module")
def long_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("chat-daemon") / "localserve-home"
    model = write_tiny_gguf(home.parent / "tiny-long-F32.gguf", n_ctx_train=65536)
    env = {"LOCALSERVE_CONTEXT_LENGTH": "65536", "LOCALSERVE_NUM_PARALLEL": "1"}
    with running_daemon(home, model, env=env) as started:
        yield started


@pytest.fixture
def chat(long_daemon: Daemon, tmp_path: Path) -> Iterator[Terminal]:
    env = daemon_env(long_daemon.home, long_daemon.port)
    env.update(
        {
            "TERM": "xterm-256color",
            "PROMPT_TOOLKIT_NO_CPR": "1",  # no cursor-position queries to answer
            "COLUMNS": "100",
            "LINES": "40",
        }
    )
    terminal = Terminal([sys.executable, "-m", "localserve", "run", "tiny", "--verbose"], env)
    try:
        yield terminal
    finally:
        terminal.close()


def health(daemon: Daemon) -> dict[str, int]:
    body: dict[str, int] = httpx.get(daemon.url + "/health", timeout=5, trust_env=False).json()
    return body


def test_prompt_answer_multiline_commands_and_bye(chat: Terminal, long_daemon: Daemon) -> None:
    chat.expect_prompt()
    chat.line("/set parameter num_predict 5")
    chat.expect(r"Set parameter 'num_predict' to '5'")
    chat.expect_prompt()
    chat.line("/set parameter temperature 0")
    chat.expect_prompt()

    chat.line("hello there")
    answer = chat.expect_prompt()
    assert "eval count:           5 token(s)" in answer  # streamed, then --verbose stats
    assert "eval rate:" in answer

    # A multi-line message is one message: one answer, then the prompt again.
    chat.line('"""')
    chat.expect(r"\.\.\. ")
    chat.line("first line")
    chat.expect(r"\.\.\. ")
    chat.line('second line"""')
    answer = chat.expect_prompt()
    assert answer.count("\neval count:") == 1
    # After the line that closed the block (its last echo: a slow terminal may repaint
    # the line being typed), no continuation prompt: the message was sent.
    assert "... " not in answer.rsplit('second line"""', 1)[1]

    # A multi-line system message, as in Ollama: the command takes the whole block.
    chat.line('/set system """You are terse.')
    chat.expect(r"\.\.\. ")
    chat.line('Answer in one word."""')
    chat.expect(r"Set system message\.")
    chat.expect_prompt()
    chat.line("/show system")
    assert re.search(r"You are terse\.\r?\nAnswer in one word\.", chat.expect_prompt())

    chat.line("/show info")
    assert "architecture        llama" in chat.expect_prompt()
    chat.line("/show parameters")
    shown = chat.expect_prompt()
    assert "num_predict" in shown and "temperature" in shown
    chat.line("/nonsense")
    assert "Unknown command '/nonsense'. Type /? for help" in chat.expect_prompt()
    chat.line("/set parameter temprature 1")
    assert "did you mean temperature?" in chat.expect_prompt()
    chat.line("/?")
    assert "/bye" in chat.expect_prompt()
    chat.line("/clear")
    assert "Cleared session context" in chat.expect_prompt()

    chat.line("/bye")
    assert chat.process.wait(30) == 0
    history = long_daemon.home / "state" / "history"
    assert "hello there" in history.read_text()  # kept for the next session
    assert stat.S_IMODE(history.stat().st_mode) == 0o600  # what was typed is private


def test_ctrl_c_stops_the_answer_and_frees_the_slot(chat: Terminal, long_daemon: Daemon) -> None:
    chat.expect_prompt()
    chat.line("/set parameter num_predict 100000")
    chat.expect_prompt()
    chat.line("/set parameter temperature 0")
    chat.expect_prompt()

    chat.line("tell me a very long story")
    chat.expect(r"tell me a very long story")
    start = len(chat.text)
    deadline = time.monotonic() + 30
    while len(chat.text) < start + 300:  # tokens are streaming
        assert time.monotonic() < deadline, chat.text[-2000:]
        time.sleep(0.05)
    assert health(long_daemon)["busy_slots"] == 1

    chat.send("\x03")
    interrupted_at = time.monotonic()
    chat.expect_prompt(timeout=10)
    assert chat.process.poll() is None  # still chatting
    # The client closed the stream; the daemon cancels the generation and frees the slot.
    while health(long_daemon)["busy_slots"] != 0:
        assert time.monotonic() - interrupted_at < 15, "the slot is still busy"
        time.sleep(0.05)
    assert [m["name"] for m in httpx.get(long_daemon.url + "/api/ps").json()["models"]] == [
        "tiny:latest"
    ]

    # The chat goes on (same connection pool, same conversation).
    chat.line("/set parameter num_predict 3")
    chat.expect_prompt()
    chat.line("and now?")
    assert "eval count:           3 token(s)" in chat.expect_prompt()

    chat.send("\x03")  # Ctrl+C at the prompt only says how to leave
    chat.expect(r"Use Ctrl \+ d or /bye to exit\.")
    chat.expect_prompt()
    chat.send("\x04")  # Ctrl+D leaves
    assert chat.process.wait(30) == 0

"""Running the `localserve` command as a user would: a real process, real output."""

from __future__ import annotations

import os
import subprocess
import sys


def cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``localserve ARGS`` in this environment (plus ``env``), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "localserve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr  # one error line...
    assert errors[0] >= len(lines) - 2  # ...at the end, followed at most by its hint
    for needle in needles:
        assert needle in result.stderr

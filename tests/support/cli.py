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

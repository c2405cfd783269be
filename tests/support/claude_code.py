"""Claude Code, non-interactive, against a local server: one ``claude -p`` task and its
JSON result (tests/e2e/test_claude_code.py, benchmarks/claude_code.py).

Claude Code comes from npm: .ci/run installs it under .cache/agents (the version pinned
there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLAUDE = (
    Path(__file__).resolve().parents[2] / ".cache" / "agents" / "node_modules" / ".bin" / "claude"
)


def claude(
    url: str,
    home: Path,
    prompt: str,
    *,
    model: str,
    timeout: float,
    launch_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One ``claude -p PROMPT`` task against ``url`` with its own HOME (its settings,
    sessions and caches), every model it may ask for named ``model``; its JSON result.

    By hand (the default), with the variables a user would set; with ``launch_env``
    (the LOCALSERVE_* variables that point at the daemon), started by ``localserve
    launch claude``, which sets them itself (cli/agents.py) and finds ``claude`` on PATH.
    """
    work = home / "project"
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env.update(
        {
            "HOME": str(home),
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "64",
            "API_TIMEOUT_MS": str(int(timeout * 1000)),
            # A cold read of its ~20k-token prompt on a slow machine may send no event
            # for longer than Claude Code's 5 minutes (docs/agents.md): no retry for it.
            "CLAUDE_STREAM_IDLE_TIMEOUT_MS": str(int(timeout * 1000)),
        }
    )
    task = ["-p", prompt, "--output-format", "json", "--max-turns", "2"]
    if launch_env is None:
        tiers = ("MODEL", "SMALL_FAST_MODEL", "DEFAULT_HAIKU_MODEL", "DEFAULT_SONNET_MODEL")
        env.update({f"ANTHROPIC_{tier}": model for tier in (*tiers, "DEFAULT_OPUS_MODEL")})
        env.update(
            {
                "ANTHROPIC_BASE_URL": url,
                "ANTHROPIC_AUTH_TOKEN": "unused",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "DISABLE_AUTOUPDATER": "1",
            }
        )
        command = [str(CLAUDE), *task]
    else:
        env.update(launch_env)
        env["PATH"] = f"{CLAUDE.parent}{os.pathsep}{env.get('PATH', '')}"
        launch = [sys.executable, "-m", "localserve", "launch", "claude", "--model", model]
        command = [*launch, "--", *task]
    done = subprocess.run(
        command,
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.stdout.strip(), done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result

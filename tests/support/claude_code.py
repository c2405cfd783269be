"""Claude Code, non-interactive, against a local server: one ``claude -p`` task and its
JSON result (tests/e2e/test_claude_code.py, benchmarks/claude_code.py).

Claude Code comes from npm: .ci/run installs it under .cache/agents (the version pinned
there)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

CLAUDE = (
    Path(__file__).resolve().parents[2] / ".cache" / "agents" / "node_modules" / ".bin" / "claude"
)


def claude(url: str, home: Path, prompt: str, *, model: str, timeout: float) -> dict[str, Any]:
    """One ``claude -p PROMPT`` task against ``url`` with its own HOME (its settings,
    sessions and caches), every model it may ask for named ``model``; its JSON result."""
    work = home / "project"
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    tiers = ("MODEL", "SMALL_FAST_MODEL", "DEFAULT_HAIKU_MODEL", "DEFAULT_SONNET_MODEL")
    env.update({f"ANTHROPIC_{tier}": model for tier in (*tiers, "DEFAULT_OPUS_MODEL")})
    env.update(
        {
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": url,
            "ANTHROPIC_AUTH_TOKEN": "unused",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "64",
            "API_TIMEOUT_MS": str(int(timeout * 1000)),
        }
    )
    done = subprocess.run(
        [str(CLAUDE), "-p", prompt, "--output-format", "json", "--max-turns", "2"],
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

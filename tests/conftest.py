"""Suite-wide fixtures, and the tiers. No test touches the real home: LOCALSERVE_HOME and
HF_HOME point at a temp dir for every test.

The folder a test lives in is its tier, and its marker (``-m unit`` and the like):

- ``tests/unit``: pure Python in this process: fakes (a scripted runner, a fake Hugging
  Face server on 127.0.0.1, the ASGI app over httpx), no llama.cpp model loaded and no
  daemon. The fast tier: ``python -m pytest tests/unit``, under a minute.
- ``tests/engine``: real llama.cpp, in this process or in a runner process, without a
  daemon: the batching loop, prompts, grammars, media, speculation, the runner.
- ``tests/e2e``: a real daemon on a free port, the CLI as a user runs it, the official
  clients, a browser, load, faults and fuzzing.

Fixtures more than one tier uses live in tests/support (the plugins below); a test
module's own fixture of the same name wins over them.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.tiny_gguf",
    "tests.support.tiny_reranker",
    "tests.support.fakehub",
    "tests.support.daemon",
    "tests.support.stores",
    "tests.support.vision",
]


TIERS = ("unit", "engine", "e2e")
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(
                f"{item.nodeid}: a test lives in tests/unit, tests/engine or tests/e2e"
            )
        item.add_marker(getattr(pytest.mark, tier))


def pytest_configure(config: pytest.Config) -> None:
    # Started in the background by a shell without job control (`.ci/run &`), pytest
    # and every process it starts would ignore SIGINT, and the tests of Ctrl+C would
    # fail. A handler, unlike an ignored signal, is reset to the default at exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "localserve-home"
    monkeypatch.setenv("LOCALSERVE_HOME", str(home))
    monkeypatch.delenv("LOCALSERVE_MODELS", raising=False)
    monkeypatch.delenv("LOCALSERVE_HOST", raising=False)
    monkeypatch.delenv("LOCALSERVE_DEBUG", raising=False)
    monkeypatch.delenv("LOCALSERVE_KV_CACHE_TYPE", raising=False)
    monkeypatch.delenv("LOCALSERVE_FLASH_ATTENTION", raising=False)
    monkeypatch.delenv("LOCALSERVE_RPC_WORKERS", raising=False)
    monkeypatch.delenv("LOCALSERVE_SCHED_SPREAD", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return home

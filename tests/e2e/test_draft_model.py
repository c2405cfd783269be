"""Speculative decoding with a draft model through the daemon: LOCALSERVE_SPECULATIVE
naming a model in the store. (tests/engine/test_draft_model.py: the engine itself.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.daemon import add_model, running_daemon
from tests.support.tiny_gguf import write_tiny_gguf


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("draft")
    return {
        "target": write_tiny_gguf(folder / "target.gguf"),
        # Other weights, the same vocabulary: a draft model that guesses worse.
        "other": write_tiny_gguf(folder / "other.gguf", seed=7, n_layer=1),
        # Three more tokens at the end: still compatible, as llama.cpp's rule allows.
        "fim": write_tiny_gguf(folder / "fim.gguf", fim=True),
    }


def test_the_daemon_loads_a_draft_model_by_name(
    tmp_path: Path, paths: dict[str, Path], gemma_gguf_path: Path
) -> None:
    home = tmp_path / "home"
    # p_min 0: the random-weight draft model is never sure of anything.
    env = {"LOCALSERVE_SPECULATIVE": "twin", "LOCALSERVE_DRAFT_P_MIN": "0"}
    with (
        running_daemon(home, paths["target"], env=env) as daemon,
        httpx.Client(base_url=daemon.url, timeout=120, trust_env=False) as client,
    ):
        body = {
            "model": "tiny",
            "prompt": "one two three four",
            "stream": False,
            "options": {"temperature": 0, "num_predict": 40, "ignore_eos": True},
        }
        missing = client.post("/api/generate", json=body)
        assert missing.status_code == 400
        assert "the draft model 'twin' is not in the store" in missing.json()["error"]

        add_model(home, paths["target"], "twin")
        answer = client.post("/api/generate", json=body).json()
        assert answer["eval_count"] == 40
        assert answer["draft_count"] > 0
        assert answer["draft_accepted_count"] == answer["draft_count"]
        plain = client.post(
            "/api/generate", json={**body, "options": {**body["options"], "speculative": False}}
        ).json()
        assert plain["response"] == answer["response"]
        assert "draft_count" not in plain  # present only when something was drafted

        add_model(home, gemma_gguf_path, "gemma")
    with (
        running_daemon(home, None, env={"LOCALSERVE_SPECULATIVE": "gemma"}) as daemon,
        httpx.Client(base_url=daemon.url, timeout=120, trust_env=False) as client,
    ):
        refused = client.post("/api/generate", json=body)
        assert refused.status_code == 400
        assert "does not share the model's vocabulary" in refused.json()["error"]

"""`create` and `/api/create` through a real daemon: settings applied to requests (seen
through prompt_eval_count and eval_count on the tiny model), `show` of what was created,
adapters, blob uploads, a create FROM an hf.co name, the CLI's errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore
from tests.support.daemon import Daemon, daemon_env, running_daemon
from tests.support.fakehub import FakeHub
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_lora import write_tiny_lora

GREEDY = {"temperature": 0}

ONLY_LAST = "{{ messages[-1]['content'] }}"


@pytest.fixture
def store(isolated_home: Path, tiny_gguf_path: Path) -> ModelStore:
    models = ModelStore(isolated_home / "models")
    for _ in import_gguf(models, tiny_gguf_path, "tiny"):
        pass
    return models


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_path: Path) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("create") / "localserve-home"
    # Debug: the runners log each prompt (Daemon.logged_prompt).
    with running_daemon(home, tiny_gguf_path, env={"LOCALSERVE_DEBUG": "1"}) as started:
        yield started


@pytest.fixture
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    with ollama.Client(host=daemon.url, timeout=120) as client:
        yield client


def cli(daemon: Daemon, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localserve", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env={**daemon_env(daemon.home, daemon.port), "COLUMNS": "200"},
        check=False,
    )


def chat(
    client: ollama.Client, model: str, messages: list[dict[str, str]], **options: object
) -> ollama.ChatResponse:
    return client.chat(model, messages, options={**GREEDY, **options})


def test_parameters_apply_and_requests_override_them(
    client: ollama.Client, daemon: Daemon, tmp_path: Path
) -> None:
    (tmp_path / "Modelfile").write_text(
        "FROM tiny\nPARAMETER num_predict 3\nPARAMETER ignore_eos true\n"
    )
    made = cli(daemon, "create", "three", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    hello = [{"role": "user", "content": "hello"}]
    assert chat(client, "three", hello).eval_count == 3
    assert chat(client, "three", hello, num_predict=5).eval_count == 5
    assert client.generate("three", "hi", options=GREEDY).eval_count == 3


def test_system_prompt_messages_and_template(
    client: ollama.Client, daemon: Daemon, tmp_path: Path
) -> None:
    modelfile = tmp_path / "custom.modelfile"
    modelfile.write_text(
        "FROM tiny\nPARAMETER num_predict 1\n"
        'SYSTEM """You are a very careful assistant who answers in rhymes."""\n'
        "MESSAGE user What is two plus two?\nMESSAGE assistant Four, I implore.\n"
    )
    assert cli(daemon, "create", "rhymes", "-f", str(modelfile), cwd=tmp_path).returncode == 0
    (tmp_path / "Modelfile").write_text(f'FROM tiny\nTEMPLATE """{ONLY_LAST}"""\n')
    assert cli(daemon, "create", "last-only", cwd=tmp_path).returncode == 0

    def turn(role: str, text: str) -> str:
        return f"<|im_start|>{role}\n{text}<|im_end|>\n"

    def prompt(model: str, messages: list[dict[str, str]], marker: str) -> str:
        """What the model read for ``messages``, whose last one gets ``marker``."""
        last = {**messages[-1], "content": f"{messages[-1]['content']} {marker}"}
        chat(client, model, [*messages[:-1], last], num_predict=1)
        return daemon.logged_prompt(marker)

    system = "You are a very careful assistant who answers in rhymes."
    examples = turn("user", "What is two plus two?") + turn("assistant", "Four, I implore.")
    answer = "<|im_start|>assistant\n"
    question = [{"role": "user", "content": "Why?"}]
    assert prompt("tiny", question, "(q1)") == "<s>" + turn("user", "Why? (q1)") + answer
    # The model's system prompt, then its example turns, then the conversation.
    assert (
        prompt("rhymes", question, "(q2)")
        == "<s>" + turn("system", system) + examples + turn("user", "Why? (q2)") + answer
    )
    # An explicit system prompt wins over the model's (but the examples stay).
    mine = [{"role": "system", "content": "Be brief."}, *question]
    assert (
        prompt("rhymes", mine, "(q3)")
        == "<s>" + turn("system", "Be brief.") + examples + turn("user", "Why? (q3)") + answer
    )
    # /api/generate uses the model's system prompt too (the examples are for chats).
    client.generate("rhymes", "Why? (q4)", options=GREEDY)
    assert (
        daemon.logged_prompt("(q4)")
        == "<s>" + turn("system", system) + turn("user", "Why? (q4)") + answer
    )
    # The template renders only the last message: the history is not in the prompt.
    history = [
        {"role": "user", "content": "one two three four five six"},
        {"role": "assistant", "content": "seven eight"},
        *question,
    ]
    assert prompt("last-only", history, "(q5)") == "<s>Why? (q5)"


def test_show_what_was_created(client: ollama.Client, daemon: Daemon, tmp_path: Path) -> None:
    text = 'FROM tiny\nPARAMETER temperature 0.3\nPARAMETER stop "END"\nSYSTEM """Be kind."""\nLICENSE MIT\n'
    (tmp_path / "Modelfile").write_text(text)
    assert cli(daemon, "create", "kind", cwd=tmp_path).returncode == 0
    shown = client.show("kind")
    assert shown.modelfile is not None and 'SYSTEM """Be kind."""' in shown.modelfile
    # Ollama's wire has "system"; the client's model leaves it out.
    raw = httpx.post(daemon.url + "/api/show", json={"model": "kind"}).json()
    assert raw["system"] == "Be kind." and raw["details"]["parent_model"] == "tiny:latest"
    assert (
        shown.parameters is not None
        and "temperature" in shown.parameters
        and '"END"' in shown.parameters
    )
    assert shown.modelfile is not None and "FROM tiny:latest" in shown.modelfile
    assert shown.license == "MIT"
    assert cli(daemon, "show", "kind", "--system", cwd=tmp_path).stdout.strip() == "Be kind."
    params = cli(daemon, "show", "kind", "--parameters", cwd=tmp_path).stdout
    assert "temperature" in params and "stop" in params
    # show --modelfile recreates the model.
    written = cli(daemon, "show", "kind", "--modelfile", cwd=tmp_path).stdout
    (tmp_path / "again").write_text(written)
    assert (
        cli(daemon, "create", "kind-again", "-f", str(tmp_path / "again"), cwd=tmp_path).returncode
        == 0
    )
    again = client.show("kind-again")
    assert (again.parameters, again.license) == (shown.parameters, shown.license)
    assert again.modelfile is not None and 'SYSTEM """Be kind."""' in again.modelfile


def test_cli_errors_name_the_line(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM tiny\nPARAMETER temprature 0.1\n")
    result = cli(daemon, "create", "typo", cwd=tmp_path)
    assert result.returncode != 0
    assert "line 2" in result.stderr and "temprature" in result.stderr
    assert "Traceback" not in result.stderr
    missing = cli(daemon, "create", "nofile", "-f", "nowhere/Modelfile", cwd=tmp_path)
    assert missing.returncode != 0 and "cannot read the Modelfile" in missing.stderr


def test_ollama_client_create_and_api_errors(client: ollama.Client, daemon: Daemon) -> None:
    statuses = [
        p.status
        for p in client.create(
            "via-api",
            from_="tiny",
            system="You are an API.",
            parameters={"num_predict": 2, "stop": ["END"]},
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            stream=True,
        )
    ]
    assert statuses[-1] == "success"
    shown = client.show("via-api")
    assert shown.parameters and "num_predict" in shown.parameters
    assert shown.modelfile and "You are an API." in shown.modelfile
    assert client.generate("via-api", "x", options=GREEDY).eval_count <= 2
    for body, status, needle in [
        ({"model": "bad", "from": "tiny", "parameters": {"temprature": 1}}, 400, "temprature"),
        ({"model": "bad", "from": "tiny", "template": "{{ .Prompt }}"}, 400, "Go template"),
        ({"model": "bad", "from": "no-such-model"}, 404, "no-such-model"),
        ({"model": "bad"}, 400, '"from"'),
        ({"model": "bad", "files": {"x.gguf": "sha256:" + "0" * 64}}, 400, "upload it first"),
    ]:
        response = httpx.post(daemon.url + "/api/create", json=body, timeout=60)
        assert response.status_code == status, (body, response.text)
        assert needle in response.json()["error"]
    assert "bad" not in [m.model for m in client.list().models]


def test_upload_a_blob_then_create_from_it(
    client: ollama.Client, daemon: Daemon, tmp_path: Path
) -> None:
    gguf = write_tiny_gguf(tmp_path / "uploaded.gguf", seed=11)
    data = gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.head(f"{daemon.url}/api/blobs/{digest}").status_code == 404
    wrong = httpx.post(f"{daemon.url}/api/blobs/sha256:{'1' * 64}", content=data)
    assert wrong.status_code == 400 and "sha256" in wrong.json()["error"]
    assert client.create_blob(gguf) == digest  # the client's own upload
    assert httpx.head(f"{daemon.url}/api/blobs/{digest}").status_code == 200
    for _ in client.create("uploaded", files={"uploaded.gguf": digest}, stream=True):
        pass
    assert client.generate("uploaded", "hi", options={"num_predict": 2}).eval_count == 2


def test_an_adapter_changes_greedy_output(
    client: ollama.Client, daemon: Daemon, tmp_path: Path
) -> None:
    write_tiny_lora(tmp_path / "lora.gguf", std=0.5)
    (tmp_path / "Modelfile").write_text("FROM tiny\nADAPTER ./lora.gguf\n")
    made = cli(daemon, "create", "tuned", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    options = {"temperature": 0, "num_predict": 12, "ignore_eos": True}
    prompts = ["Once upon a time", "The capital of", "1, 2, 3,"]
    base = [client.generate("tiny", p, raw=True, options=options).response for p in prompts]
    tuned = [client.generate("tuned", p, raw=True, options=options).response for p in prompts]
    assert base != tuned
    ps = {m.model: m.size for m in client.ps().models}
    assert ps["tuned:latest"] > ps["tiny:latest"]  # the plan counts the adapter


def test_an_adapter_for_another_base_is_refused_at_create(daemon: Daemon, tmp_path: Path) -> None:
    write_tiny_lora(tmp_path / "wide.gguf", n_embd=128)
    (tmp_path / "Modelfile").write_text("FROM tiny\nADAPTER ./wide.gguf\n")
    before = sorted(p.name for p in (daemon.home / "models" / "blobs").iterdir())
    result = cli(daemon, "create", "mismatched", cwd=tmp_path)
    assert result.returncode != 0
    assert "shape" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in (daemon.home / "models" / "blobs").iterdir()) == before


def test_ollama_client_create_with_an_uploaded_adapter(
    client: ollama.Client, tmp_path: Path
) -> None:
    lora = write_tiny_lora(tmp_path / "lora.gguf", seed=4, std=0.5)
    digest = client.create_blob(lora)
    statuses = [
        p.status
        for p in client.create(
            "tuned-api", from_="tiny", adapters={"lora.gguf": digest}, stream=True
        )
    ]
    assert statuses[-1] == "success"
    options = {"temperature": 0, "num_predict": 12, "ignore_eos": True}
    assert (
        client.generate("tuned-api", "Once upon a time", raw=True, options=options).response
        != client.generate("tiny", "Once upon a time", raw=True, options=options).response
    )


def test_from_a_hub_name_pulls_it_first(
    daemon: Daemon, fake_hub: FakeHub, tiny_gguf_path: Path, tmp_path: Path
) -> None:
    fake_hub.add_repo("tester/base-GGUF", {"base-Q4_K_M.gguf": tiny_gguf_path})
    (tmp_path / "Modelfile").write_text("FROM hf.co/tester/base-GGUF\nSYSTEM From the hub.\n")
    env = {**daemon_env(daemon.home, daemon.port), "HF_ENDPOINT": fake_hub.url}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-m", "localserve", "create", "hubbed"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pulling manifest" in result.stderr
    store = ModelStore(daemon.home / "models")
    _, base = store.get("hf.co/tester/base-GGUF")
    _, derived = store.get("hubbed")
    assert derived.files == base.files
    assert (derived.base or "").startswith("hf.co/tester/base-GGUF")

"""Tokens and templates against a real daemon: the tiny model (ChatML template,
byte-fallback vocabulary) and Gemma 3 270M (a real tokenizer of 262k pieces).

The judges: the engine itself (the tokens of a text, or of the prompt /apply-template
shows, are as many as the prompt a generation or a chat reports having read), and
llama-server built from the same llama.cpp (the same ids and pieces from its
/tokenize, the same text from its /detokenize and /apply-template). llama-server is
looked for at LLAMA_SERVER, else where benchmarks/peers.py builds it. Without it (CI
does not build it: ten minutes of compiling), the comparisons use its answers recorded
in golden/llama_server_tokens.json; with it, they compare with the live server, and
LOCALSERVE_RECORD_GOLDEN=1 rewrites that file from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemon import (
    REPO_ROOT,
    Daemon,
    add_model,
    add_tool_models,
    free_port,
    running_daemon,
)

TEXTS = [
    "Hello world",
    "Ünïcödé, 日本語 and an emoji 😀!",
    "  leading spaces\nand\ttabs  ",
    "<start_of_turn>user\nhi<end_of_turn>",  # Gemma's control tokens, written as text
    "<|im_start|>user",  # ChatML's
]
MODELS = ["tiny", "gemma"]
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2? Ünïcödé 😀"},
]


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf_path: Path, gemma_gguf_path: Path
) -> Iterator[Daemon]:
    """One slot per model: a tokenize answered while a generation holds it took none."""
    home = tmp_path_factory.mktemp("tokens") / "localserve-home"
    env = {"LOCALSERVE_NUM_PARALLEL": "1"}
    with running_daemon(home, tiny_gguf_path, env=env) as started:
        add_model(home, gemma_gguf_path, "gemma")
        add_tool_models(home, tmp_path_factory.mktemp("tool-models"))
        yield started


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.url, timeout=300, trust_env=False) as c:
        yield c


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    answer = client.post(path, json=body)
    assert answer.status_code == 200, f"{path}: {answer.text}"
    return answer.json()


def piece_bytes(piece: str | list[int]) -> bytes:
    return piece.encode() if isinstance(piece, str) else bytes(piece)


@pytest.mark.parametrize("model", MODELS)
def test_tokens_round_trip_in_both_shapes(client: httpx.Client, model: str) -> None:
    for text in TEXTS:
        ids = post(client, "/tokenize", {"model": model, "content": text})["tokens"]
        assert ids and all(isinstance(i, int) for i in ids)
        assert post(client, "/api/tokenize", {"model": model, "content": text}) == {
            "model": model,
            "tokens": ids,
        }
        pieces = post(client, "/tokenize", {"model": model, "content": text, "with_pieces": True})
        assert [p["id"] for p in pieces["tokens"]] == ids
        assert b"".join(piece_bytes(p["piece"]) for p in pieces["tokens"]) == text.encode()
        assert post(client, "/detokenize", {"model": model, "tokens": ids}) == {"content": text}
        back = post(client, "/api/detokenize", {"model": model, "tokens": ids})
        assert back == {"model": model, "content": text}
    with_bos = post(client, "/tokenize", {"model": model, "content": "x", "add_special": True})
    without = post(client, "/tokenize", {"model": model, "content": "x"})
    assert with_bos["tokens"][1:] == without["tokens"] and len(with_bos["tokens"]) == 2


def test_pieces_that_are_not_utf8_come_as_bytes(client: httpx.Client) -> None:
    """The tiny vocabulary spells an emoji with four byte tokens: none is UTF-8 alone."""
    answer = post(client, "/tokenize", {"model": "tiny", "content": "😀", "with_pieces": True})
    pieces = [p["piece"] for p in answer["tokens"]]
    assert pieces == [[b] for b in "😀".encode()][-len(pieces) :]
    assert all(isinstance(p, list) for p in pieces)
    # Part of a character alone detokenizes to replacement characters, not an error.
    half = [p["id"] for p in answer["tokens"]][-2:]
    content = post(client, "/detokenize", {"model": "tiny", "tokens": half})["content"]
    assert content and set(content) == {"\ufffd"}


def test_control_tokens_are_read_unless_asked_not_to(client: httpx.Client) -> None:
    text = "<start_of_turn>"
    read = post(client, "/tokenize", {"model": "gemma", "content": text})["tokens"]
    spelled = post(client, "/tokenize", {"model": "gemma", "content": text, "parse_special": False})
    assert len(read) == 1 and len(spelled["tokens"]) > 1
    mixed = post(client, "/tokenize", {"model": "gemma", "content": ["a", read[0], "b"]})
    a, b = (post(client, "/tokenize", {"model": "gemma", "content": c})["tokens"] for c in "ab")
    assert mixed["tokens"] == a + read + b


@pytest.mark.parametrize("model", MODELS)
def test_tokens_are_what_the_engine_reads(client: httpx.Client, model: str) -> None:
    """The tokens of a text (with the BOS the engine adds) are as many as a raw
    generation of it reads, and the tokens of /apply-template's prompt as many as the
    same chat reads."""
    for number, sample in enumerate(TEXTS):
        text = f"{number}: {sample}"  # a prompt not cached yet: every token counted as read
        ids = post(client, "/tokenize", {"model": model, "content": text, "add_special": True})
        body = {"model": model, "prompt": text, "raw": True, "stream": False}
        generated = post(client, "/api/generate", body | {"options": {"num_predict": 1}})
        assert generated["prompt_eval_count"] == len(ids["tokens"]), text
    chat = {"model": model, "messages": CHAT}
    assert_chat_reads_the_template(client, chat)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"tools": TOOLS},
        {"tools": TOOLS, "reasoning_effort": "high"},
        {"chat_template_kwargs": {"enable_thinking": False}},
    ],
    ids=["plain", "tools", "tools-thinking", "thinking-off"],
)
def test_tool_and_thinking_prompts_are_what_the_chat_reads(
    client: httpx.Client, extra: dict[str, Any]
) -> None:
    """On the tiny model with Qwen 3's template: tools, and thinking with a switch."""
    chat = {"model": "tiny-tools", "messages": CHAT, **extra}
    prompt = assert_chat_reads_the_template(client, chat)
    if "tools" in extra:
        assert "get_weather" in prompt and "The weather in a city" in prompt
    if extra.get("chat_template_kwargs"):  # Qwen 3's switch: an empty thinking block
        assert prompt.endswith("<think>\n\n</think>\n\n")
    else:
        assert "</think>" not in prompt


def assert_chat_reads_the_template(client: httpx.Client, chat: dict[str, Any]) -> str:
    """/apply-template's prompt, once its tokens are known to be as many as the same
    chat's prompt tokens."""
    prompt: str = post(client, "/apply-template", chat)["prompt"]
    assert "You are terse." in prompt and "What is 2 + 2?" in prompt
    model = chat["model"]
    ids = post(client, "/tokenize", {"model": model, "content": prompt, "add_special": True})
    answer = post(client, "/v1/chat/completions", chat | {"max_tokens": 1})
    assert answer["usage"]["prompt_tokens"] == len(ids["tokens"])
    return prompt


def test_apply_template_shows_tools_and_system_settings(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    plain = post(client, "/apply-template", {"model": "tiny", "messages": CHAT})["prompt"]
    assert plain == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2? Ünïcödé 😀<|im_end|>\n<|im_start|>assistant\n"
    )
    answer = client.post(
        "/apply-template", json={"model": "tiny", "messages": CHAT, "tools": tools}
    )
    assert answer.status_code == 400 and "tiny does not support tools" in answer.json()["error"]


def test_tokens_take_no_slot(client: httpx.Client) -> None:
    """With the model's one slot held by a generation, tokens, templates and counts are
    answered at once: the generation is still going when they come back."""
    body = {
        "model": "gemma",
        "prompt": "Count to a million:",
        "options": {"num_predict": 100_000, "ignore_eos": True},
    }
    with client.stream("POST", "/api/generate", json=body) as stream:
        lines = stream.iter_lines()
        assert '"done":false' in next(lines)  # it holds the slot now
        for path, ask in (
            ("/tokenize", {"model": "gemma", "content": "hi"}),
            ("/detokenize", {"model": "gemma", "tokens": [2, 1000]}),
            ("/apply-template", {"model": "gemma", "messages": CHAT}),
        ):
            post(client, path, ask)
        assert '"done":false' in next(lines)  # still generating: nothing waited for it


def test_token_ids_outside_the_vocabulary_are_refused(client: httpx.Client) -> None:
    for body in (
        {"model": "gemma", "tokens": [262_144]},
        {"model": "gemma", "tokens": [-1]},
        {"model": "tiny", "tokens": [1, 2**40]},
    ):
        answer = client.post("/detokenize", json=body)
        assert answer.status_code == 400 and "vocabulary" in answer.json()["error"], answer.text
    answer = client.post("/tokenize", json={"model": "tiny", "content": [5, 99_999]})
    assert answer.status_code == 400 and "99999" in answer.json()["error"]
    # The runner lives on.
    assert post(client, "/detokenize", {"model": "tiny", "tokens": [274]})["content"] == "h"


# ------------------------------------------------------------------ llama-server


def llama_server() -> Path | None:
    given = os.environ.get("LLAMA_SERVER")
    path = Path(given) if given else REPO_ROOT / "benchmarks/.work/peers-build/bin/llama-server"
    return path if path.is_file() else None


GOLDEN = Path(__file__).parent / "golden" / "llama_server_tokens.json"


class Peer:
    """llama-server's answers for one model: live when it runs, else as recorded."""

    def __init__(self, model: str, url: str | None, recorded: dict[str, Any]) -> None:
        self.model, self.url, self.recorded = model, url, recorded

    def post(self, path: str, body: dict[str, Any]) -> Any:
        key = f"{self.model} {path} {json.dumps(body, sort_keys=True, ensure_ascii=False)}"
        if self.url is None:
            assert key in self.recorded, f"no recorded llama-server answer for {key}"
            return self.recorded[key]
        with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as peer:
            answer = post(peer, path, body)
        self.recorded[key] = answer
        return answer


@pytest.fixture(scope="module")
def peers(tiny_gguf_path: Path, gemma_gguf_path: Path) -> Iterator[dict[str, Peer]]:
    """llama-server on each model, by model name (recorded answers without one)."""
    recorded: dict[str, Any] = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    binary = llama_server()
    if binary is None:
        yield {name: Peer(name, None, recorded) for name in MODELS}
        return
    processes: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name, path in (("tiny", tiny_gguf_path), ("gemma", gemma_gguf_path)):
            port = free_port()
            command = [str(binary), "-m", str(path), "--port", str(port), "-c", "512", "-np", "1"]
            process = subprocess.Popen(
                [*command, "-t", "2", "--jinja"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(process)
            urls[name] = f"http://127.0.0.1:{port}"
        for url in urls.values():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            else:
                pytest.fail(f"llama-server at {url} did not start")
        yield {name: Peer(name, url, recorded) for name, url in urls.items()}
        if os.environ.get("LOCALSERVE_RECORD_GOLDEN") == "1":
            GOLDEN.parent.mkdir(exist_ok=True)
            GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True, ensure_ascii=False))
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.parametrize("model", MODELS)
def test_the_same_tokens_as_llama_server(
    client: httpx.Client, peers: dict[str, Peer], model: str
) -> None:
    peer = peers[model]
    for text in TEXTS:
        for options in (
            {"with_pieces": True},
            {"add_special": True},
            {"parse_special": False, "with_pieces": True},
        ):
            ours = post(client, "/tokenize", {"model": model, "content": text, **options})
            theirs = peer.post("/tokenize", {"content": text, **options})
            assert ours == theirs, (text, options)
        ids = theirs["tokens"]
        ids = [t["id"] if isinstance(t, dict) else t for t in ids]
        ours = post(client, "/detokenize", {"model": model, "tokens": ids})
        assert ours == peer.post("/detokenize", {"tokens": ids})


def test_the_same_template_text_as_llama_server(
    client: httpx.Client, peers: dict[str, Peer]
) -> None:
    """The tiny model's ChatML template, rendered by our sandbox and by llama.cpp's."""
    for messages in (CHAT, CHAT[1:], [*CHAT, {"role": "assistant", "content": "4"}, CHAT[1]]):
        ours = post(client, "/apply-template", {"model": "tiny", "messages": messages})
        assert ours == peers["tiny"].post("/apply-template", {"messages": messages})

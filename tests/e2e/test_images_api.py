"""Images over both APIs against a real daemon: the tiny model imported with the tiny
gemma3-type projector as ``tiny-vision`` (a 32x32 picture becomes 4 embeddings),
judged by the official ``ollama`` and ``openai`` clients, plus every bad input."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest
from PIL import Image

from localserve.plan.devices import Devices
from localserve.plan.planner import plan
from localserve.plan.sizes import projector_need
from localserve.store.gguf import read_gguf_model, read_projector
from tests.support.daemon import Daemon, add_model, running_daemon
from tests.support.media import assert_medium_is_read
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_projector import write_tiny_projector

IMAGE_TOKENS = 4
OPTIONS = ("-o", "num_predict=2", "-o", "temperature=0", "--verbose")
GREEDY = {"temperature": 0, "num_predict": 4}
ONE = {"temperature": 0, "num_predict": 1}


def png(seed: int, side: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (and holds almost nothing)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))


def wav() -> bytes:
    frames = b"\0\0" * 1600
    header = struct.pack("<4sI4s", b"RIFF", 36 + len(frames), b"WAVE")
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16)
    return header + fmt + struct.pack("<4sI", b"data", len(frames)) + frames


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_path: Path) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("images") / "localserve-home"
    folder = tmp_path_factory.mktemp("vision-files")
    with running_daemon(home, tiny_gguf_path, env={"LOCALSERVE_MAX_IMAGES": "3"}) as started:
        add_model(home, tiny_gguf_path, "tiny-vision", write_tiny_projector(folder / "p.gguf"))
        wide = write_tiny_projector(folder / "wide.gguf", text_embd=128)
        add_model(home, tiny_gguf_path, "tiny-wrong-projector", wide)
        yield started


@pytest.fixture
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    with ollama.Client(host=daemon.url, timeout=120) as client:
        yield client


@pytest.fixture
def oai(daemon: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=120) as client:
        yield client


def test_ollama_chat_with_an_image_path(client: ollama.Client, tmp_path: Path) -> None:
    picture = tmp_path / "picture.png"
    picture.write_bytes(png(1))
    plain = client.chat("tiny-vision", [{"role": "user", "content": "What is it?"}], options=GREEDY)
    seen = client.chat(
        "tiny-vision",
        [{"role": "user", "content": "What is it?", "images": [picture]}],
        options=GREEDY,
    )
    assert plain.prompt_eval_count is not None and seen.prompt_eval_count is not None
    assert seen.prompt_eval_count >= plain.prompt_eval_count + IMAGE_TOKENS
    assert seen.done and seen.message.role == "assistant"


def test_ollama_generate_with_images(client: ollama.Client) -> None:
    plain = client.generate("tiny-vision", "Describe", options=GREEDY)
    seen = client.generate("tiny-vision", "Describe", images=[png(2), png(3)], options=GREEDY)
    assert plain.prompt_eval_count is not None and seen.prompt_eval_count is not None
    assert seen.prompt_eval_count >= plain.prompt_eval_count + 2 * IMAGE_TOKENS

    def first(picture: bytes) -> dict[str, float]:
        answer = client.generate(
            "tiny-vision", "Describe", images=[picture], options=ONE, logprobs=True, top_logprobs=5
        )
        assert answer.logprobs
        return {t.token: t.logprob for t in answer.logprobs[0].top_logprobs or []}

    assert_medium_is_read(first, png(2), png(3))


def test_show_and_capabilities(client: ollama.Client, daemon: Daemon) -> None:
    assert "vision" in (client.show("tiny-vision").capabilities or [])
    assert "vision" not in (client.show("tiny").capabilities or [])
    # The client's model has no field for it; Ollama's wire does.
    shown = httpx.post(daemon.url + "/api/show", json={"model": "tiny-vision"}).json()
    assert shown["projector_info"]["clip.projector_type"] == "gemma3"


def test_openai_image_url_data_url(oai: openai.OpenAI) -> None:
    def ask(content: object) -> int:
        done = oai.chat.completions.create(
            model="tiny-vision",
            messages=[{"role": "user", "content": content}],  # type: ignore[misc,list-item]
            max_tokens=4,
            temperature=0,
        )
        assert done.usage is not None
        return done.usage.prompt_tokens

    text_only = ask([{"type": "text", "text": "What is it?"}])
    url = "data:image/png;base64," + b64(png(4))
    with_image = ask(
        [{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": url}}]
    )
    assert with_image >= text_only + IMAGE_TOKENS

    def first(picture: bytes) -> dict[str, float]:
        part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(picture)}}
        done = oai.chat.completions.create(
            model="tiny-vision",
            messages=[{"role": "user", "content": [part]}],  # type: ignore[misc,list-item]
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
        )
        logprobs = done.choices[0].logprobs
        assert logprobs is not None and logprobs.content
        return {t.token: t.logprob for t in logprobs.content[0].top_logprobs}

    assert_medium_is_read(first, png(4), png(5))


def test_openai_http_image_urls_are_refused(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not fetch URLs"):
        oai.chat.completions.create(
            model="tiny-vision",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}
                    ],
                }
            ],
        )


def test_responses_input_image(oai: openai.OpenAI) -> None:
    """The Responses API's input_image part: a data URL is read (its tokens counted, the
    picture itself reaching the model); a remote URL is a 400 that says to send bytes."""

    def ask(parts: list[dict[str, object]]) -> openai.types.responses.Response:
        return oai.responses.create(
            model="tiny-vision",
            input=[{"role": "user", "content": parts}],  # type: ignore[list-item]
            max_output_tokens=1,
            temperature=0,
            store=False,
        )

    text = {"type": "input_text", "text": "What is it?"}
    picture = {"type": "input_image", "image_url": "data:image/png;base64," + b64(png(4))}
    text_only, with_image = ask([text]).usage, ask([text, picture]).usage
    assert text_only is not None and with_image is not None
    assert with_image.input_tokens >= text_only.input_tokens + IMAGE_TOKENS
    # Another picture of the same size: as many tokens, but its cells are computed again
    # (the cache matches only up to the picture): the bytes reach the model.
    other = {"type": "input_image", "image_url": "data:image/png;base64," + b64(png(5))}
    again = ask([text, other]).usage
    assert again is not None and again.input_tokens == with_image.input_tokens
    assert again.input_tokens_details.cached_tokens < with_image.input_tokens - IMAGE_TOKENS + 1
    with pytest.raises(openai.BadRequestError, match="does not fetch URLs"):
        ask([{"type": "input_image", "image_url": "https://169.254.169.254/x.png"}])
    with pytest.raises(openai.BadRequestError, match="tiny does not support images"):
        oai.responses.create(
            model="tiny",
            input=[{"role": "user", "content": [picture]}],  # type: ignore[list-item]
        )


@pytest.mark.parametrize(
    ("model", "images", "reason"),
    [
        ("tiny-vision", ["not base64!"], "not valid base64"),
        ("tiny-vision", [b64(b"hello, I am text")], "not an image or sound"),
        ("tiny-vision", [b64(png_claiming(100_000, 100_000))], "the limit of 64,000,000"),
        ("tiny-vision", [b64(png_claiming(9_000, 9_000))], "9000x9000 pixels, over the limit"),
        ("tiny-vision", [b64(png_claiming(32, 32))], "image 1 could not be decoded"),
        ("tiny-vision", [b64(png(i)) for i in range(4)], "more than the 3 allowed"),
        ("tiny-vision", [b64(wav())], "tiny-vision does not support audio"),
        ("tiny", [b64(png(1))], "tiny does not support images"),
    ],
)
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_bad_images_are_400s(
    daemon: Daemon, path: str, model: str, images: list[str], reason: str
) -> None:
    if path == "/api/chat":
        body = {"model": model, "messages": [{"role": "user", "content": "x", "images": images}]}
    else:
        body = {"model": model, "prompt": "x", "images": images}
    response = httpx.post(daemon.url + path, json={**body, "stream": False}, timeout=60)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]
    assert "\n" not in response.json()["error"]


def test_too_many_image_tokens_for_the_context(daemon: Daemon) -> None:
    body = {
        "model": "tiny-vision",
        "prompt": "x",
        "images": [b64(png(i)) for i in range(3)],
        "options": {"num_ctx": 16},
        "stream": False,
    }
    response = httpx.post(daemon.url + "/api/generate", json=body, timeout=120)
    assert response.status_code == 400, response.text
    assert "with its images" in response.json()["error"]


def test_a_projector_of_another_width_is_refused_at_load(daemon: Daemon) -> None:
    response = httpx.post(
        daemon.url + "/api/generate",
        json={"model": "tiny-wrong-projector", "prompt": "x", "stream": False},
        timeout=120,
    )
    assert response.status_code >= 400
    error = response.json()["error"]
    assert "width 128" in error and "64" in error
    assert httpx.get(daemon.url + "/").status_code == 200  # the daemon lives on


def test_ps_counts_the_projector(client: ollama.Client, daemon: Daemon) -> None:
    client.generate("tiny", "x", options=GREEDY)
    client.generate("tiny-vision", "x", options=GREEDY)
    sizes = {m.model: m.size for m in client.ps().models}
    assert sizes["tiny-vision:latest"] > sizes["tiny:latest"]


def test_the_plan_holds_the_projector(tmp_path: Path) -> None:
    model = read_gguf_model([write_tiny_gguf(tmp_path / "m.gguf")])
    projector = read_projector(write_tiny_projector(tmp_path / "p.gguf"))
    devices = Devices.cpu_only(8 << 30)
    plain = plan(model, num_ctx=256, num_parallel=1, devices=devices)
    seen = plan(model, num_ctx=256, num_parallel=1, devices=devices, projector=projector)
    need = projector_need(projector)
    assert need > projector.size // 2
    assert seen.total_bytes == plain.total_bytes + need
    assert seen.devices[0].projector_bytes == need
    # With the layers on a GPU, the projector goes there too (the runner asks mtmd so).
    gpu = plan(
        model,
        num_ctx=256,
        num_parallel=1,
        devices=Devices.with_gpus(16 << 30, ram_bytes=8 << 30),
        projector=projector,
    )
    assert gpu.gpu_layers == gpu.n_layers
    assert [d.projector_bytes for d in gpu.devices] == [0, need]


def test_run_attaches_an_image_path_in_the_prompt(daemon: Daemon, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.daemon import daemon_env

    picture = tmp_path / "my picture.png"
    picture.write_bytes(png(7))

    escaped = str(picture).replace(" ", "\\ ")  # as a terminal pastes a dropped file

    def run(prompt: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "localserve", "run", "tiny-vision", prompt, *OPTIONS],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            env={**daemon_env(daemon.home, daemon.port), "COLUMNS": "200"},
            check=False,
        )

    def prompt_tokens(result: subprocess.CompletedProcess[str]) -> int:
        assert result.returncode == 0, result.stderr
        line = next(x for x in result.stderr.splitlines() if "prompt eval count" in x)
        return int(line.split()[-2])

    plain = run("what is this?")
    seen = run(f"what is this? {escaped}")
    assert f"Added image '{picture}'" in seen.stderr
    assert prompt_tokens(seen) >= prompt_tokens(plain) + IMAGE_TOKENS
    missing = run(f"what is this? {tmp_path / 'nothing.png'}")
    assert "Added image" not in missing.stderr  # not a file: it stays text


def test_attach_files_takes_existing_media_paths_only(tmp_path: Path) -> None:
    from localserve.cli.answer import attach_files

    (tmp_path / "a b.png").write_bytes(png(1))
    (tmp_path / "c.JPG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    text, found = attach_files(
        f"compare {tmp_path}/a\\ b.png with '{tmp_path}/c.JPG', see {tmp_path}/notes.txt"
        f" and {tmp_path}/gone.png"
    )
    assert found == [tmp_path / "a b.png", tmp_path / "c.JPG"]
    assert text == f"compare with , see {tmp_path}/notes.txt and {tmp_path}/gone.png"
    assert attach_files("plain words, no files.") == ("plain words, no files.", [])

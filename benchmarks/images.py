"""Images: encode time and tokens per image, and what encoding costs other streams.

    python benchmarks/images.py [--streams 4] [--tokens 96] [--reps 3]

One daemon over HTTP, Gemma 3 270M with a generated random-weight gemma3-type
projector of the model's width (tests/support/tiny_projector.py), in two sizes:
``tiny`` (32 px, 4 tokens an image: what the tests use) and ``small`` (224 px in
14 px patches, 6 blocks 384 wide, 16 tokens: a tenth of a real SigLIP's work).

1. Encode: a fresh picture (never cached) with a 1-token answer, against the same
   request without it; the difference in prompt_eval_duration is the image's encode
   and decode, and prompt_eval_count says how many tokens it became.
2. Streams: ``--streams`` text streams of ``--tokens`` tokens each, alone, against the
   same streams while another client keeps sending fresh images the whole time.
   Rounds alternate; the ratio of the streams' median tokens/s is with / alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.daemon import add_model, start_daemon, stop_daemon
from tests.support.tiny_gguf import gemma_path
from tests.support.tiny_projector import write_tiny_projector

SIZES = {
    "tiny": {},
    "small": {
        "width": 384,
        "ffn": 1536,
        "blocks": 6,
        "heads": 6,
        "image_size": 224,
        "patch_size": 14,
        "scale_factor": 4,
    },
}


def picture(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def generate(client: httpx.AsyncClient, model: str, **body: object) -> dict[str, object]:
    answer = await client.post(
        "/api/generate", json={"model": model, "stream": False, "raw": True, **body}
    )
    answer.raise_for_status()
    result: dict[str, object] = answer.json()
    return result


async def encode_cost(client: httpx.AsyncClient, model: str, reps: int) -> tuple[float, int]:
    """Median ms an image adds to the prompt, and the tokens it adds."""
    added_ms, added_tokens = [], 0
    for rep in range(reps + 1):
        options = {"num_predict": 1, "temperature": 0}
        text = f"Image {rep}: describe it."
        plain = await generate(client, model, prompt=text + " plain", options=options)
        seen = await generate(
            client, model, prompt=text, images=[picture(1000 + rep)], options=options
        )
        if rep == 0:
            continue  # warm-up
        ms = (int(seen["prompt_eval_duration"]) - int(plain["prompt_eval_duration"])) / 1e6  # type: ignore[call-overload]
        added_ms.append(ms)
        added_tokens = int(seen["prompt_eval_count"]) - int(plain["prompt_eval_count"])  # type: ignore[call-overload]
    return statistics.median(added_ms), added_tokens


async def streams(
    client: httpx.AsyncClient, model: str, count: int, tokens: int, with_images: bool, rep: int
) -> float:
    """Tokens/s of ``count`` streams together (sum of tokens over the wall time).
    With images, the images are encoded back to back, one request after another, for
    as long as the streams run."""
    done = asyncio.Event()
    encoded = 0

    async def image_feeder() -> None:
        nonlocal encoded
        seed = rep * 10_000
        while not done.is_set():
            seed += 1
            await generate(
                client,
                model,
                prompt="What is it?",
                images=[picture(seed)],
                options={"num_predict": 1},
            )
            encoded += 1

    feeder = asyncio.create_task(image_feeder()) if with_images else None
    options = {"num_predict": tokens, "ignore_eos": True, "temperature": 0.8, "seed": rep}
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            generate(client, model, prompt=f"Story {rep}-{i}: once upon a time", options=options)
            for i in range(count)
        )
    )
    elapsed = time.perf_counter() - started
    during = encoded
    done.set()
    if feeder is not None:
        await feeder
        # Images really were encoded while the streams ran (a slot was free for them).
        assert during >= 2, during
    assert all(int(r["eval_count"]) == tokens for r in results)  # type: ignore[call-overload]
    return count * tokens / elapsed


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        # A slot for the image client beside the streams: else it would wait for one.
        daemon = start_daemon(home, gemma_path(), env={"LOCALSERVE_NUM_PARALLEL": "8"})
        try:
            for size, shape in SIZES.items():
                projector = write_tiny_projector(
                    Path(folder) / f"{size}.gguf", text_embd=640, **shape
                )  # type: ignore[arg-type]
                add_model(home, gemma_path(), f"gemma-{size}", projector)
            async with httpx.AsyncClient(base_url=daemon.url, timeout=600) as client:
                for size in SIZES:
                    model = f"gemma-{size}"
                    ms, count = await encode_cost(client, model, args.reps)
                    print(
                        f"{size:>6} projector: {count} tokens an image, {ms:.1f} ms to encode and decode it"
                    )
                    rates: dict[bool, list[float]] = {False: [], True: []}
                    await streams(client, model, args.streams, 8, False, -1)  # warm-up
                    for rep in range(args.reps):
                        for with_images in (False, True) if rep % 2 == 0 else (True, False):
                            rates[with_images].append(
                                await streams(
                                    client, model, args.streams, args.tokens, with_images, rep
                                )
                            )
                    alone, mixed = statistics.median(rates[False]), statistics.median(rates[True])
                    print(
                        f"{size:>6} projector: {args.streams} streams {alone:.1f} tok/s alone, "
                        f"{mixed:.1f} tok/s while images are encoded: ratio {mixed / alone:.2f}"
                    )
        finally:
            stop_daemon(daemon)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--reps", type=int, default=3)
    asyncio.run(main(parser.parse_args()))

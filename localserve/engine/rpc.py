"""llama.cpp's RPC backend: serve this machine's devices to another, or use another's.

A worker (``localserve worker``) runs ggml's RPC server, ``ggml_backend_rpc_start_server``
from the ``libggml-rpc`` library that llama-cpp-python builds with ``-DGGML_RPC=on``. A
runner registers the workers it was given (``ggml_backend_rpc_add_server``, what
llama-server's ``--rpc`` does) and llama.cpp places layers on them as on local GPUs.

What the library lacks, and what this module adds:

- **Timeouts.** ggml's client aborts the whole process when a worker cannot be reached
  and waits forever on one that stopped answering. So nothing calls into ggml for a
  worker before ``query_worker`` has asked it, over the same wire protocol, with a
  timeout (HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY: 3 fixed-size messages); and
  ``SocketGuard`` sets receive/send timeouts on the sockets ggml opens to workers. A
  worker that dies or goes silent then makes ggml abort the runner, the daemon sees the
  runner exit, and the requests end with an error instead of hanging.
- **A stoppable server.** The C server loop never returns; it runs in a daemon thread
  and the process ends on SIGINT/SIGTERM.

One worker serves one client at a time (ggml's server accepts the next connection only
when the current one closes), so a worker holds one loaded model; another runner asking
it for memory meanwhile times out and plans without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import logging
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

from localserve.config import is_loopback, parse_endpoint
from localserve.errors import EngineError, InvalidOptionError, RpcUnavailableError

log = logging.getLogger("localserve.rpc")

# ggml-rpc.h: RPC_PROTO_MAJOR_VERSION. Another major version speaks another protocol.
PROTO_MAJOR: Final = 7
# ggml-rpc.cpp: enum rpc_cmd, and transport.h: RPC_CONN_CAPS_SIZE.
_CMD_GET_DEVICE_MEMORY: Final = 11
_CMD_HELLO: Final = 14
_CMD_DEVICE_COUNT: Final = 15
_CAPS_SIZE: Final = 24

REBUILD_HINT: Final = (
    "reinstall llama-cpp-python with the RPC backend: from a localserve checkout, "
    '`pip install --force-reinstall --no-deps --find-links "$(scripts/llama-wheel)" '
    "llama-cpp-python==0.3.36`, or "
    '`CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir '
    "llama-cpp-python==0.3.36` (docs/scale.md)"
)


# ------------------------------------------------------------------- endpoints


def exposure(host: str, port: int) -> str:
    """Who can reach a worker bound to ``host``: the warning printed with --allow-network."""
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        names = sorted(_own_addresses())
        where = f" ({', '.join(names)})" if names else ""
        return (
            f"every machine that can route to any address of this one{where} on TCP port "
            f"{port}, on every network it is connected to"
        )
    return f"every machine that can route to {host} on TCP port {port}"


def _own_addresses() -> set[str]:
    with contextlib.suppress(OSError):
        infos = socket.getaddrinfo(socket.gethostname(), None)
        return {str(info[4][0]) for info in infos if not is_loopback(str(info[4][0]))}
    return set()


# ------------------------------------------------------- asking a worker directly


@dataclass(frozen=True)
class WorkerDevice:
    """One device a worker serves, as llama.cpp will see it."""

    endpoint: str
    index: int  # the device's number on its worker
    free_bytes: int
    total_bytes: int


def query_worker(endpoint: str, timeout: float) -> tuple[WorkerDevice, ...]:
    """The devices ``endpoint`` serves and their free memory; OSError (TimeoutError,
    ConnectionRefusedError...) when it does not answer within ``timeout`` seconds.

    Speaks ggml's RPC protocol itself, because ggml's own client aborts the process on
    an unreachable worker and has no timeout (see the module docstring). Messages:
    request ``| cmd u8 | size u64 | body |``, reply ``| size u64 | body |``, little-endian.
    """
    host, port = parse_endpoint(endpoint)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        major = _call(sock, _CMD_HELLO, bytes(_CAPS_SIZE), 4 + _CAPS_SIZE)[0]
        if major != PROTO_MAJOR:
            raise ConnectionError(
                f"RPC worker {endpoint} speaks protocol {major}, this llama.cpp {PROTO_MAJOR}"
            )
        (count,) = struct.unpack("<I", _call(sock, _CMD_DEVICE_COUNT, b"", 4))
        devices = []
        for index in range(count):
            body = _call(sock, _CMD_GET_DEVICE_MEMORY, struct.pack("<I", index), 16)
            free, total = struct.unpack("<QQ", body)
            devices.append(WorkerDevice(f"{host}:{port}", index, free, total))
    return tuple(devices)


def _call(sock: socket.socket, cmd: int, body: bytes, reply_size: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(body)) + body)
    (size,) = struct.unpack("<Q", _recv(sock, 8))
    if size != reply_size:
        raise ConnectionError(f"unexpected RPC reply of {size} bytes (wanted {reply_size})")
    return _recv(sock, size)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the RPC worker closed the connection")
        data += chunk
    return bytes(data)


def probe_workers(
    endpoints: Sequence[str], timeout: float
) -> tuple[tuple[WorkerDevice, ...], tuple[str, ...]]:
    """(devices of the workers that answer, in order; a note for each that did not)."""
    devices: list[WorkerDevice] = []
    notes: list[str] = []
    for endpoint in endpoints:
        try:
            devices.extend(query_worker(endpoint, timeout))
        except OSError as exc:
            reason = (
                "timed out (busy with another model, or stopped)"
                if isinstance(exc, TimeoutError)
                else (str(exc) or type(exc).__name__)
            )
            log.info("RPC worker %s did not answer: %s; planning without it", endpoint, reason)
            notes.append(f"RPC worker {endpoint} did not answer ({reason}): planned without it")
    return tuple(devices), tuple(notes)


# ------------------------------------------------------------ the ggml library


def library_path() -> Path | None:
    """``libggml-rpc`` in the installed llama_cpp package's lib folder, if it was built.
    Found without importing llama_cpp (which loads llama.cpp)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    return _library(
        # The soname first: the copy libggml itself links to, when it was built with RPC.
        "libggml-rpc.so.0",
        "libggml-rpc.so",
        "libggml-rpc.0.dylib",
        "libggml-rpc.dylib",
        "ggml-rpc.dll",
        folder=Path(spec.origin).parent / "lib",
    )


def _library(*names: str, folder: Path | None = None) -> Path | None:
    if folder is None:
        import llama_cpp

        folder = Path(llama_cpp.__file__).parent / "lib"
    return next((folder / n for n in names if (folder / n).exists()), None)


def load_library() -> Any:
    """The RPC library with its functions typed, or RpcUnavailableError saying how to rebuild."""
    path = library_path()
    if path is None:
        raise RpcUnavailableError(
            "this llama-cpp-python build has no RPC backend (libggml-rpc is missing)",
            hint=REBUILD_HINT,
        )
    # llama_cpp loads libggml first, so the RPC library's dependencies resolve to it.
    import llama_cpp.llama_cpp  # noqa: F401

    lib: Any = ctypes.CDLL(str(path))
    lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_reg.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_reg.argtypes = []
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_start_server.restype = None
    lib.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    return lib


@functools.cache
def ggml_library() -> Any:
    """The libggml that libllama itself uses (the device queries of engine/devices.py
    read it too). Not ``llama_cpp._ggml.libggml``: a wheel
    holds ``libggml.so`` and ``libggml.so.0`` as two copies of one file (no symlinks in
    wheels), that module loads the first, libllama the second, and each copy has its own
    backend registry: an RPC server registered in the wrong one is never used."""
    import llama_cpp.llama_cpp  # noqa: F401  (loads libllama and its libggml)

    lib: Any
    path = _library("libggml.so.0", "libggml.0.dylib", "libggml.dylib", "ggml.dll")
    if path is None:
        from llama_cpp._ggml import libggml as lib
    else:
        lib = ctypes.CDLL(str(path))
    lib.ggml_backend_register.restype = None
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_count.argtypes = []
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, fn).restype = ctypes.c_char_p
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    return lib


# ---------------------------------------------------------------- the runner side


def use_workers(endpoints: Sequence[str], timeout: float) -> SocketGuard:
    """Register ``endpoints`` (workers that just answered ``query_worker``) with ggml,
    in order, so that the next model load places layers on their devices, as
    llama-server's ``--rpc`` does. Their devices come first in llama.cpp's device list
    (llama.cpp puts RPC devices before local GPUs), named RPC0, RPC1... in this order.
    Returns the guard that keeps ggml's sockets to them from waiting forever."""
    lib = load_library()
    ggml = ggml_library()
    # ggml_abort would otherwise try to attach gdb for a backtrace when a worker dies.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    guard = SocketGuard(endpoints, timeout)
    guard.start()
    if not ggml.ggml_backend_reg_by_name(b"RPC"):
        # A libggml built without GGML_USE_RPC does not list the RPC backend, and then
        # llama.cpp offloads nothing (llama_supports_gpu_offload() is false).
        ggml.ggml_backend_register(lib.ggml_backend_rpc_reg())
    for endpoint in endpoints:
        reg = lib.ggml_backend_rpc_add_server(endpoint.encode())
        if reg:
            ggml.ggml_backend_register(reg)
    return guard


class SocketGuard(threading.Thread):
    """Sets a receive and send timeout on every socket this process has open to a
    worker, checking for new ones every ``interval`` seconds (ggml opens them during the
    load). With the timeout set, a worker that stops answering makes ggml's recv fail,
    and ggml aborts the runner rather than wait forever. Linux (/proc/self/fd) and macOS
    (/dev/fd)."""

    def __init__(self, endpoints: Sequence[str], timeout: float, interval: float = 0.2) -> None:
        super().__init__(name="rpc-socket-guard", daemon=True)
        self.peers = {parse_endpoint(e)[1]: parse_endpoint(e)[0] for e in endpoints}
        self.endpoints = set(endpoints)
        self.timeout = timeout
        self.interval = interval
        # (fd, inode): a closed socket's number is soon reused by a new one.
        self.armed: set[tuple[int, int]] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.arm()

    def stop(self) -> None:
        self._stop_event.set()

    def arm(self) -> int:
        """Arm the sockets not armed yet; returns how many are armed in all."""
        folder = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
        try:
            fds = [int(name) for name in os.listdir(folder)]
        except OSError:
            return len(self.armed)
        seconds = int(self.timeout)
        micros = int((self.timeout - seconds) * 1_000_000)
        timeval = struct.pack("ll", seconds, micros)
        for fd in fds:
            try:
                key = (fd, os.fstat(fd).st_ino)
                if key in self.armed or fd <= 2:
                    continue
                sock = socket.socket(fileno=fd)
            except OSError:
                continue  # closed meanwhile, or not a socket
            try:
                if sock.type != socket.SOCK_STREAM:
                    continue
                peer = sock.getpeername()
                if self._is_worker(peer):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
                    self.armed.add(key)
            except OSError:
                pass
            finally:
                sock.detach()  # the socket is ggml's: never close it
        return len(self.armed)

    def _is_worker(self, peer: Any) -> bool:
        if not isinstance(peer, tuple) or len(peer) < 2:
            return False
        address, port = str(peer[0]), int(peer[1])
        host = self.peers.get(port)
        if host is None:
            return False
        if host == address or f"{address}:{port}" in self.endpoints:
            return True
        with contextlib.suppress(OSError):
            return address in {str(i[4][0]) for i in socket.getaddrinfo(host, port)}
        return False


# ---------------------------------------------------------------- the worker side


@dataclass(frozen=True)
class ServedDevice:
    name: str  # "CPU", "CUDA0"
    description: str
    free_bytes: int
    total_bytes: int


def worker_devices(names: Sequence[str] = ()) -> tuple[list[int], list[ServedDevice]]:
    """The ggml devices a worker serves, as ``rpc-server`` picks them: those named, else
    every GPU, else the CPU. Returns (device pointers, descriptions)."""
    ggml = ggml_library()
    pointers: list[int] = []
    if names:
        for name in names:
            dev = ggml.ggml_backend_dev_by_name(name.encode())
            if not dev:
                known = [
                    _describe(ggml, ggml.ggml_backend_dev_get(i)).name
                    for i in range(int(ggml.ggml_backend_dev_count()))
                ]
                raise InvalidOptionError(
                    f"no device {name!r} here", hint=f"devices: {', '.join(known)}"
                )
            pointers.append(dev)
    else:
        for i in range(int(ggml.ggml_backend_dev_count())):
            dev = ggml.ggml_backend_dev_get(i)
            if int(ggml.ggml_backend_dev_type(dev)) not in (0, 3):  # not CPU, not ACCEL
                pointers.append(dev)
        if not pointers:
            pointers.append(ggml.ggml_backend_dev_by_name(b"CPU"))
    return pointers, [_describe(ggml, p) for p in pointers]


def _describe(ggml: Any, dev: int) -> ServedDevice:
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return ServedDevice(
        name=(ggml.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace"),
        description=(ggml.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace"),
        free_bytes=int(free.value),
        total_bytes=int(total.value),
    )


def serve(
    host: str,
    port: int,
    *,
    devices: Sequence[int],
    threads: int,
    cache_dir: Path | None = None,
) -> NoReturn:
    """Run ggml's RPC server until SIGINT or SIGTERM, then end the process.

    The C loop blocks in accept() and has no stop call, so it runs in a daemon thread
    while the main thread waits for a signal (Python's handlers run only there); the
    process then ends with ``os._exit``, which is the only way to stop that loop.
    It ends on its own only when it cannot listen (the port is taken, say)."""
    lib = load_library()
    array = (ctypes.c_void_p * len(devices))(*devices)
    endpoint = f"{host}:{port}".encode()
    cache = str(cache_dir).encode() if cache_dir else None
    server = threading.Thread(
        target=lib.ggml_backend_rpc_start_server,
        args=(endpoint, cache, threads, len(devices), array),
        name="rpc-server",
        daemon=True,
    )
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    stopping = {signal.SIGINT, signal.SIGTERM}
    previous = {s: signal.signal(s, on_signal) for s in stopping}
    # The server thread starts with these signals blocked, so they always reach the
    # main thread: delivered to the server thread, one would interrupt its accept()
    # and the C loop would give up as if the socket had failed.
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    try:
        server.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
    while server.is_alive() and not stop.wait(0.2):
        pass
    if not received:  # the server gave up; it printed why on stderr
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        raise EngineError(
            f"the RPC server could not listen on {host}:{port}",
            hint="is another process using the port? pick another with --port",
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

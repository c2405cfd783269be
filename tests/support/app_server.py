"""The daemon's app served over real HTTP on a free loopback port, in a thread of this
process: for tests of what a client sees over time in a stream (httpx's ASGI transport
hands over a response only once the app has finished it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI

from tests.support.daemon import free_port


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` (lifespan included) until the block ends; yields its base URL."""
    import uvicorn  # the daemon's server, imported where it is used (ruff TID253)

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="app-server", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the app server did not start")
            time.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)

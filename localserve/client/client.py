"""A small synchronous client for the daemon's Ollama API.

Errors come back as the library's exceptions: an ``{"error": ...}`` body or stream
line raises (404 -> ModelNotFoundError, 400 -> InvalidOptionError, 503 ->
ServerBusyError), and a refused connection raises DaemonNotRunningError saying how
to start the daemon.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from localserve.errors import (
    DaemonNotRunningError,
    EngineError,
    InvalidOptionError,
    LocalserveError,
    ModelNotFoundError,
    ServerBusyError,
)

if TYPE_CHECKING:
    from localserve.config import Settings


def raise_for_error(status: int, body: Any, model: str | None = None) -> None:
    """Turn an error answer into the matching exception."""
    if status < 400:
        return
    message = body.get("error") if isinstance(body, dict) else None
    if isinstance(message, dict):  # OpenAI shape
        message = message.get("message")
    text = str(message or f"HTTP {status}")
    if status == 404:
        raise ModelNotFoundError(model or "?") if model else LocalserveError(text)
    if status == 400:
        raise InvalidOptionError(text)
    if status == 503:
        raise ServerBusyError(text)
    if status >= 500:
        raise EngineError(text)
    raise LocalserveError(text)


class Client:
    """``with Client.from_settings() as client: client.ps()``"""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout: float | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        # No read timeout by default: a model load or a long answer can take minutes.
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=5.0),
            trust_env=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Client:
        from localserve.config import load_settings

        settings = settings or load_settings()
        host, port = settings.bind
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # a daemon bound to every address answers on loopback
        target = f"[{host}]" if ":" in host else host
        key = settings.api_key.get_secret_value() if settings.api_key else None
        return cls(f"http://{target}:{port}", api_key=key)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------- plumbing

    def _not_running(self, exc: Exception) -> DaemonNotRunningError:
        return DaemonNotRunningError(
            f"localserve is not running at {self.base_url}",
            hint="start it with `localserve serve`",
        )

    def request(
        self, method: str, path: str, *, json_body: Any = None, model: str | None = None
    ) -> Any:
        try:
            response = self._http.request(method, path, json=json_body)
        except httpx.ConnectError as exc:
            raise self._not_running(exc) from None
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = response.text
        raise_for_error(response.status_code, body, model)
        return body

    def stream(
        self, path: str, json_body: dict[str, Any], *, model: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """NDJSON chunks; an ``{"error"}`` line raises."""
        try:
            with self._http.stream("POST", path, json=json_body) as response:
                if response.status_code >= 400:
                    response.read()
                    try:
                        body = response.json()
                    except ValueError:
                        body = None
                    raise_for_error(response.status_code, body, model)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    chunk = json.loads(line)
                    if "error" in chunk:
                        raise EngineError(str(chunk["error"]))
                    yield chunk
        except httpx.ConnectError as exc:
            raise self._not_running(exc) from None

    # ------------------------------------------------------------------ API

    def version(self) -> str:
        return str(self.request("GET", "/api/version")["version"])

    def ps(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/api/ps")["models"])

    def unload(self, model: str) -> None:
        self.request(
            "POST", "/api/generate", json_body={"model": model, "keep_alive": 0}, model=model
        )

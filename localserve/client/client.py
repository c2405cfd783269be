"""Typed clients for the daemon's Ollama API: ``Client`` (sync) and ``AsyncClient``.

::

    with Client() as client:                       # LOCALSERVE_HOST, else 127.0.0.1:11435
        for chunk in client.chat("gemma", [Message("user", "hi")], stream=True):
            print(chunk.message.content, end="")

Streaming shows in the types (``stream=True`` gives an iterator of chunks, as in
ollama-python). A stream is lazy: the request goes out on the first ``next()``, and
closing the iterator (or leaving the loop early) closes the connection, which makes
the daemon cancel the generation. Errors are the library's exceptions (see wire.py);
a refused connection is DaemonNotRunningError, saying how to start the daemon.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import httpx

from localserve.client import wire
from localserve.client.types import (
    ChatResponse,
    GenerateResponse,
    ListedModel,
    ProgressResponse,
    RunningModel,
    ShowResponse,
)
from localserve.errors import EngineError, HubError, LocalserveError

if TYPE_CHECKING:
    from localserve.config import Settings

# Failures to reach the daemon at all (nothing listening, or it never accepted).
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)
T = TypeVar("T")


def _typed(chunks: Generator[dict[str, Any]], make: Callable[[dict[str, Any]], T]) -> Generator[T]:
    # Closing the typed stream must close the HTTP stream under it at once (that is
    # what cancels the generation on the daemon), not whenever it is collected.
    with contextlib.closing(chunks):
        for chunk in chunks:
            yield make(chunk)


async def _atyped(
    chunks: AsyncGenerator[dict[str, Any]], make: Callable[[dict[str, Any]], T]
) -> AsyncGenerator[T]:
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            yield make(chunk)


def base_url_from(host: str | None = None) -> str:
    """``http://host:port`` from ``host`` (``host[:port]`` or a URL), else LOCALSERVE_HOST."""
    from localserve.config import split_host

    host_name, port = split_host(host or os.environ.get("LOCALSERVE_HOST") or "")
    if host_name in ("0.0.0.0", "::"):
        host_name = "127.0.0.1"  # a daemon bound to every address answers on loopback
    target = f"[{host_name}]" if ":" in host_name else host_name
    return f"http://{target}:{port}"


class _Base:
    """Configuration both clients share."""

    def __init__(self, host: str | None, api_key: str | None) -> None:
        self.base_url = base_url_from(host)
        key = api_key if api_key is not None else os.environ.get("LOCALSERVE_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    @staticmethod
    def _timeout(timeout: float | None) -> httpx.Timeout:
        # No read timeout by default: a model load or a long answer can take minutes.
        return httpx.Timeout(timeout, connect=5.0)

    @staticmethod
    def _settings_args(settings: Settings | None) -> tuple[str, str | None]:
        from localserve.config import load_settings

        settings = settings or load_settings()
        key = settings.api_key.get_secret_value() if settings.api_key else None
        return settings.host, key


class Client(_Base):
    """Synchronous client. ``transport`` lets tests talk to an in-process app."""

    def __init__(
        self,
        host: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(host, api_key)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self.headers,
            timeout=self._timeout(timeout),
            transport=transport,
            trust_env=False,  # a proxy must never sit between us and a loopback daemon
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> Client:
        host, key = cls._settings_args(settings)
        return cls(host, api_key=key, **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------- plumbing

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        model: str | None = None,
        error: type[LocalserveError] = EngineError,
    ) -> Any:
        """One request; the decoded JSON body (or text), or the matching exception."""
        try:
            response = self._http.request(method, path, json=json)
        except _UNREACHABLE:
            raise wire.not_running(self.base_url) from None
        except httpx.TransportError as exc:
            raise wire.connection_lost(self.base_url, exc) from None
        body = wire.decode_body(response.content)
        wire.raise_for_error(response.status_code, body, model, error)
        return body

    def stream(
        self,
        path: str,
        json: dict[str, Any],
        *,
        model: str | None = None,
        error: type[LocalserveError] = EngineError,
    ) -> Generator[dict[str, Any]]:
        """POST and yield NDJSON objects; an ``{"error"}`` line (or a 5xx) raises ``error``."""
        try:
            with self._http.stream("POST", path, json=json) as response:
                if response.status_code >= 400:
                    body = wire.decode_body(response.read())
                    wire.raise_for_error(response.status_code, body, model, error)
                for line in response.iter_lines():
                    chunk = wire.decode_line(line, error)
                    if chunk is not None:
                        yield chunk
        except _UNREACHABLE:
            raise wire.not_running(self.base_url) from None
        except httpx.TransportError as exc:
            raise wire.connection_lost(self.base_url, exc) from None

    # ------------------------------------------------------------------ API

    def ping(self) -> bool:
        """True when a localserve daemon answers at ``base_url``."""
        try:
            response = self._http.get("/")
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.text.startswith("localserve")

    def version(self) -> str:
        return str(self.request("GET", "/api/version")["version"])

    def tags(self) -> list[ListedModel]:
        return [ListedModel.from_wire(m) for m in self.request("GET", "/api/tags")["models"]]

    def ps(self) -> list[RunningModel]:
        return [RunningModel.from_wire(m) for m in self.request("GET", "/api/ps")["models"]]

    def show(self, model: str, *, verbose: bool = False) -> ShowResponse:
        body = self.request(
            "POST", "/api/show", json={"model": model, "verbose": verbose}, model=model
        )
        return ShowResponse.from_wire(body)

    def delete(self, model: str) -> None:
        self.request("DELETE", "/api/delete", json={"model": model}, model=model)

    def copy(self, source: str, destination: str) -> None:
        self.request(
            "POST", "/api/copy", json={"source": source, "destination": destination}, model=source
        )

    @overload
    def pull(self, model: str, *, stream: Literal[False] = False) -> ProgressResponse: ...
    @overload
    def pull(self, model: str, *, stream: Literal[True]) -> Generator[ProgressResponse]: ...
    def pull(
        self, model: str, *, stream: bool = False
    ) -> ProgressResponse | Generator[ProgressResponse]:
        """Have the daemon pull ``model`` into its store."""
        body = {"model": model, "stream": stream}
        if stream:
            chunks = self.stream("/api/pull", body, model=model, error=HubError)
            return _typed(chunks, ProgressResponse.from_wire)
        return ProgressResponse.from_wire(
            self.request("POST", "/api/pull", json=body, model=model, error=HubError)
        )

    @overload
    def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: str | None = None,
        raw: bool = False,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        stream: Literal[False] = False,
    ) -> GenerateResponse: ...
    @overload
    def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: str | None = None,
        raw: bool = False,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        stream: Literal[True],
    ) -> Generator[GenerateResponse]: ...
    def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: str | None = None,
        raw: bool = False,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        stream: bool = False,
    ) -> GenerateResponse | Generator[GenerateResponse]:
        """Complete ``prompt`` (an empty prompt only loads the model)."""
        body = wire.generate_body(
            model,
            prompt,
            system=system,
            raw=raw,
            format=format,
            options=options,
            keep_alive=keep_alive,
            stream=stream,
        )
        if stream:
            return _typed(
                self.stream("/api/generate", body, model=model), GenerateResponse.from_wire
            )
        return GenerateResponse.from_wire(
            self.request("POST", "/api/generate", json=body, model=model)
        )

    @overload
    def chat(
        self,
        model: str,
        messages: wire.Messages = (),
        *,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        think: bool | str | None = None,
        stream: Literal[False] = False,
    ) -> ChatResponse: ...
    @overload
    def chat(
        self,
        model: str,
        messages: wire.Messages = (),
        *,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        think: bool | str | None = None,
        stream: Literal[True],
    ) -> Generator[ChatResponse]: ...
    def chat(
        self,
        model: str,
        messages: wire.Messages = (),
        *,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        think: bool | str | None = None,
        stream: bool = False,
    ) -> ChatResponse | Generator[ChatResponse]:
        """Answer the conversation ``messages`` (no messages only loads the model);
        ``think`` turns a thinking model's reasoning on or off (None: its default)."""
        body = wire.chat_body(
            model,
            messages,
            format=format,
            options=options,
            keep_alive=keep_alive,
            stream=stream,
            think=think,
        )
        if stream:
            return _typed(self.stream("/api/chat", body, model=model), ChatResponse.from_wire)
        return ChatResponse.from_wire(self.request("POST", "/api/chat", json=body, model=model))

    def load(
        self, model: str, *, options: wire.Options | None = None, keep_alive: wire.KeepAlive = None
    ) -> ChatResponse:
        """Load ``model`` now (``load_duration`` says how long it took)."""
        return self.chat(model, (), options=options, keep_alive=keep_alive)

    def unload(self, model: str) -> None:
        """Unload ``model`` once its requests finish; no error if it was not loaded."""
        self.chat(model, (), keep_alive=0)


class AsyncClient(_Base):
    """The asyncio twin of ``Client``: the same methods, awaited; streams are async iterators."""

    def __init__(
        self,
        host: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(host, api_key)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            timeout=self._timeout(timeout),
            transport=transport,
            trust_env=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> AsyncClient:
        host, key = cls._settings_args(settings)
        return cls(host, api_key=key, **kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------- plumbing

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        model: str | None = None,
        error: type[LocalserveError] = EngineError,
    ) -> Any:
        try:
            response = await self._http.request(method, path, json=json)
        except _UNREACHABLE:
            raise wire.not_running(self.base_url) from None
        except httpx.TransportError as exc:
            raise wire.connection_lost(self.base_url, exc) from None
        body = wire.decode_body(response.content)
        wire.raise_for_error(response.status_code, body, model, error)
        return body

    async def stream(
        self,
        path: str,
        json: dict[str, Any],
        *,
        model: str | None = None,
        error: type[LocalserveError] = EngineError,
    ) -> AsyncGenerator[dict[str, Any]]:
        try:
            async with self._http.stream("POST", path, json=json) as response:
                if response.status_code >= 400:
                    body = wire.decode_body(await response.aread())
                    wire.raise_for_error(response.status_code, body, model, error)
                async for line in response.aiter_lines():
                    chunk = wire.decode_line(line, error)
                    if chunk is not None:
                        yield chunk
        except _UNREACHABLE:
            raise wire.not_running(self.base_url) from None
        except httpx.TransportError as exc:
            raise wire.connection_lost(self.base_url, exc) from None

    # ------------------------------------------------------------------ API

    async def ping(self) -> bool:
        try:
            response = await self._http.get("/")
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.text.startswith("localserve")

    async def version(self) -> str:
        return str((await self.request("GET", "/api/version"))["version"])

    async def tags(self) -> list[ListedModel]:
        body = await self.request("GET", "/api/tags")
        return [ListedModel.from_wire(m) for m in body["models"]]

    async def ps(self) -> list[RunningModel]:
        body = await self.request("GET", "/api/ps")
        return [RunningModel.from_wire(m) for m in body["models"]]

    async def show(self, model: str, *, verbose: bool = False) -> ShowResponse:
        body = await self.request(
            "POST", "/api/show", json={"model": model, "verbose": verbose}, model=model
        )
        return ShowResponse.from_wire(body)

    async def delete(self, model: str) -> None:
        await self.request("DELETE", "/api/delete", json={"model": model}, model=model)

    async def copy(self, source: str, destination: str) -> None:
        await self.request(
            "POST", "/api/copy", json={"source": source, "destination": destination}, model=source
        )

    @overload
    async def pull(self, model: str, *, stream: Literal[False] = False) -> ProgressResponse: ...
    @overload
    async def pull(
        self, model: str, *, stream: Literal[True]
    ) -> AsyncGenerator[ProgressResponse]: ...
    async def pull(
        self, model: str, *, stream: bool = False
    ) -> ProgressResponse | AsyncGenerator[ProgressResponse]:
        body = {"model": model, "stream": stream}
        if stream:
            chunks = self.stream("/api/pull", body, model=model, error=HubError)
            return _atyped(chunks, ProgressResponse.from_wire)
        return ProgressResponse.from_wire(
            await self.request("POST", "/api/pull", json=body, model=model, error=HubError)
        )

    @overload
    async def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: str | None = None,
        raw: bool = False,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        stream: Literal[False] = False,
    ) -> GenerateResponse: ...
    @overload
    async def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: str | None = None,
        raw: bool = False,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        stream: Literal[True],
    ) -> AsyncGenerator[GenerateResponse]: ...
    async def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: str | None = None,
        raw: bool = False,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        stream: bool = False,
    ) -> GenerateResponse | AsyncGenerator[GenerateResponse]:
        body = wire.generate_body(
            model,
            prompt,
            system=system,
            raw=raw,
            format=format,
            options=options,
            keep_alive=keep_alive,
            stream=stream,
        )
        if stream:
            chunks = self.stream("/api/generate", body, model=model)
            return _atyped(chunks, GenerateResponse.from_wire)
        return GenerateResponse.from_wire(
            await self.request("POST", "/api/generate", json=body, model=model)
        )

    @overload
    async def chat(
        self,
        model: str,
        messages: wire.Messages = (),
        *,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        think: bool | str | None = None,
        stream: Literal[False] = False,
    ) -> ChatResponse: ...
    @overload
    async def chat(
        self,
        model: str,
        messages: wire.Messages = (),
        *,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        think: bool | str | None = None,
        stream: Literal[True],
    ) -> AsyncGenerator[ChatResponse]: ...
    async def chat(
        self,
        model: str,
        messages: wire.Messages = (),
        *,
        format: wire.Format = None,
        options: wire.Options | None = None,
        keep_alive: wire.KeepAlive = None,
        think: bool | str | None = None,
        stream: bool = False,
    ) -> ChatResponse | AsyncGenerator[ChatResponse]:
        body = wire.chat_body(
            model,
            messages,
            format=format,
            options=options,
            keep_alive=keep_alive,
            stream=stream,
            think=think,
        )
        if stream:
            chunks = self.stream("/api/chat", body, model=model)
            return _atyped(chunks, ChatResponse.from_wire)
        return ChatResponse.from_wire(
            await self.request("POST", "/api/chat", json=body, model=model)
        )

    async def load(
        self, model: str, *, options: wire.Options | None = None, keep_alive: wire.KeepAlive = None
    ) -> ChatResponse:
        return await self.chat(model, (), options=options, keep_alive=keep_alive)

    async def unload(self, model: str) -> None:
        await self.chat(model, (), keep_alive=0)

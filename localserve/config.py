"""The one settings object: every LOCALSERVE_* variable, typed, with the paths derived from it.

docs/configuration.md documents every field; tests/test_config.py fails when one is missing.

Paths: with ``LOCALSERVE_HOME`` set, everything lives under it::

    $LOCALSERVE_HOME/
      models/     the model store (unless LOCALSERVE_MODELS says otherwise)
      state/      pid file, daemon log, chat history
      cache/      throwaway files

Without it, the platform's user data, state and cache directories (platformdirs).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from localserve.errors import InvalidOptionError

APP_NAME = "localserve"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds from Ollama's keep_alive forms: ``"5m"``, ``"1h"``, ``"30s"``, ``300``, ``-1``.

    Negative means "forever", 0 means "now"; callers give those their meaning.
    Go-style compound strings (``"1h30m"``) are accepted too, as Ollama takes them.
    """
    if isinstance(value, bool):
        raise InvalidOptionError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    parts = re.findall(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if parts and "".join(n + u for n, u in parts) == text.replace(" ", ""):
        return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    match = _DURATION.match(text)
    if not match:
        raise InvalidOptionError(
            f"invalid duration {value!r}", hint='use seconds or a string such as "5m" or "1h"'
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def split_host(value: str) -> tuple[str, int]:
    """``host[:port]`` (or ``http://host:port``) into its parts, with the default port."""
    text = value.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    if text.startswith("["):  # [::1]:11435
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    host = host or DEFAULT_HOST
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise InvalidOptionError(f"invalid LOCALSERVE_HOST {value!r}: bad port") from None
    if not 0 < port < 65536:
        raise InvalidOptionError(f"invalid LOCALSERVE_HOST {value!r}: port out of range")
    return host, port


class Settings(BaseSettings):
    """localserve's configuration, read from ``LOCALSERVE_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="LOCALSERVE_", extra="ignore", frozen=True)

    home: Path | None = Field(
        default=None,
        description="One root for everything: models, state (pid file, logs, history), cache.",
    )
    models: Path | None = Field(
        default=None, description="The model store only; overrides HOME/models."
    )
    host: str = Field(
        default=f"{DEFAULT_HOST}:{DEFAULT_PORT}",
        description="Address the daemon binds and the CLI talks to (host:port).",
    )
    keep_alive: str = Field(
        default="5m", description="How long an idle model stays loaded (duration; <0 forever)."
    )
    num_parallel: int = Field(
        default=4, ge=1, le=256, description="Sequences each loaded model decodes at once."
    )
    max_loaded_models: int = Field(
        default=3,
        ge=1,
        description="Models resident at once; the least recently used idle one goes.",
    )
    max_queue: int = Field(
        default=512, ge=1, description="Requests waiting for a slot before the daemon answers 503."
    )
    context_length: int = Field(
        default=4096,
        ge=16,
        description="Context per sequence, capped at the model's training context.",
    )
    speculative: str = Field(
        default="ngram",
        min_length=1,
        description="Speculative decoding: ngram (drafts from the sequence's own text), off, "
        "or the name of a draft model in the store that shares the model's vocabulary.",
    )
    draft_p_min: float = Field(
        default=0.75,
        ge=0.0,
        le=1.0,
        description="A draft model's guess is kept while its probability is at least this.",
    )
    max_images: int = Field(
        default=16, ge=0, description="Images and sounds one request may carry."
    )
    kv_cache_type: str = Field(
        default="f16",
        description="Type of the KV cache (f16, q8_0, q4_0...); a request's option wins.",
    )
    flash_attention: str = Field(
        default="auto",
        description="Flash attention: auto (where the backend has it), on or off.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="Bearer key the daemon requires; needed to bind beyond loopback."
    )
    origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra allowed browser origins for CORS (comma-separated).",
    )
    rpc_workers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="llama.cpp RPC workers (host:port, comma-separated) whose devices take layers.",
    )
    rpc_timeout: str = Field(
        default="2m",
        description="Longest wait for an RPC worker's answer before the model is unloaded.",
    )
    sched_spread: bool = Field(
        default=False,
        description=(
            "Spread a model's layers over every GPU and RPC worker in proportion to free "
            "memory, instead of filling the largest device first."
        ),
    )
    debug: bool = Field(default=False, description="Show tracebacks and log at debug level.")

    @field_validator("origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("keep_alive")
    @classmethod
    def _check_keep_alive(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("rpc_workers", mode="before")
    @classmethod
    def _split_rpc_workers(cls, value: object) -> object:
        from localserve.engine.rpc import parse_workers

        if isinstance(value, str):
            return list(parse_workers(value))
        if isinstance(value, list | tuple):
            return list(parse_workers([str(v) for v in value]))
        return value

    @field_validator("rpc_timeout")
    @classmethod
    def _check_rpc_timeout(cls, value: str) -> str:
        if parse_duration(value) <= 0:
            raise InvalidOptionError(f"invalid duration {value!r}: must be more than 0")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        split_host(value)
        return value

    @field_validator("kv_cache_type")
    @classmethod
    def _check_kv_cache_type(cls, value: str) -> str:
        from localserve.engine.options import kv_cache_type

        return kv_cache_type(value, "it")

    @field_validator("flash_attention")
    @classmethod
    def _check_flash_attention(cls, value: str, info: ValidationInfo) -> str:
        from localserve.engine.options import PLAIN_KV_CACHE_TYPES, flash_attention_mode

        mode = flash_attention_mode(value, "it")
        kv = info.data.get("kv_cache_type", "f16")
        if mode == "off" and kv not in PLAIN_KV_CACHE_TYPES:
            raise InvalidOptionError(
                f"a {kv} V cache (LOCALSERVE_KV_CACHE_TYPE) needs flash attention: "
                "set it to on or auto"
            )
        return mode

    # Derived paths. Nothing is created here: the store and the daemon make what they use.

    @cached_property
    def models_dir(self) -> Path:
        if self.models is not None:
            return self.models.expanduser().absolute()
        if self.home is not None:
            return self.home.expanduser().absolute() / "models"
        import platformdirs

        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "models"

    @cached_property
    def state_dir(self) -> Path:
        if self.home is not None:
            return self.home.expanduser().absolute() / "state"
        import platformdirs

        return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))

    @cached_property
    def cache_dir(self) -> Path:
        if self.home is not None:
            return self.home.expanduser().absolute() / "cache"
        import platformdirs

        return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))

    @property
    def bind(self) -> tuple[str, int]:
        """(host, port) for the daemon to bind and the client to reach."""
        return split_host(self.host)

    @property
    def keep_alive_seconds(self) -> float:
        return parse_duration(self.keep_alive)

    @property
    def rpc_timeout_seconds(self) -> float:
        return parse_duration(self.rpc_timeout)


def load_settings() -> Settings:
    """Read the environment now; raises InvalidOptionError on a bad value."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        raise InvalidOptionError(
            f"invalid LOCALSERVE_{field.upper()}: {first['msg'].removeprefix('Value error, ')}",
            hint="fix the environment variable; see docs/configuration.md",
        ) from None

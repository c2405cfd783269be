"""The one settings object: every LOCALSERVE_* variable, typed, with the paths derived from it,
and the parsers of the values it holds (durations, addresses, RPC workers, KV cache types,
flash attention modes, the debug switch, the one loopback check). Requests take some of
the same values (``kv_cache_type`` in a load's options), so runtime/options.py parses them
with these functions too: one vocabulary, one error message.

docs/configuration.md documents every field; tests/unit/test_config.py fails when one is missing.

Paths: with ``LOCALSERVE_HOME`` set, everything lives under it::

    $LOCALSERVE_HOME/
      models/     the model store (unless LOCALSERVE_MODELS says otherwise)
      state/      pid file, daemon log, chat history, kept responses (responses/)
      cache/      throwaway files

Without it, the platform's user data, state and cache directories (platformdirs).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Annotated, Final

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


# ------------------------------------------------------------------ the debug switch

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def parse_flag(value: str) -> bool:
    """A yes/no setting: 1/true/yes/on or 0/false/no/off (any case), else a clear error."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidOptionError(f"invalid switch {value!r}", hint="use 1 or 0 (true/false)")


def debug_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """LOCALSERVE_DEBUG, read without the rest of the settings: the CLI's error edge and the
    runner need it even when another variable is invalid. Unreadable counts as off."""
    try:
        return parse_flag(environ.get("LOCALSERVE_DEBUG", ""))
    except InvalidOptionError:
        return False


# ----------------------------------------------------------------------- addresses


def is_loopback(host: str) -> bool:
    """True for a name or address only this machine can reach: ``localhost``,
    127.0.0.0/8 and ``::1`` (bracketed or not). The daemon's bind check, its Host-header
    guard, the RPC worker's bind check and the CLI all ask this one function."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


DEFAULT_RPC_PORT: Final = 50052


def parse_endpoint(text: str) -> tuple[str, int]:
    """An RPC worker's ``host:port`` (``[v6]:port``; port 50052 when left out) into its parts."""
    value = text.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    else:
        host, port_text = value, ""
    try:
        port = int(port_text) if port_text else DEFAULT_RPC_PORT
    except ValueError:
        port = -1
    if not host or not 0 < port < 65536:
        raise InvalidOptionError(
            f"invalid RPC worker address {text!r}", hint="write host:port, such as 10.0.0.2:50052"
        )
    return host, port


def parse_workers(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"a:1,b:2"`` (or a list of such) into ``("a:1", "b:2")``, checked, duplicates dropped."""
    items = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    found: list[str] = []
    for item in items:
        if not item.strip():
            continue
        host, port = parse_endpoint(item)
        endpoint = f"{host}:{port}"
        if endpoint not in found:
            found.append(endpoint)
    return tuple(found)


# ------------------------------------------------------ KV cache and flash attention

# The KV cache types llama.cpp takes for type_k / type_v (llama-server's --cache-type-k
# list), Ollama's three first. f16, q8_0 and q4_0 have flash-attention kernels on every
# backend; the others run everywhere on the CPU, but a GPU build may lack kernels for
# them (CUDA builds them only with GGML_CUDA_FA_ALL_QUANTS) and run attention on the CPU.
KV_CACHE_TYPES: Final = ("f16", "q8_0", "q4_0", "f32", "bf16", "q4_1", "iq4_nl", "q5_0", "q5_1")
# Not quantized: no block size to respect, and no flash attention needed for the V cache.
PLAIN_KV_CACHE_TYPES: Final = frozenset({"f32", "f16", "bf16"})
FLASH_ATTENTION_MODES: Final = ("auto", "on", "off")
_FLASH_ALIASES: Final = {
    "auto": "auto",
    "on": "on",
    "true": "on",
    "1": "on",
    "enabled": "on",
    "off": "off",
    "false": "off",
    "0": "off",
    "disabled": "off",
}


def kv_cache_type(value: object, name: str = "kv_cache_type") -> str:
    """A KV cache type in llama.cpp's spelling (``Q8_0`` -> ``q8_0``), or a clear error."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in KV_CACHE_TYPES:
        raise InvalidOptionError(
            f"{name} must be one of {', '.join(KV_CACHE_TYPES)}, got {value!r}"
        )
    return text


def flash_attention_mode(value: object, name: str = "flash_attention") -> str:
    """``auto``, ``on`` or ``off`` (booleans and 1/0 as Ollama's OLLAMA_FLASH_ATTENTION)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    found = _FLASH_ALIASES.get(value.strip().lower()) if isinstance(value, str) else None
    if found is None:
        raise InvalidOptionError(
            f"{name} must be one of {', '.join(FLASH_ATTENTION_MODES)}, got {value!r}"
        )
    return found


def check_kv_flash_attention(kv_type: str, flash_attention: str) -> None:
    """llama.cpp reads a quantized V cache only through flash attention: refuse the
    combination here rather than let the context fail to build."""
    if kv_type not in PLAIN_KV_CACHE_TYPES and flash_attention == "off":
        raise InvalidOptionError(
            f"a {kv_type} V cache needs flash attention: set flash_attention to on or auto",
            hint="or use kv_cache_type f16 (LOCALSERVE_KV_CACHE_TYPE, LOCALSERVE_FLASH_ATTENTION)",
        )


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
    context_length: int | None = Field(
        default=None,
        ge=16,
        description="Context per sequence, capped at the model's training context; unset: "
        "the model's training length, at most 64k, as far as memory allows.",
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
    swa_full: bool = Field(
        default=False,
        description="Sliding-window layers (Gemma, gpt-oss) keep a cache as long as the "
        "context, as llama.cpp's --swa-full: several times the KV memory, but every cached "
        "prefix stays reusable without checkpoints, and cache reuse applies to them.",
    )
    cache_reuse: int = Field(
        default=0,
        ge=0,
        description="Reuse cached cells past a changed span of the prompt by shifting them, "
        "when at least this many tokens match (llama-server's --cache-reuse); 0: off.",
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
    cpu_repack: bool = Field(
        default=True,
        description="The CPU keeps weights in llama.cpp's repacked layouts (faster kernels "
        "that sum in another order); false computes as an RPC worker does, so that a local "
        "load and a split one give the same numbers.",
    )
    stream_ping: str = Field(
        default="5s",
        description="A streamed OpenAI answer with nothing to send for this long (a long "
        "prompt being read, a queue, a load) sends a `: ping` comment, so clients with a "
        "read timeout wait; 0 turns them off.",
    )
    responses_max_count: int = Field(
        default=1000,
        ge=0,
        description="Responses kept for previous_response_id (/v1/responses, store: true); "
        "beyond it the oldest go. 0 keeps none.",
    )
    responses_max_bytes: int = Field(
        default=256 << 20,
        ge=0,
        description="Bytes of kept responses on disk (each holds its conversation); beyond "
        "it the oldest go.",
    )
    debug: bool = Field(default=False, description="Show tracebacks and log at debug level.")

    @field_validator("debug", mode="before")
    @classmethod
    def _parse_debug(cls, value: object) -> object:
        return parse_flag(value) if isinstance(value, str) else value

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

    @field_validator("stream_ping")
    @classmethod
    def _check_stream_ping(cls, value: str) -> str:
        if parse_duration(value) < 0:
            raise InvalidOptionError(f"invalid duration {value!r}: must be 0 or more")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        split_host(value)
        return value

    @field_validator("kv_cache_type")
    @classmethod
    def _check_kv_cache_type(cls, value: str) -> str:
        return kv_cache_type(value, "it")

    @field_validator("flash_attention")
    @classmethod
    def _check_flash_attention(cls, value: str, info: ValidationInfo) -> str:
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

    @property
    def stream_ping_seconds(self) -> float | None:
        """Seconds between keepalives of an idle stream; None: none are sent."""
        return parse_duration(self.stream_ping) or None


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

"""The settings object: defaults, environment, derived paths, and complete docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from localserve.config import Settings, load_settings, parse_duration, split_host
from localserve.errors import InvalidOptionError

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    documented = set(re.findall(r"`(LOCALSERVE_[A-Z_]+)`", text))
    fields = {f"LOCALSERVE_{name.upper()}" for name in Settings.model_fields}
    assert fields - documented == set(), "add these to docs/configuration.md"
    assert documented - fields == set(), "docs/configuration.md mentions settings that do not exist"


def test_home_holds_everything(isolated_home: Path) -> None:
    settings = load_settings()
    assert settings.models_dir == isolated_home / "models"
    assert settings.state_dir == isolated_home / "state"
    assert settings.cache_dir == isolated_home / "cache"


def test_models_overrides_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated_home: Path
) -> None:
    monkeypatch.setenv("LOCALSERVE_MODELS", str(tmp_path / "big-disk"))
    settings = load_settings()
    assert settings.models_dir == tmp_path / "big-disk"
    assert settings.state_dir == isolated_home / "state"


def test_defaults_without_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCALSERVE_HOME")
    settings = load_settings()
    assert settings.models_dir.name == "models"
    assert "localserve" in str(settings.models_dir)
    assert settings.bind == ("127.0.0.1", 11435)
    assert settings.keep_alive_seconds == 300
    assert (settings.num_parallel, settings.max_queue, settings.context_length) == (4, 512, None)
    assert settings.stream_ping_seconds == 5
    assert settings.api_key is None
    assert settings.origins == []
    assert settings.debug is False


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALSERVE_HOST", "0.0.0.0:9000")
    monkeypatch.setenv("LOCALSERVE_NUM_PARALLEL", "8")
    monkeypatch.setenv("LOCALSERVE_ORIGINS", "http://a.test, http://b.test")
    monkeypatch.setenv("LOCALSERVE_API_KEY", "s3cret")
    monkeypatch.setenv("LOCALSERVE_DEBUG", "1")
    monkeypatch.setenv("LOCALSERVE_KEEP_ALIVE", "1h30m")
    settings = load_settings()
    assert settings.bind == ("0.0.0.0", 9000)
    assert settings.num_parallel == 8
    assert settings.origins == ["http://a.test", "http://b.test"]
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.debug is True
    assert settings.keep_alive_seconds == 5400


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LOCALSERVE_NUM_PARALLEL", "zero"),
        ("LOCALSERVE_NUM_PARALLEL", "0"),
        ("LOCALSERVE_MAX_QUEUE", "-5"),
        ("LOCALSERVE_HOST", "127.0.0.1:99999"),
        ("LOCALSERVE_HOST", "127.0.0.1:http"),
        ("LOCALSERVE_KEEP_ALIVE", "soon"),
    ],
)
def test_bad_values_are_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidOptionError) as info:
        load_settings()
    assert variable in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300),
        ("30s", 30),
        ("1h", 3600),
        ("1h30m", 5400),
        ("-1", -1),
        ("0", 0),
        (12, 12),
        (2.5, 2.5),
        ("250ms", 0.25),
        ("-1m", -60),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5 minutes", "m5", "1d", "nan", True])
def test_parse_duration_refuses(bad: str | bool) -> None:
    with pytest.raises(InvalidOptionError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("127.0.0.1:11435", ("127.0.0.1", 11435)),
        ("localhost", ("localhost", 11435)),
        ("http://0.0.0.0:8080/", ("0.0.0.0", 8080)),
        ("[::1]:9000", ("::1", 9000)),
        (":7000", ("127.0.0.1", 7000)),
    ],
)
def test_split_host(text: str, parts: tuple[str, int]) -> None:
    assert split_host(text) == parts

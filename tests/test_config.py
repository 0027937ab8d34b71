"""Settings: defaults, VECSERVE_* variables, flags winning over variables, refusal of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, settings_from_env


def test_defaults() -> None:
    settings = Settings()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.data_dir == Path("indexes")
    assert settings.device == "auto"
    assert Path(settings.model_name_or_path, "config.json").is_file()


def test_environment_variables_and_flag_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VECSERVE_LISTEN", "0.0.0.0:6000")
    monkeypatch.setenv("VECSERVE_DATA_DIR", "/tmp/somewhere")
    monkeypatch.setenv("VECSERVE_DEVICE", "cpu")
    monkeypatch.setenv("VECSERVE_MAX_TEXTS_PER_REQUEST", "7")
    settings = settings_from_env(listen="127.0.0.1:7000", model=None)
    assert settings.listen == "127.0.0.1:7000"
    assert settings.data_dir == Path("/tmp/somewhere")
    assert settings.device == "cpu"
    assert settings.max_texts_per_request == 7


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="device"):
        Settings(device="tpu")
    with pytest.raises(ValueError, match="max_texts_per_request"):
        Settings(max_texts_per_request=0)
    monkeypatch.setenv("VECSERVE_MAX_TEXT_CHARACTERS", "lots")
    with pytest.raises(ValueError, match="VECSERVE_MAX_TEXT_CHARACTERS"):
        settings_from_env()

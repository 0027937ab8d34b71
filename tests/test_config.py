"""Settings: defaults, VECSERVE_* variables, flags winning over variables, refusal of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.cli import build_parser
from clients.commands.serve import settings_from_args
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


def test_every_setting_has_a_serve_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Settings field can be given to `vecserve serve` (settings_from_args reads one flag per field),
    and the flag beats its VECSERVE_* variable."""
    monkeypatch.setenv("VECSERVE_INDEX_SNAPSHOT_EVERY", "7")
    parser = build_parser()
    args = parser.parse_args(
        [
            "serve",
            "--index-snapshot-every=100",
            "--max-documents-per-request=10",
            "--vocabulary-size=500",
            "--shutdown-grace-seconds=1.5",
        ]
    )
    settings = settings_from_args(args)
    assert settings.index_snapshot_every == 100
    assert settings.max_documents_per_request == 10
    assert settings.vocabulary_size == 500
    assert settings.shutdown_grace_seconds == 1.5
    assert settings_from_args(parser.parse_args(["serve"])).index_snapshot_every == 7

"""Shared fixtures: one real encoder and one real server per test session, on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import VecserveClient
from service.config import Settings, default_model_path
from service.embedding.batching import AUTO_MODEL_WORKERS, BatchingSettings
from service.embedding.encoder import Encoder
from service.grpc_server.server import RunningServer, create_server


@pytest.fixture(scope="session")
def encoder() -> Iterator[Encoder]:
    """The real default model on the CPU with dynamic batching as served (model workers chosen by the
    encoder), loaded once for the whole session."""
    loaded = Encoder(
        default_model_path(), device="cpu", batching=BatchingSettings(model_workers=AUTO_MODEL_WORKERS)
    )
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def backend_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose .models cache of built CPU backends is shared by the whole session
    (the backend tests and the benchmark run), so each build runs once."""
    return tmp_path_factory.mktemp("backend-data")


@pytest.fixture(scope="session")
def model_cache(backend_data_dir: Path) -> Path:
    return Settings(data_dir=backend_data_dir).model_cache_dir


@pytest.fixture(scope="session")
def server_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-data")


@pytest.fixture(scope="session")
def server(encoder: Encoder, server_data_dir: Path) -> Iterator[RunningServer]:
    """A real gRPC server on a free loopback port, shared by the session's tests."""
    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=server_data_dir,
        max_texts_per_request=64,
        max_text_characters=5000,
        max_message_bytes=4 * 1024 * 1024,
    )
    running = create_server(settings, encoder=encoder)
    yield running
    running.stop(grace=5)


@pytest.fixture(scope="session")
def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def client(address: str) -> Iterator[VecserveClient]:
    with VecserveClient(address, timeout=120) as connected:
        yield connected

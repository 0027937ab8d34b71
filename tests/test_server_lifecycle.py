"""The server process: graceful shutdown on SIGTERM/SIGINT with in-flight calls finishing."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from clients import VecserveClient
from tests.server_process import ServerProcess


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_in_flight_call_and_exits_zero(tmp_path: Path, signum: int) -> None:
    server = ServerProcess(tmp_path / "data", env={"VECSERVE_SHUTDOWN_GRACE_SECONDS": "120"}).start()
    try:
        outcome: dict[str, object] = {}

        def slow_call() -> None:
            with VecserveClient(server.address, timeout=120) as client:
                outcome["vectors"] = client.embed_array([f"sentence number {i} " * 20 for i in range(256)])

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(1.0)  # the call is in flight: 256 long texts take seconds on the CPU
        server.signal(signum)
        caller.join(timeout=120)
        assert server.wait(timeout=60) == 0
        assert outcome["vectors"].shape == (256, 384)  # type: ignore[union-attr]
        assert "shutting down" in server.log()
        with VecserveClient(server.address, timeout=3) as client, pytest.raises(grpc.RpcError) as caught:
            client.model_info()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.kill()


def test_a_taken_port_is_refused_and_releases_the_data_dir(encoder, server, tmp_path: Path) -> None:
    from service.config import Settings
    from service.errors import InvalidSettings
    from service.index_store import IndexStore
    from service.server import create_server

    data_dir = tmp_path / "second"
    with pytest.raises(InvalidSettings, match="cannot listen"):
        create_server(Settings(listen=f"127.0.0.1:{server.port}", data_dir=data_dir), encoder=encoder)
    IndexStore(data_dir).close()  # the failed server let go of the directory's lock

"""The server process: graceful shutdown on SIGTERM/SIGINT with in-flight calls finishing."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from clients import VecserveClient
from clients.local_server import ServerProcess, free_port


def wait_for_a_call_in_flight(metrics_address: str, timeout: float = 60.0) -> None:
    """Until the server's metrics count an RPC being handled (a fixed sleep raced a loaded machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as page:
            for line in page.read().decode().splitlines():
                if line.startswith("vecserve_grpc_requests_in_flight ") and float(line.split()[1]) >= 1:
                    return
        time.sleep(0.01)
    raise TimeoutError("no call in flight")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_in_flight_call_and_exits_zero(tmp_path: Path, signum: int) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    server = ServerProcess(
        tmp_path / "data", "--metrics-listen", metrics, env={"VECSERVE_SHUTDOWN_GRACE_SECONDS": "120"}
    ).start()
    try:
        outcome: dict[str, object] = {}

        def slow_call() -> None:
            with VecserveClient(server.address, timeout=120) as client:
                outcome["vectors"] = client.embed_array([f"sentence number {i} " * 20 for i in range(256)])

        caller = threading.Thread(target=slow_call)
        caller.start()
        wait_for_a_call_in_flight(metrics)  # 256 long texts then take seconds on the CPU
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
    from service.grpc_server.server import create_server
    from service.index.store import IndexStore

    data_dir = tmp_path / "second"
    with pytest.raises(InvalidSettings, match="cannot listen"):
        create_server(Settings(listen=f"127.0.0.1:{server.port}", data_dir=data_dir), encoder=encoder)
    IndexStore(data_dir).close()  # the failed server let go of the directory's lock

"""Limits that protect the server's memory: a search answer larger than the message limit is refused
with RESOURCE_EXHAUSTED and a message that says what to change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients import VecserveClient
from service.config import Settings
from service.embedding.encoder import Encoder
from service.grpc_server.server import create_server

LIMIT = 32 * 1024


@pytest.fixture(scope="module")
def small_messages(encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VecserveClient]:
    data_dir: Path = tmp_path_factory.mktemp("limits")
    running = create_server(
        Settings(listen="127.0.0.1:0", data_dir=data_dir, max_message_bytes=LIMIT), encoder=encoder
    )
    with VecserveClient(f"127.0.0.1:{running.port}", timeout=60) as client:
        client.create_index("long", dimension=4)
        client.upsert(
            "long",
            [
                {"id": f"d{n}", "text": f"{n} " + "long text " * 100, "vector": [1.0, n, 2.0, 3.0]}
                for n in range(20)
            ],
        )
        yield client
    running.stop(grace=2)


def test_a_search_answer_over_the_message_limit_is_refused(small_messages: VecserveClient) -> None:
    queries = [[1.0, 1.0, 1.0, 1.0]] * 4
    with pytest.raises(grpc.RpcError) as caught:
        small_messages.search("long", queries, k=20)  # 80 hits of about 1 kB each
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "lower k" in caught.value.details() and "--max-message-bytes" in caught.value.details()


def test_a_search_answer_within_the_limit_is_served(small_messages: VecserveClient) -> None:
    (hits,) = small_messages.search("long", [[1.0, 1.0, 1.0, 1.0]], k=5)
    assert len(hits) == 5

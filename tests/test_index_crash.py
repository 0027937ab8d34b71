"""Crash safety: a server process is killed with SIGKILL at random moments while clients write to it;
after each restart every acknowledged write must be there, searchable, and the counts consistent."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import VecserveClient
from clients.local_server import ServerProcess

DIMENSION = 32
KILLS = 5
WRITES_BEFORE_KILL = 10
VECTOR_INDEXES = ("flat", "graph")


@dataclass
class Ledger:
    """What the client knows: acknowledged documents, and writes whose fate a kill left unknown."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # id -> vector, for every id ever sent
    texts: dict[str, str] = field(default_factory=dict)
    present: dict[str, set[str]] = field(default_factory=dict)  # index -> acknowledged, not deleted
    uncertain_upserts: dict[str, set[str]] = field(default_factory=dict)
    uncertain_deletes: dict[str, set[str]] = field(default_factory=dict)
    deleted: dict[str, set[str]] = field(default_factory=dict)  # acknowledged deletions
    acknowledged_writes: int = 0
    unexpected_errors: list[grpc.RpcError] = field(default_factory=list)

    def __post_init__(self) -> None:
        for index in (*VECTOR_INDEXES, "texts"):
            for table in (self.present, self.uncertain_upserts, self.uncertain_deletes, self.deleted):
                table[index] = set()


def note_cut_off(ledger: Ledger, error: grpc.RpcError) -> None:
    """A kill shows as UNAVAILABLE (or a cancelled stream); any other failure is a bug."""
    if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        ledger.unexpected_errors.append(error)


def write_until_killed(address: str, ledger: Ledger, rng: random.Random, counter: list[int]) -> None:
    """Streams, upserts and deletes until the server dies; records what was acknowledged."""
    vector_rng = np.random.default_rng(rng.randrange(2**32))
    with VecserveClient(address, timeout=30) as client:
        while True:
            choice = rng.random()
            index = rng.choice(VECTOR_INDEXES)
            if choice < 0.6:
                batches = []
                for _ in range(rng.randint(1, 4)):
                    batch = []
                    for _ in range(rng.randint(5, 40)):
                        counter[0] += 1
                        document_id = f"v{counter[0]}"
                        ledger.vectors[document_id] = vector_rng.standard_normal(DIMENSION).astype(np.float32)
                        batch.append({"id": document_id, "vector": ledger.vectors[document_id]})
                    batches.append(batch)
                ids = {d["id"] for batch in batches for d in batch}
                ledger.uncertain_upserts[index] |= ids
                try:
                    client.stream_upsert(index, batches, timeout=30)
                except grpc.RpcError as error:
                    return note_cut_off(ledger, error)
                ledger.uncertain_upserts[index] -= ids
                ledger.present[index] |= ids
            elif choice < 0.8 and ledger.present[index]:
                ids = set(rng.sample(sorted(ledger.present[index]), min(10, len(ledger.present[index]))))
                ledger.uncertain_deletes[index] |= ids
                try:
                    client.delete_documents(index, sorted(ids))
                except grpc.RpcError as error:
                    return note_cut_off(ledger, error)
                ledger.uncertain_deletes[index] -= ids
                ledger.present[index] -= ids
                ledger.deleted[index] |= ids
            else:
                counter[0] += 1
                document_id = f"t{counter[0]}"
                ledger.texts[document_id] = (
                    f"note {counter[0]}: {rng.choice(['rain', 'sun', 'snow'])} in town"
                )
                ledger.uncertain_upserts["texts"].add(document_id)
                try:
                    client.upsert("texts", [{"id": document_id, "text": ledger.texts[document_id]}])
                except grpc.RpcError as error:
                    return note_cut_off(ledger, error)
                ledger.uncertain_upserts["texts"].discard(document_id)
                ledger.present["texts"].add(document_id)
            ledger.acknowledged_writes += 1


def settle_uncertain(client: VecserveClient, ledger: Ledger) -> None:
    """After a restart, writes cut off by the kill are either wholly there or not: find out which."""
    for index in ledger.present:
        for document_id in sorted(ledger.uncertain_upserts[index] | ledger.uncertain_deletes[index]):
            try:
                client.get_document(index, document_id)
                ledger.present[index].add(document_id)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
                ledger.present[index].discard(document_id)
        ledger.uncertain_upserts[index].clear()
        ledger.uncertain_deletes[index].clear()


def check_everything(client: VecserveClient, ledger: Ledger) -> None:
    for index in VECTOR_INDEXES:
        present = sorted(ledger.present[index])
        assert client.get_index(index).document_count == len(present), index
        # Every acknowledged document is found first by its own vector.
        for start in range(0, len(present), 500):
            chunk = present[start : start + 500]
            results = client.search(index, [ledger.vectors[i] for i in chunk], k=1)
            assert [hits[0].id for hits in results] == chunk, index
        for document_id in sorted(ledger.deleted[index] - ledger.present[index])[:200]:
            with pytest.raises(grpc.RpcError) as caught:
                client.get_document(index, document_id)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    texts = sorted(ledger.present["texts"])
    assert client.get_index("texts").document_count == len(texts)
    if texts:
        results = client.search("texts", [ledger.texts[i] for i in texts], k=1)
        assert [hits[0].id for hits in results] == texts


def wait_for_writes(ledger: Ledger, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while ledger.acknowledged_writes < count and not ledger.unexpected_errors:
        assert time.monotonic() < deadline, f"only {ledger.acknowledged_writes} writes acknowledged"
        time.sleep(0.05)


@pytest.mark.slow
def test_every_acknowledged_write_survives_kill_9(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    data_dir = tmp_path / "data"
    # Frequent snapshots, so that kills also land during snapshots and restarts catch up from them.
    environment = {"VECSERVE_INDEX_SNAPSHOT_EVERY": "500"}
    ledger = Ledger()
    counter = [0]
    server = ServerProcess(data_dir, env=environment).start()
    try:
        with VecserveClient(server.address, timeout=60) as client:
            client.create_index("flat", dimension=DIMENSION)
            client.create_index("graph", dimension=DIMENSION, kind="hnsw")
            client.create_index("texts")
        for _ in range(KILLS):
            writer = threading.Thread(target=write_until_killed, args=(server.address, ledger, rng, counter))
            writer.start()
            # Some acknowledged writes first (a busy server may start slowly), then a random moment.
            wait_for_writes(ledger, ledger.acknowledged_writes + WRITES_BEFORE_KILL)
            time.sleep(rng.uniform(0.2, 2.0))
            server.kill()
            writer.join(timeout=60)
            assert not writer.is_alive()
            assert not ledger.unexpected_errors, ledger.unexpected_errors
            server = ServerProcess(data_dir, env=environment).start()
            with VecserveClient(server.address, timeout=120) as client:
                settle_uncertain(client, ledger)
                check_everything(client, ledger)
        assert ledger.acknowledged_writes >= WRITES_BEFORE_KILL * KILLS
        assert all(ledger.present[index] for index in VECTOR_INDEXES)
        assert any(ledger.deleted[index] for index in VECTOR_INDEXES)
    finally:
        server.kill()

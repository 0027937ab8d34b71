"""Background builds (training, HNSW compaction): held at their start on an event, they must leave
writes and searches free to go on, lose none of the changes made meanwhile, and survive a crash."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from vecserve.v1 import index_pb2

from clients import VecserveClient
from clients.local_server import ServerProcess
from service.index import open_index
from service.index import store as index_store
from service.index.model import Document, HnswParams, IvfParams, Query
from service.index.record import FrozenRecord
from service.index.store import IndexStore
from tests.waiting import wait_until

DIMENSION = 16
LISTS = IvfParams(nlist=4, nprobe=4)  # every list probed: once trained, answers equal exact search
THRESHOLD = 39 * LISTS.nlist
GRAPH = HnswParams(m=16, ef_construction=64, ef_search=64)


class HeldBuilds:
    """Holds every background build at its start until released, and notes each build's niceness."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()
        self.niceness: list[int] = []
        self.builds = 0

    def wrap(self, build: Callable[[open_index.OpenIndex, FrozenRecord], object]) -> Callable[..., object]:
        def held(index: open_index.OpenIndex, frozen: FrozenRecord) -> object:
            self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            self.builds += 1
            self.started.set()
            self.released.wait()
            return build(index, frozen)

        return held


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IndexStore]:
    opened = IndexStore(tmp_path / "data")
    yield opened
    opened.close()


@pytest.fixture
def held(store: IndexStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldBuilds]:
    """Depends on `store`, so it releases the builds before the store is closed."""
    holder = HeldBuilds()
    monkeypatch.setattr(
        open_index.OpenIndex, "_build_structure", holder.wrap(open_index.OpenIndex._build_structure)
    )
    yield holder
    holder.released.set()


def clustered_vectors(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((20, DIMENSION))
    points = centres[rng.integers(0, len(centres), count)] + 0.35 * rng.standard_normal((count, DIMENSION))
    return points.astype(np.float32)


def returns(call: Callable[[], object]) -> object:
    """The call's result, run in another thread: a call blocked by a build fails the test instead of
    hanging it (the timeout is a safety net, not a bound the test relies on)."""
    outcome: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the call is still blocked while the build is held"
    if errors:
        raise errors[0]
    return outcome[0]


class Mirror:
    """Applies the same writes to an index and to an exact (flat) index: the truth to compare with."""

    def __init__(self, store: IndexStore, name: str) -> None:
        self.store, self.name, self.truth = store, name, f"{name}-exact"
        store.create_index(self.truth, DIMENSION)
        self.live: dict[str, np.ndarray] = {}
        self.deleted: set[str] = set()

    def upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        documents = [Document(id=i, vector=v) for i, v in zip(ids, vectors, strict=True)]
        for name in (self.name, self.truth):
            self.store.upsert(name, documents)
        self.live.update(zip(ids, vectors, strict=True))
        self.deleted -= set(ids)

    def delete(self, ids: list[str]) -> None:
        for name in (self.name, self.truth):
            self.store.delete_documents(name, ids)
        for document_id in ids:
            self.live.pop(document_id)
        self.deleted |= set(ids)

    def check(self, store: IndexStore | None = None, **tuning: int) -> None:
        """Same count, every live document found by its own vector, and top 10 equal to exact search."""
        store = store or self.store
        assert store.get_index(self.name).document_count == len(self.live)
        ids = sorted(self.live)
        own = store.search(self.name, [Query(vector=self.live[i]) for i in ids], k=1, **tuning)
        assert [hits[0].id for hits in own] == ids
        queries = [Query(vector=v) for v in clustered_vectors(30, seed=99)]
        found = store.search(self.name, queries, k=10, **tuning)
        truth = store.search(self.truth, queries, k=10)
        assert [[h.id for h in hits] for hits in found] == [[h.id for h in hits] for hits in truth]
        for got, expected in zip(found, truth, strict=True):
            assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-4)
        everything = store.search(self.name, queries[:1], k=len(self.live) + len(self.deleted), **tuning)
        assert not {h.id for h in everything[0]} & self.deleted


def writes_during_the_build(mirror: Mirror, vectors: np.ndarray, first_new: int, last_new: int) -> None:
    """New documents, replacements of old ones, deletions of old ones and of some of the new ones."""
    new_ids = [f"doc-{i}" for i in range(first_new, last_new)]
    mirror.upsert(new_ids, vectors[first_new:last_new])
    mirror.upsert([f"doc-{i}" for i in range(10)], vectors[last_new : last_new + 10])
    mirror.delete([f"doc-{i}" for i in range(10, 30)] + new_ids[:5])


def test_writes_and_searches_go_on_while_training_is_held(store: IndexStore, held: HeldBuilds) -> None:
    store.create_index("lists", DIMENSION, kind="ivf_flat", params=LISTS)
    mirror = Mirror(store, "lists")
    vectors = clustered_vectors(400, seed=1)
    mirror.upsert([f"doc-{i}" for i in range(THRESHOLD)], vectors[:THRESHOLD])
    assert held.started.wait(timeout=120), "no training was started at the threshold"

    # Training is held: writes and searches return, answered by the exact stand-in.
    returns(lambda: writes_during_the_build(mirror, vectors, THRESHOLD, 300))
    returns(mirror.check)
    assert not store.get_index("lists").trained

    held.released.set()
    store.wait_for_builds("lists")
    assert store.get_index("lists").trained and held.builds == 1
    mirror.check()
    # The trained structure was snapshotted: a restart serves it without training again.
    store.close()
    reopened = IndexStore(store.data_dir)
    try:
        assert reopened.get_index("lists").trained
        mirror.check(reopened)
        assert held.builds == 1
    finally:
        reopened.close()


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_builds_run_at_a_lower_cpu_priority(store: IndexStore, held: HeldBuilds) -> None:
    store.create_index("lists", DIMENSION, kind="ivf_flat", params=LISTS)
    vectors = clustered_vectors(THRESHOLD, seed=2)
    store.upsert("lists", [Document(id=f"doc-{i}", vector=v) for i, v in enumerate(vectors)])
    held.released.set()
    store.wait_for_builds("lists")
    assert held.niceness == [min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)]


def test_hnsw_compaction_runs_aside_and_keeps_the_changes_made_meanwhile(
    store: IndexStore, held: HeldBuilds
) -> None:
    store.create_index("graph", DIMENSION, kind="hnsw", params=GRAPH)
    mirror = Mirror(store, "graph")
    vectors = clustered_vectors(400, seed=3)
    mirror.upsert([f"doc-{i}" for i in range(300)], vectors[:300])
    memory_before = store.get_index("graph").memory_bytes
    mirror.delete([f"doc-{i}" for i in range(200, 300)])  # a third: past the compaction fraction
    assert held.started.wait(timeout=120), "no compaction was started"

    returns(lambda: writes_during_the_build(mirror, vectors, 300, 340))
    returns(lambda: mirror.check(ef_search=400))

    held.released.set()
    store.wait_for_builds("graph")
    assert held.builds == 1
    # The graph holds the 200 kept and the 40 added, not the 100 deleted before the build.
    assert store.get_index("graph").memory_bytes < 0.9 * memory_before
    mirror.check(ef_search=400)
    store.close()
    reopened = IndexStore(store.data_dir)
    try:
        mirror.check(reopened, ef_search=400)
    finally:
        reopened.close()


def test_a_crash_during_a_build_loses_no_acknowledged_write(
    store: IndexStore, held: HeldBuilds, tmp_path: Path
) -> None:
    store.create_index("lists", DIMENSION, kind="ivf_flat", params=LISTS)
    mirror = Mirror(store, "lists")
    vectors = clustered_vectors(400, seed=4)
    mirror.upsert([f"doc-{i}" for i in range(THRESHOLD)], vectors[:THRESHOLD])
    assert held.started.wait(timeout=120)
    returns(lambda: writes_during_the_build(mirror, vectors, THRESHOLD, 300))
    store.snapshot("lists")  # a snapshot of the stand-in, taken while the build is held
    # The files as a kill -9 at this moment would leave them.
    image = tmp_path / "crashed"
    shutil.copytree(store.data_dir, image, ignore=shutil.ignore_patterns(index_store.LOCK_FILE))

    held.released.set()
    recovered = IndexStore(image)
    try:
        mirror.check(recovered)
        # The build is asked for again on start, and runs.
        recovered.wait_for_builds("lists")
        assert recovered.get_index("lists").trained
        mirror.check(recovered)
    finally:
        recovered.close()


def test_closing_with_builds_running_and_queued_loses_nothing(store: IndexStore, held: HeldBuilds) -> None:
    vectors = clustered_vectors(THRESHOLD, seed=5)
    mirrors = []
    for name in ("first", "second"):
        store.create_index(name, DIMENSION, kind="ivf_flat", params=LISTS)
        mirrors.append(Mirror(store, name))
        mirrors[-1].upsert([f"doc-{i}" for i in range(THRESHOLD)], vectors)
    assert held.started.wait(timeout=120)
    # One build at a time: the first is held, the second waits behind it.
    assert held.builds == 1
    closing = threading.Thread(target=store.close)
    closing.start()
    held.released.set()
    closing.join()
    reopened = IndexStore(store.data_dir)
    try:
        for mirror in mirrors:
            reopened.wait_for_builds(mirror.name)
            assert reopened.get_index(mirror.name).trained
            mirror.check(reopened)
    finally:
        reopened.close()


def test_an_index_deleted_during_its_build_is_gone(store: IndexStore, held: HeldBuilds) -> None:
    store.create_index("lists", DIMENSION, kind="ivf_flat", params=LISTS)
    vectors = clustered_vectors(THRESHOLD, seed=6)
    store.upsert("lists", [Document(id=f"doc-{i}", vector=v) for i, v in enumerate(vectors)])
    assert held.started.wait(timeout=120)
    returns(lambda: store.delete_index("lists"))
    held.released.set()
    store.create_index("lists", DIMENSION, kind="ivf_flat", params=LISTS)
    store.wait_for_builds("lists")
    assert store.get_index("lists").document_count == 0
    assert not store.get_index("lists").trained


@pytest.mark.slow
def test_a_kill_9_during_training_loses_no_acknowledged_write(tmp_path: Path) -> None:
    nlist = 128  # enough vectors to train on (39 per list) that the build takes a while
    vectors = clustered_vectors(39 * nlist + 400, seed=7)
    live = {f"doc-{i}": vectors[i] for i in range(39 * nlist)}
    server = ServerProcess(tmp_path / "data").start()
    try:
        with VecserveClient(server.address, timeout=120) as client:
            client.create_index(
                "lists", dimension=DIMENSION, params=index_pb2.IvfParams(nlist=nlist, nprobe=nlist)
            )
            ids = sorted(live, key=lambda i: int(i.split("-")[1]))
            client.stream_upsert(
                "lists",
                [
                    [{"id": i, "vector": live[i]} for i in ids[start : start + 500]]
                    for start in range(0, len(ids), 500)
                ],
            )
            wait_until(
                lambda: "index lists: training" in server.log_path.read_text(), "the training to start"
            )
            # Acknowledged while the build runs (or just after, on a fast machine): all must survive.
            added = {f"doc-{i}": vectors[i] for i in range(39 * nlist, len(vectors))}
            client.upsert("lists", [{"id": i, "vector": v} for i, v in added.items()])
            live.update(added)
            deleted = [f"doc-{i}" for i in range(0, 39 * nlist + 400, 50)]
            client.delete_documents("lists", deleted)
            for document_id in deleted:
                live.pop(document_id)
        server.kill()

        server = ServerProcess(tmp_path / "data").start()
        with VecserveClient(server.address, timeout=120) as client:

            def check() -> None:
                assert client.get_index("lists").document_count == len(live)
                ids = sorted(live)
                for start in range(0, len(ids), 1000):
                    chunk = ids[start : start + 1000]
                    results = client.search("lists", [live[i] for i in chunk], k=1)
                    assert [hits[0].id for hits in results] == chunk
                for document_id in deleted[:20]:
                    with pytest.raises(grpc.RpcError) as caught:
                        client.get_document("lists", document_id)
                    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

            check()
            wait_until(lambda: client.get_index("lists").trained, "the index to be trained after the restart")
            check()
    finally:
        server.kill()

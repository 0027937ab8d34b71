"""Snapshots written aside: held in the middle of their disk write, they must leave writes, deletes and
searches free to go on, cover exactly the structure they copied, and leave a loadable state at every
moment; a failed background build is tried again later, not in a loop."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import grpc
import numpy as np
import pytest

from clients import VecserveClient
from clients.local_server import ServerProcess
from service.index import open_index, snapshots
from service.index import store as index_store
from service.index.kinds import structure_ids
from service.index.model import Document
from service.index.store import IndexStore
from tests.test_index_background import (
    DIMENSION,
    GRAPH,
    LISTS,
    THRESHOLD,
    Mirror,
    clustered_vectors,
    returns,
)
from tests.waiting import wait_until


class HeldSnapshot:
    """Holds the first snapshot written from now on until released: in the middle of writing its file
    ("file"), or once the file is complete and renamed but not yet named by the manifest ("manifest")."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
        self.started = threading.Event()
        self.released = threading.Event()
        self._taken = threading.Lock()
        self._held = False
        self.niceness: int | None = None  # of the thread writing the held snapshot
        if point == "file":
            write = snapshots._ChecksummedWriter.write

            def held_write(writer: snapshots._ChecksummedWriter, block: bytes) -> int:
                if writer.size:  # some of the file is written
                    self._hold()
                return write(writer, block)

            monkeypatch.setattr(snapshots._ChecksummedWriter, "write", held_write)
        else:
            durable_file = snapshots._durable_file

            @contextlib.contextmanager
            def held_durable_file(directory: int, name: str) -> Iterator[BinaryIO]:
                if name == snapshots.MANIFEST_FILE:
                    self._hold()
                with durable_file(directory, name) as handle:
                    yield handle

            monkeypatch.setattr(snapshots, "_durable_file", held_durable_file)

    def _hold(self) -> None:
        with self._taken:
            if self._held:
                return
            self._held = True
        self.niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        self.started.set()
        self.released.wait()


class Background:
    """A call run in a thread of its own, whose outcome (or error) is checked when it is joined."""

    def __init__(self, call: Callable[[], object]) -> None:
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(call,))
        self._thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as error:
            self._errors.append(error)

    def join(self) -> None:
        self._thread.join(timeout=120)  # a safety net against a hang, not a bound relied on
        assert not self._thread.is_alive()
        if self._errors:
            raise self._errors[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IndexStore]:
    opened = IndexStore(tmp_path / "data")
    yield opened
    opened.close()


def snapshot_ids(index_dir: Path) -> set[int]:
    """The FAISS ids the snapshot named by the manifest holds (it must be intact)."""
    structure = snapshots.read_snapshot(index_dir, lambda _: True, index_dir.name)
    assert structure is not None
    return set(structure_ids(structure).tolist())


def generation(index_dir: Path) -> int:
    return int(json.loads((index_dir / snapshots.MANIFEST_FILE).read_text())["generation"])


def changes_during_the_snapshot(mirror: Mirror, vectors: np.ndarray) -> None:
    """New documents, replacements of old ones and deletions, with searches between them."""
    mirror.upsert([f"doc-{i}" for i in range(300, 340)], vectors[300:340])
    mirror.check()
    mirror.upsert([f"doc-{i}" for i in range(10)], vectors[340:350])
    mirror.delete([f"doc-{i}" for i in range(10, 30)] + ["doc-300"])
    mirror.check()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_writes_deletes_and_searches_go_on_while_a_snapshot_is_held(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    store.create_index("docs", DIMENSION, kind=kind, params=GRAPH if kind == "hnsw" else None)
    mirror = Mirror(store, "docs")
    vectors = clustered_vectors(400, seed=11)
    mirror.upsert([f"doc-{i}" for i in range(300)], vectors[:300])  # FAISS ids 1 to 300
    index_dir = store.data_dir / "docs"
    held = HeldSnapshot(monkeypatch, "file")
    snapshot = Background(lambda: store.snapshot("docs"))
    assert held.started.wait(timeout=120)

    returns(lambda: changes_during_the_snapshot(mirror, vectors))
    assert not (index_dir / snapshots.MANIFEST_FILE).exists()
    if sys.platform == "linux":  # written at low CPU priority
        assert held.niceness == min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)

    held.released.set()
    snapshot.join()
    # The snapshot holds the structure as it was copied, before the changes; the record the rest.
    assert snapshot_ids(index_dir) == set(range(1, 301))
    assert store._indexes["docs"].changes_since_snapshot == 40 + 2 * 10 + 21
    mirror.check()
    store.close()
    reopened = IndexStore(store.data_dir)
    try:
        mirror.check(reopened)
    finally:
        reopened.close()


def test_a_snapshot_of_an_unchanged_index_writes_nothing(store: IndexStore) -> None:
    store.create_index("docs", DIMENSION)
    store.upsert("docs", [Document(id="a", vector=np.ones(DIMENSION, dtype=np.float32))])
    store.snapshot("docs")
    store.snapshot("docs")
    assert generation(store.data_dir / "docs") == 1


@pytest.mark.parametrize("point", ["file", "manifest"])
def test_a_crash_during_a_snapshot_loses_no_acknowledged_write(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, point: str
) -> None:
    store.create_index("docs", DIMENSION, kind="hnsw", params=GRAPH)
    mirror = Mirror(store, "docs")
    vectors = clustered_vectors(400, seed=12)
    mirror.upsert([f"doc-{i}" for i in range(200)], vectors[:200])
    store.snapshot("docs")  # generation 1, ids 1 to 200
    mirror.upsert([f"doc-{i}" for i in range(200, 300)], vectors[200:300])
    held = HeldSnapshot(monkeypatch, point)
    snapshot = Background(lambda: store.snapshot("docs"))
    assert held.started.wait(timeout=120)
    returns(lambda: changes_during_the_snapshot(mirror, vectors))
    # The files as a kill -9 at this moment would leave them: the manifest still names generation 1.
    image = tmp_path / "crashed"
    shutil.copytree(store.data_dir, image, ignore=shutil.ignore_patterns(index_store.LOCK_FILE))
    held.released.set()
    snapshot.join()

    assert generation(image / "docs") == 1
    assert snapshot_ids(image / "docs") == set(range(1, 201))
    recovered = IndexStore(image)
    try:
        mirror.check(recovered)
    finally:
        recovered.close()
    assert not list((image / "docs").glob("*.tmp"))  # what the crash left was removed
    # The snapshot finished in the live directory: generation 2, the structure as copied.
    assert generation(store.data_dir / "docs") == 2
    assert snapshot_ids(store.data_dir / "docs") == set(range(1, 301))


def test_an_index_deleted_during_its_snapshot_is_gone(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_index("docs", DIMENSION)
    vectors = clustered_vectors(300, seed=13)
    store.upsert("docs", [Document(id=f"doc-{i}", vector=v) for i, v in enumerate(vectors)])
    held = HeldSnapshot(monkeypatch, "file")
    snapshot = Background(lambda: store.snapshot("docs"))
    assert held.started.wait(timeout=120)

    # The deletion does not wait for the snapshot's disk write, and the name is free again at once.
    returns(lambda: store.delete_index("docs"))
    store.create_index("docs", DIMENSION)
    held.released.set()
    snapshot.join()
    # The old snapshot stopped: nothing of it reached the new index of the same name.
    assert store.get_index("docs").document_count == 0
    assert not [path.name for path in (store.data_dir / "docs").iterdir() if path.name.startswith("snapshot")]
    assert not list(store.data_dir.glob(".deleting-*"))


def test_closing_during_a_snapshot_finishes_it_and_saves_the_rest(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_index("docs", DIMENSION, kind="hnsw", params=GRAPH)
    mirror = Mirror(store, "docs")
    vectors = clustered_vectors(400, seed=14)
    mirror.upsert([f"doc-{i}" for i in range(300)], vectors[:300])
    held = HeldSnapshot(monkeypatch, "file")
    snapshot = Background(lambda: store.snapshot("docs"))
    assert held.started.wait(timeout=120)
    returns(lambda: changes_during_the_snapshot(mirror, vectors))
    closing = Background(store.close)
    held.released.set()
    snapshot.join()
    closing.join()

    index_dir = store.data_dir / "docs"
    # The held snapshot, then the final one with the changes made meanwhile.
    assert generation(index_dir) == 2
    reopened = IndexStore(store.data_dir)
    try:
        assert reopened._indexes["docs"].changes_since_snapshot == 0  # nothing to catch up
        mirror.check(reopened)
    finally:
        reopened.close()


class FailingBuilds:
    """Fails the first `failures` builds on purpose, then builds for real; counts the builds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.builds = 0

    def wrap(self, build: Callable[..., Any]) -> Callable[..., Any]:
        def failing(index: open_index.OpenIndex, frozen: Any) -> Any:
            self.builds += 1
            if self.builds <= self.failures:
                raise MemoryError(f"build {self.builds} failed on purpose")
            return build(index, frozen)

        return failing


def test_a_failed_build_is_tried_again_after_more_writes(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    retry = 20
    monkeypatch.setattr(open_index, "BUILD_RETRY_CHANGES", retry)
    failing = FailingBuilds(failures=2)
    monkeypatch.setattr(
        open_index.OpenIndex, "_build_structure", failing.wrap(open_index.OpenIndex._build_structure)
    )
    store.create_index("lists", DIMENSION, kind="ivf_flat", params=LISTS)
    mirror = Mirror(store, "lists")
    vectors = clustered_vectors(THRESHOLD + 3 * retry, seed=15)
    written = 0

    def write(count: int) -> None:
        nonlocal written
        mirror.upsert(
            [f"doc-{i}" for i in range(written, written + count)], vectors[written : written + count]
        )
        written += count
        store.wait_for_builds("lists")

    with caplog.at_level(logging.WARNING, logger=open_index.__name__):
        write(THRESHOLD)
        assert failing.builds == 1
        # The index serves meanwhile, from the structure in place; no build until `retry` changes.
        assert not store.get_index("lists").trained
        mirror.check()
        write(retry - 1)
        assert failing.builds == 1
        write(1)  # tried again, and fails again: the next try waits twice as long
        assert failing.builds == 2
        write(2 * retry - 1)
        assert failing.builds == 2 and not store.get_index("lists").trained
        write(1)
    assert failing.builds == 3
    assert store.get_index("lists").trained
    mirror.check()
    failures = [record for record in caplog.records if "background build failed" in record.getMessage()]
    assert [record.levelno for record in failures] == [logging.ERROR, logging.WARNING]
    assert "build 1 failed on purpose" in failures[0].getMessage() and failures[0].exc_info
    assert f"tried again after {2 * retry} more changes" in failures[1].getMessage()


@pytest.mark.slow
def test_a_kill_9_during_a_snapshot_loses_no_acknowledged_write(tmp_path: Path) -> None:
    dimension, stored = 384, 40_000  # a snapshot of about 60 MB, written at low priority
    rng = np.random.default_rng(16)
    vectors = rng.standard_normal((stored, dimension)).astype(np.float32)
    live = {f"doc-{i}": vectors[i] for i in range(stored)}
    added: set[str] = set()
    deleted: set[str] = set()
    # The writes a kill cut off, whose fate the restarted server tells.
    cut_off_upserts: dict[str, np.ndarray] = {}
    cut_off_delete: set[str] = set()
    errors: list[grpc.RpcError] = []
    rounds = [0]
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, env={"VECSERVE_INDEX_SNAPSHOT_EVERY": "1000"}).start()

    def write_until_killed() -> None:
        """Upserts of 10 and a deletion per round until the server dies, noting what was acknowledged."""
        with VecserveClient(server.address, timeout=60) as writer:
            while True:
                number = rounds[0]
                batch = {
                    f"new-{number}-{i}": rng.standard_normal(dimension).astype(np.float32) for i in range(10)
                }
                try:
                    cut_off_upserts.update(batch)
                    writer.upsert("big", [{"id": i, "vector": v} for i, v in batch.items()])
                    cut_off_upserts.clear()
                    live.update(batch)
                    added.update(batch)
                    cut_off_delete.add(f"doc-{number}")
                    writer.delete_documents("big", [f"doc-{number}"])
                    cut_off_delete.clear()
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        errors.append(error)
                    return
                del live[f"doc-{number}"]
                deleted.add(f"doc-{number}")
                rounds[0] += 1

    try:
        with VecserveClient(server.address, timeout=120) as client:
            client.create_index("big", dimension=dimension)
            client.stream_upsert(
                "big",
                [
                    [{"id": f"doc-{i}", "vector": vectors[i]} for i in range(start, start + 500)]
                    for start in range(0, stored, 500)
                ],
            )
        writer = threading.Thread(target=write_until_killed)
        writer.start()
        wait_until(lambda: rounds[0] >= 20 or bool(errors), "writes to be acknowledged", timeout=300)
        # Killed while a snapshot's file is being written (one follows every 1,000 changes).
        snapshot_files = data_dir / "big"
        wait_until(
            lambda: any(snapshot_files.glob("snapshot-*.tmp")), "a snapshot being written", timeout=300
        )
        server.kill()
        writer.join(timeout=120)  # a safety net against a hang, not a bound relied on
        assert not writer.is_alive() and not errors, errors

        server = ServerProcess(data_dir).start()
        with VecserveClient(server.address, timeout=120) as client:
            for document_id, vector in cut_off_upserts.items():
                if _stored(client, document_id):
                    live[document_id] = vector
                    added.add(document_id)
            for document_id in cut_off_delete:
                if not _stored(client, document_id):
                    del live[document_id]
                    deleted.add(document_id)
            assert client.get_index("big").document_count == len(live)
            # Every document written meanwhile is found by its own vector, and so are some of the others.
            checked = sorted(added) + sorted(set(live) - added)[::20]
            for start in range(0, len(checked), 500):
                chunk = checked[start : start + 500]
                results = client.search("big", [live[i] for i in chunk], k=1)
                assert [hits[0].id for hits in results] == chunk
            assert not any(_stored(client, document_id) for document_id in sorted(deleted)[:200])
    finally:
        server.kill()


def _stored(client: VecserveClient, document_id: str) -> bool:
    try:
        client.get_document("big", document_id)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return False
    return True

"""Indexes: bulk loading through `vecserve add`, start-up on a large stored index, search latency, and
writes and searches while a snapshot of a large index is written.

    python -m benchmarks.index_bench [--size tiny|quick|full] [--documents N] [--vectors N]
                                     [--snapshot-vectors N]

Full size: 10,000 short documents through the CLI against a server process (side by side with
plain embedding of the same texts, which bounds it), and 1,000,000 stored 384-dimensional random
vectors (clustered in a 32-dimensional subspace, like real embeddings) loaded through the store:
start-up from the snapshot vs a rebuild from the record, and single-query search latency for flat
and HNSW (with HNSW's recall@10 against flat). Snapshots: upserts of 10 and single-query searches
from two threads while a flat index of 500,000 such vectors is snapshotted, against the same calls in
as long a stretch right after (rounds pooled).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import Report, machine_context, median, percentile, short_texts
from clients import VecserveClient
from clients.local_server import ServerProcess
from service.index import snapshots
from service.index.filters import Condition
from service.index.model import Document, HnswParams, Query
from service.index.store import IndexStore

DIMENSION = 384
LOAD_BATCH = 20_000
QUERIES = 200
# Lighter than the store's defaults, so a million-vector graph builds in minutes on two cores.
DEFAULT_HNSW = HnswParams(m=16, ef_construction=40, ef_search=64)
LATENT_DIMENSION = 32
LATENT_CLUSTERS = 200
BUCKETS = 100  # metadata "bucket" = i % BUCKETS, for a filter matching 1% of the documents


# -- bulk load through the CLI -------------------------------------------------------------------


def bulk_load(report: Report, count: int, scratch: Path) -> None:
    texts = short_texts(count, words_per_text=12)
    source = scratch / "documents.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": f"doc-{i}", "text": t, "metadata": {"n": i}}) + "\n"
            for i, t in enumerate(texts)
        )
    )
    server = ServerProcess(scratch / "server-data").start()
    try:
        with VecserveClient(server.address, timeout=600) as client:
            client.create_index("bulk")
            client.create_index("vectors", dimension=DIMENSION)
            client.embed(texts[:64])  # warm-up
            began = time.perf_counter()
            for start in range(0, count, 256):
                client.embed(texts[start : start + 256])
            embed_rate = count / (time.perf_counter() - began)

        def add() -> float:
            command = [
                sys.executable,
                "-m",
                "clients.cli",
                "--address",
                server.address,
                "add",
                "bulk",
                str(source),
            ]
            began = time.perf_counter()
            finished = subprocess.run(
                [*command, "--no-progress", "--json"], capture_output=True, text=True, check=True
            )
            elapsed = time.perf_counter() - began
            assert json.loads(finished.stdout)["upserted"] == count
            return count / elapsed

        first_rate = add()
        again_rate = add()  # every document replaced: the idempotent re-run
        with VecserveClient(server.address, timeout=600) as client:
            assert client.get_index("bulk").document_count == count
            vectors = np.random.default_rng(0).standard_normal((count, DIMENSION)).astype(np.float32)
            began = time.perf_counter()
            client.stream_upsert(
                "vectors",
                [
                    [{"id": f"v{i}", "vector": vectors[i]} for i in range(start, min(start + 256, count))]
                    for start in range(0, count, 256)
                ],
            )
            vector_rate = count / (time.perf_counter() - began)
    finally:
        server.stop()
    section = "index load"
    report.add(
        section,
        f"vecserve add, {count:,} short texts (new ids)",
        first_rate,
        "docs/s",
        "CLI process, wall clock",
    )
    report.add(section, f"vecserve add, same {count:,} again (all replaced)", again_rate, "docs/s")
    report.add(
        section, "Embed RPC on the same texts, batches of 256", embed_rate, "texts/s", "the model's bound"
    )
    report.add(section, "vecserve add / Embed RPC", first_rate / embed_rate, "ratio", "indexing overhead")
    report.add(section, f"StreamUpsert of {count:,} raw 384-d vectors", vector_rate, "docs/s", "no embedding")


# -- a large stored index ------------------------------------------------------------------------


@functools.cache
def latent_space() -> tuple[np.ndarray, np.ndarray]:
    """Cluster centres in a small latent space and the map that spreads it over 384 dimensions."""
    rng = np.random.default_rng(99)
    return rng.standard_normal((LATENT_CLUSTERS, LATENT_DIMENSION)), rng.standard_normal(
        (LATENT_DIMENSION, DIMENSION)
    )


def unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random unit vectors shaped like sentence embeddings: clustered, with a low intrinsic dimension
    (uniformly random 384-d vectors have no neighbourhoods for an approximate index to find)."""
    centres, spread = latent_space()
    latent = centres[rng.integers(0, LATENT_CLUSTERS, count)] + 0.6 * rng.standard_normal(
        (count, LATENT_DIMENSION)
    )
    vectors = latent @ spread + 0.6 * rng.standard_normal((count, DIMENSION))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def fill(store: IndexStore, name: str, count: int) -> float:
    """Loads `count` random unit vectors (seeded, so every index gets the same ones); returns docs/s."""
    rng = np.random.default_rng(42)
    began = time.perf_counter()
    for start in range(0, count, LOAD_BATCH):
        vectors = unit_vectors(rng, min(LOAD_BATCH, count - start))
        store.upsert(
            name,
            [
                Document(id=f"v{start + i}", vector=vector, metadata={"bucket": (start + i) % BUCKETS})
                for i, vector in enumerate(vectors)
            ],
        )
    return count / (time.perf_counter() - began)


def query_vectors(count: int, stored_count: int) -> np.ndarray:
    """The first stored vectors with a little noise: each has one clear nearest neighbour."""
    stored = unit_vectors(np.random.default_rng(42), min(LOAD_BATCH, stored_count))[:count]
    noisy = stored + 0.1 * np.random.default_rng(7).standard_normal(stored.shape).astype(
        np.float32
    ) / np.sqrt(DIMENSION)
    return noisy.astype(np.float32)


def latencies(
    store: IndexStore, name: str, queries: np.ndarray, conditions: list[Condition] | None = None
) -> tuple[list[float], list[list[str]]]:
    store.search(name, [Query(vector=queries[0])], k=10, conditions=conditions or [])  # warm-up
    times, answers = [], []
    for query in queries:
        began = time.perf_counter()
        hits = store.search(name, [Query(vector=query)], k=10, conditions=conditions or [])[0]
        times.append(time.perf_counter() - began)
        answers.append([hit.id for hit in hits])
    return times, answers


def open_timed(directory: Path) -> tuple[float, IndexStore]:
    began = time.perf_counter()
    store = IndexStore(directory, max_documents_per_request=LOAD_BATCH)
    return time.perf_counter() - began, store


def large_index(report: Report, count: int, scratch: Path, hnsw: HnswParams | None) -> None:
    section = f"index {count:,}"
    queries = query_vectors(QUERIES, count)

    flat_dir = scratch / "flat"
    store = IndexStore(flat_dir, max_documents_per_request=LOAD_BATCH)
    store.create_index("vectors", DIMENSION)
    report.add(
        section,
        "store load rate, flat (random 384-d, batches of 20,000)",
        fill(store, "vectors", count),
        "docs/s",
    )
    began = time.perf_counter()
    store.close()  # writes the snapshot
    report.add(section, "close with snapshot, flat", time.perf_counter() - began, "s")

    startup, store = open_timed(flat_dir)
    report.add(section, "start-up from the snapshot, flat", startup, "s", "nothing re-embedded")
    info = store.get_index("vectors")
    assert info.document_count == count
    report.add(section, "memory of the flat structure", info.memory_bytes / 2**20, "MiB")
    report.add(section, "disk of the flat index (record + snapshot)", info.disk_bytes / 2**20, "MiB")
    flat_times, truth = latencies(store, "vectors", queries)
    report.add(section, "flat search k=10, one query, p50", percentile(flat_times, 0.5) * 1000, "ms")
    report.add(section, "flat search k=10, one query, p99", percentile(flat_times, 0.99) * 1000, "ms")
    bucket = [Condition("bucket", equals=3.0)]
    filtered_times, filtered = latencies(store, "vectors", queries[:50], bucket)
    assert all(len(hits) == 10 for hits in filtered)
    report.add(
        section, "flat search k=10 with a 1% filter, p50", percentile(filtered_times, 0.5) * 1000, "ms"
    )
    store.close()

    # The same start-up without a snapshot: everything rebuilt from the record.
    (flat_dir / "vectors" / snapshots.MANIFEST_FILE).unlink()
    rebuild, store = open_timed(flat_dir)
    store.close()
    report.add(section, "start-up rebuilding from the record, flat", rebuild, "s", "no snapshot")
    report.add(section, "rebuild / snapshot start-up, flat", rebuild / startup, "ratio")
    if hnsw is None:
        return

    hnsw_dir = scratch / "hnsw"
    store = IndexStore(hnsw_dir, max_documents_per_request=LOAD_BATCH)
    store.create_index("vectors", DIMENSION, kind="hnsw", params=hnsw)
    note = f"M={hnsw.m}, ef_construction={hnsw.ef_construction}"
    report.add(
        section,
        "store load rate, hnsw (graph built as it loads)",
        fill(store, "vectors", count),
        "docs/s",
        note,
    )
    store.close()
    startup, store = open_timed(hnsw_dir)
    report.add(section, "start-up from the snapshot, hnsw", startup, "s")
    info = store.get_index("vectors")
    report.add(section, "memory of the hnsw structure", info.memory_bytes / 2**20, "MiB")
    hnsw_times, found = latencies(store, "vectors", queries)
    report.add(
        section,
        f"hnsw search k=10, one query, p50 (ef_search={hnsw.ef_search})",
        percentile(hnsw_times, 0.5) * 1000,
        "ms",
    )
    report.add(
        section,
        f"hnsw search k=10, one query, p99 (ef_search={hnsw.ef_search})",
        percentile(hnsw_times, 0.99) * 1000,
        "ms",
    )
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))
    report.add(section, "hnsw recall@10 against flat", recall, "fraction")
    top1 = float(np.mean([answer[0] == f"v{i}" for i, answer in enumerate(found)]))
    report.add(section, "hnsw finds the query's source vector first", top1, "fraction")
    report.add(
        section,
        "flat / hnsw search latency, p50",
        percentile(flat_times, 0.5) / percentile(hnsw_times, 0.5),
        "ratio",
    )
    store.close()


# -- writes and searches during a snapshot ---------------------------------------------------------

SNAPSHOT_ROUNDS = 3
SNAPSHOT_UPSERT = 10


@dataclass
class SnapshotRound:
    """Call latencies (s) while one snapshot was written, and in as long a stretch right after it."""

    snapshot_seconds: float = 0.0
    upserts: list[float] = field(default_factory=list)
    searches: list[float] = field(default_factory=list)
    quiet_upserts: list[float] = field(default_factory=list)
    quiet_searches: list[float] = field(default_factory=list)


def snapshot_index(directory: Path, count: int) -> IndexStore:
    """A store holding a flat index "vectors" of `count` vectors, snapshotted only when asked."""
    store = IndexStore(directory, max_documents_per_request=LOAD_BATCH, snapshot_every=2**62)
    if "vectors" not in {info.spec.name for info in store.list_indexes()[0]}:
        store.create_index("vectors", DIMENSION)
        fill(store, "vectors", count)
    store.snapshot("vectors")
    return store


def snapshot_round(store: IndexStore, round_number: int) -> SnapshotRound:
    """Upserts of 10 new documents and single-query searches, each from a thread of its own, go on
    while the store snapshots the index and then for as long again."""
    rng = np.random.default_rng(round_number)
    query = query_vectors(1, LOAD_BATCH)
    calls: dict[str, list[tuple[float, float]]] = {"upserts": [], "searches": []}
    stop = threading.Event()

    def upserts() -> None:
        written = 0
        while not stop.is_set():
            documents = [
                Document(id=f"r{round_number}-{written + i}", vector=vector)
                for i, vector in enumerate(unit_vectors(rng, SNAPSHOT_UPSERT))
            ]
            began = time.perf_counter()
            store.upsert("vectors", documents)
            calls["upserts"].append((began, time.perf_counter() - began))
            written += SNAPSHOT_UPSERT

    def searches() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            store.search("vectors", [Query(vector=query[0])], k=10)
            calls["searches"].append((began, time.perf_counter() - began))

    callers = [threading.Thread(target=upserts), threading.Thread(target=searches)]
    for caller in callers:
        caller.start()
    while len(calls["upserts"]) < 5 or len(calls["searches"]) < 5:  # both going, with changes to save
        time.sleep(0.01)
    began = time.perf_counter()
    store.snapshot("vectors")
    ended = time.perf_counter()
    time.sleep(ended - began)
    stop.set()
    for caller in callers:
        caller.join()
    result = SnapshotRound(snapshot_seconds=ended - began)
    for kind, timed in calls.items():
        getattr(result, kind).extend(took for start, took in timed if began <= start < ended)
        # Calls started during the snapshot and ending after it count there only.
        getattr(result, f"quiet_{kind}").extend(
            took for start, took in timed if ended <= start < 2 * ended - began
        )
    return result


def report_snapshot_rounds(report: Report, section: str, rounds: list[SnapshotRound]) -> None:
    report.add(section, "snapshot, median", median([one.snapshot_seconds for one in rounds]), "s")
    for name, calls in (("upserts", "upserts of 10"), ("searches", "searches, one query k=10")):
        for when, latencies_ms in (
            ("during a snapshot", [took * 1000 for one in rounds for took in getattr(one, name)]),
            ("right after", [took * 1000 for one in rounds for took in getattr(one, f"quiet_{name}")]),
        ):
            if not latencies_ms:  # a small index's snapshot may end before a call does
                continue
            note = f"{len(latencies_ms)} calls"
            for shown, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
                value = percentile(latencies_ms, fraction)
                report.add(section, f"{calls} {when}, {shown}", value, "ms", note)


def snapshot_under_load(report: Report, count: int, scratch: Path) -> None:
    section = f"snapshot {count:,}"
    store = snapshot_index(scratch / "snapshots", count)
    try:
        rounds = [snapshot_round(store, number) for number in range(SNAPSHOT_ROUNDS)]
    finally:
        store.close()
    report_snapshot_rounds(report, section, rounds)


def run(
    report: Report,
    documents: int | None = None,
    vectors: int | None = None,
    hnsw: HnswParams | None = DEFAULT_HNSW,
    snapshot_vectors: int | None = None,
) -> None:
    """hnsw=None leaves out the HNSW half of the large index."""
    if documents is None:
        documents = report.pick(tiny=200, quick=2_000, full=10_000)
    if vectors is None:
        vectors = report.pick(tiny=5_000, quick=100_000, full=1_000_000)
    if snapshot_vectors is None:
        snapshot_vectors = report.pick(tiny=5_000, quick=100_000, full=500_000)
    with tempfile.TemporaryDirectory(dir=os.environ.get("VECSERVE_BENCH_DIR")) as scratch:
        if documents:
            bulk_load(report, documents, Path(scratch))
        if vectors:
            large_index(report, vectors, Path(scratch), hnsw)
        if snapshot_vectors:
            snapshot_under_load(report, snapshot_vectors, Path(scratch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "quick", "full"], default="full")
    parser.add_argument("--documents", type=int, help="texts loaded through `vecserve add` (0 skips)")
    parser.add_argument("--vectors", type=int, help="vectors in the large index (0 skips)")
    parser.add_argument("--hnsw-m", type=int, default=DEFAULT_HNSW.m)
    parser.add_argument("--hnsw-ef-construction", type=int, default=DEFAULT_HNSW.ef_construction)
    parser.add_argument("--hnsw-ef-search", type=int, default=DEFAULT_HNSW.ef_search)
    parser.add_argument("--no-hnsw", action="store_true", help="skip the HNSW half of the large index")
    parser.add_argument(
        "--snapshot-vectors", type=int, help="vectors in the index snapshotted under load (0 skips)"
    )
    parser.add_argument("--json-out", type=Path, default=Path("bench-index.json"))
    args = parser.parse_args(argv)
    report = Report(size=args.size, context=machine_context())
    began = time.perf_counter()
    run(
        report,
        documents=args.documents,
        vectors=args.vectors,
        snapshot_vectors=args.snapshot_vectors,
        hnsw=None
        if args.no_hnsw
        else HnswParams(
            m=args.hnsw_m, ef_construction=args.hnsw_ef_construction, ef_search=args.hnsw_ef_search
        ),
    )
    report.finish(began, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

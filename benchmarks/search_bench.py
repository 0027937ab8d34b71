"""Concurrent raw-vector searches (aim 5 of the throughput work): 32 clients, one query per call,
against a flat index, with search batching on and off, vs one batched in-process FAISS search.

Each client is a thread with its own connection making one call per query (32 concurrent,
independent calls). With 32 clients, search batching can merge at most 32 queries into one FAISS
call, so the in-process rate of 32-query calls is printed as well: it bounds what merging can reach.
The servers get a one-word analogy vocabulary so that no vocabulary is being embedded at start-up
while searches are measured.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import Report, concurrent_calls
from clients import VecserveClient
from clients.local_server import ServerProcess
from service.index.model import Document, IndexKind
from service.index.store import FLAT_BLAS_THRESHOLD, IndexStore

DIMENSION = 384
CLIENTS = 32
# The analogy vocabulary every fresh data directory builds at start-up would compete for the cores.
SERVER_ENV = {"VECSERVE_VOCABULARY_SIZE": "1"}


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIMENSION)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def build_data_dir(path: Path, vectors: np.ndarray) -> None:
    store = IndexStore(path)
    try:
        store.create_index("bench", dimension=DIMENSION, kind=IndexKind.FLAT)
        for start in range(0, len(vectors), 1000):
            chunk = vectors[start : start + 1000]
            store.upsert("bench", [Document(id=f"d{start + i}", vector=v) for i, v in enumerate(chunk)])
    finally:
        store.close()


def search_one(client: VecserveClient, query: np.ndarray) -> None:
    client.search("bench", [query], k=10)


def run(report: Report) -> None:
    size = report.pick(tiny=5_000, quick=100_000, full=100_000)
    query_count = report.pick(tiny=256, quick=1_024, full=4_096)
    vectors, queries = unit_rows(size, 1), unit_rows(query_count, 2)
    # The setting IndexStore makes for the server, so both sides take FAISS's same (BLAS) path.
    faiss.cvar.distance_compute_blas_threshold = FLAT_BLAS_THRESHOLD
    exact = faiss.IndexFlatIP(DIMENSION)
    exact.add(vectors)
    exact.search(queries[:CLIENTS], 10)  # warm-up
    began = time.perf_counter()
    exact.search(queries, 10)
    in_process = query_count / (time.perf_counter() - began)
    began = time.perf_counter()
    for start in range(0, query_count, CLIENTS):
        exact.search(queries[start : start + CLIENTS], 10)
    in_process_merged = query_count / (time.perf_counter() - began)
    with tempfile.TemporaryDirectory() as scratch:
        on_dir, off_dir = Path(scratch) / "on", Path(scratch) / "off"
        build_data_dir(on_dir, vectors)
        shutil.copytree(on_dir, off_dir)
        batched = ServerProcess(on_dir, env=SERVER_ENV).start()
        plain = ServerProcess(off_dir, "--no-search-batching", env=SERVER_ENV).start()
        try:
            on_rate, on_p50, on_p99 = concurrent_calls(batched.address, queries, CLIENTS, search_one)
            off_rate, off_p50, off_p99 = concurrent_calls(plain.address, queries, CLIENTS, search_one)
        finally:
            batched.stop()
            plain.stop()
    section = "search-32"
    report.add(
        section, f"in-process FAISS flat, one batched call ({size:,} x {DIMENSION})", in_process, "queries/s"
    )
    report.add(section, f"in-process FAISS flat, {CLIENTS} queries per call", in_process_merged, "queries/s")
    report.add(
        section,
        f"{CLIENTS} clients x 1 query/call, search batching",
        on_rate,
        "queries/s",
        f"p50 {on_p50:.1f} ms, p99 {on_p99:.1f} ms",
    )
    report.add(
        section,
        f"{CLIENTS} clients x 1 query/call, batching off",
        off_rate,
        "queries/s",
        f"p50 {off_p50:.1f} ms, p99 {off_p99:.1f} ms",
    )
    report.add(section, "batching on / in-process batched", on_rate / in_process, "ratio", "aim >= 0.5")
    report.add(section, f"batching on / in-process {CLIENTS} per call", on_rate / in_process_merged, "ratio")
    report.add(section, "batching on / off", on_rate / off_rate, "ratio")

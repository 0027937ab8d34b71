"""Raw-vector searches: the per-call floor of one query per call, and 32 concurrent clients.

Per-call floor: one-query Search calls one after another on a small flat index (FLOOR_VECTORS, k=10)
against a vecserve server subprocess, taking turns with Health/Check calls to a bare grpcio server
subprocess (the health service alone), both with prebuilt requests; the difference is what the service
adds to a call (its front door: request id, token check, access log and metrics; message conversion;
the store's search and its answer). The servers' CPU per call is measured in rounds taking turns as
well, vecserve's own Health/Check among them: less the bare server's, that is the front door's part.

Concurrent searches (aim 5 of the throughput work): 32 clients, one query per call,
against a flat index, with search batching on and off, vs one batched in-process FAISS search.

Each client is a thread with its own connection making one call per query (32 concurrent,
independent calls). With 32 clients, search batching can merge at most 32 queries into one FAISS
call, so the in-process rate of 32-query calls is printed as well: it bounds what merging can reach.
The servers get a one-word analogy vocabulary so that no vocabulary is being embedded at start-up
while searches are measured.
"""

from __future__ import annotations

import argparse
import contextlib
import operator
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import Report, concurrent_calls, sequential_call_ms
from clients import VecserveClient
from clients.local_server import ServerProcess, free_port
from service.index.model import Document, IndexKind
from service.index.store import FLAT_BLAS_THRESHOLD, IndexStore

DIMENSION = 384
CLIENTS = 32
# The analogy vocabulary every fresh data directory builds at start-up would compete for the cores.
SERVER_ENV = {"VECSERVE_VOCABULARY_SIZE": "1"}
# Vectors of the index that measures the per-call floor: its search costs next to nothing.
FLOOR_VECTORS = 1_000
# Rounds of the per-call floor's CPU figures, each of a fifth of `count` calls per server: short
# rounds taking turns meet the machine's other work alike, and many of them give a steady median.
CPU_ROUNDS = 30


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


def serve_bare_health(port: int) -> None:
    """A grpcio server holding only the health service, until killed (run as a subprocess)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def per_call_floor(report: Report, scratch: Path, count: int) -> None:
    """One-query Search vs a bare server's Health/Check, one call after another, taking turns."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from vecserve.v1 import index_pb2, index_pb2_grpc

    vectors = unit_rows(FLOOR_VECTORS, 3)
    data_dir = scratch / "floor"
    build_data_dir(data_dir, vectors)
    served = ServerProcess(data_dir, env=SERVER_ENV).start()
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.search_bench", "--bare-health", str(bare_port)]
    )
    channels = [grpc.insecure_channel(address) for address in (f"127.0.0.1:{bare_port}", served.address)]
    try:
        grpc.channel_ready_future(channels[0]).result(timeout=60)
        bare_health = health_pb2_grpc.HealthStub(channels[0])
        indexes = index_pb2_grpc.IndexServiceStub(channels[1])
        vecserve_health = health_pb2_grpc.HealthStub(channels[1])
        check = health_pb2.HealthCheckRequest()
        query = index_pb2.Query(vector=index_pb2.Vector(values=unit_rows(1, 4)[0].tolist()))
        search = index_pb2.SearchRequest(index_name="bench", queries=[query], k=10)
        with VecserveClient(served.address, timeout=60) as client:
            query_vector = unit_rows(1, 4)[0]
            ms = sequential_call_ms(
                {
                    "bare": lambda: bare_health.Check(check, timeout=10),
                    "search": lambda: indexes.Search(search, timeout=10),
                    "client": lambda: client.search("bench", [query_vector], k=10),
                },
                count,
            )
            # CPU time of each server process per call: less swayed by the other work on the machine.
            assert served.process is not None
            round_calls = max(count // 5, 10)
            cpu_ms = server_cpu_ms(
                {
                    "bare": (bare.pid, lambda: bare_health.Check(check, timeout=10)),
                    "search": (served.process.pid, lambda: indexes.Search(search, timeout=10)),
                    "health": (served.process.pid, lambda: vecserve_health.Check(check, timeout=10)),
                },
                round_calls,
            )
    finally:
        for channel in channels:
            channel.close()
        bare.kill()
        bare.wait()
        served.stop()
    section = "search-1"
    report.add(section, f"bare gRPC server: Health/Check ({count} in a row)", ms["bare"], "ms")
    report.add(section, f"vecserve: Search, 1 query, k=10, {FLOOR_VECTORS:,}-vector flat", ms["search"], "ms")
    report.add(section, "vecserve: the same through VecserveClient.search", ms["client"], "ms")
    report.add(
        section,
        "service share: Search - bare Health/Check",
        ms["search"] - ms["bare"],
        "ms",
        "both servers in subprocesses, best of 5 interleaved rounds; machine shared",
    )
    rounds = f"median of {CPU_ROUNDS} interleaved rounds of {round_calls} calls"
    report.add(
        section, "bare gRPC server: CPU per Health/Check (process, /proc)", cpu_ms["bare"], "ms", rounds
    )
    report.add(section, "vecserve: CPU per one-query Search (process, /proc)", cpu_ms["search"], "ms", rounds)
    report.add(
        section,
        "service share of server CPU: Search - bare",
        cpu_ms["share"],
        "ms",
        f"{rounds}, each round's difference",
    )
    report.add(
        section,
        "of which the front door: vecserve - bare Health/Check CPU",
        cpu_ms["front door"],
        "ms",
        "request id, drain, token check, metrics, access log; each round's difference",
    )


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds the threads of process `pid` have run so far, to the nanosecond (Linux
    /proc/<pid>/task/*/schedstat; /proc/<pid>/stat counts 10 ms ticks, too coarse for short rounds)."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
            total_ns += int((task / "schedstat").read_text().split()[0])
    return total_ns / 1e9


def server_cpu_ms(calls: dict[str, tuple[int, Callable[[], object]]], count: int) -> dict[str, float]:
    """CPU milliseconds each server process spends per call (its pid and call under each name), over
    `count` calls in a row, the servers taking turns for CPU_ROUNDS rounds: the median of the rounds,
    and as "share" and "front door" the medians of each round's "search" - "bare" and "health" - "bare"
    (neighbours in time, under like load)."""
    per_round: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(CPU_ROUNDS):
        for name, (pid, call) in calls.items():
            for _ in range(20):  # warm-up
                call()
            began = process_cpu_seconds(pid)
            for _ in range(count):
                call()
            per_round[name].append((process_cpu_seconds(pid) - began) / count * 1000)
    medians = {name: statistics.median(values) for name, values in per_round.items()}
    bare = per_round["bare"]
    return {
        **medians,
        "share": statistics.median(map(operator.sub, per_round["search"], bare)),
        "front door": statistics.median(map(operator.sub, per_round["health"], bare)),
    }


# Calls in a row per round of the per-call floor, by run size.
FLOOR_CALLS = {"tiny": 50, "quick": 500, "full": 2000}


def run_floor(report: Report) -> None:
    """The per-call floor (section search-1) alone."""
    with tempfile.TemporaryDirectory() as scratch:
        per_call_floor(report, Path(scratch), FLOOR_CALLS[report.size])


def run(report: Report) -> None:
    run_floor(report)
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the per-call floor alone, or its bare health server")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--floor", choices=sorted(FLOOR_CALLS), help="run section search-1 at this size")
    choice.add_argument("--bare-health", type=int, metavar="PORT")
    args = parser.parse_args()
    if args.floor is not None:
        run_floor(Report(args.floor))
    else:
        serve_bare_health(args.bare_health)

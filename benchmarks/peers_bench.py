"""Search against peer vector databases at equal recall, and bulk indexing through `vecserve add`.

    python -m benchmarks.peers_bench [--size tiny|quick|full] [--datasets NAME...] [--no-bulk]
        [--peers NAME...] [--kinds KIND...]

Search: k=10, cosine, 384 dimensions; recall@10 against exact search of the same vectors; queries
per second with one query per call (sequential) and with 100 queries per call. Data sets (sizes at
tiny / quick / full, four times larger on a GPU; queries 100 / 300 / 1,000):
  minilm     2k / 20k / 100k all-MiniLM-L6-v2 embeddings of generated sentences (`short_texts`;
             held-out sentences are the queries), computed once and cached as .npy in
             benchmarks/.cache (VECSERVE_BENCH_CACHE overrides the place)
  random     - / - / 100k normalized Gaussian vectors: no neighbourhoods at all, the worst case for
             approximate indexes (their graphs build several times slower, hence the smaller sizes)
  clustered  - / - / 1M synthetic unit vectors clustered in a 32-dimensional subspace like sentence
             embeddings (index_bench.unit_vectors): a million real embeddings would take hours to
             compute on a CPU

Systems:
  vecserve     every index kind through gRPC against a server subprocess, loaded with StreamUpsert
               messages of 1,024 raw vectors (above GRPC_LOAD_LIMIT vectors, built in-process with
               IndexStore, snapshotted once on close, and then served). HNSW and IVF_FLAT are built
               once and swept with the per-request ef_search and nprobe: HNSW from the ef hnswlib
               needed (same M and ef_construction, near-identical recall per ef), stepping through
               EF_STEPS (eight per doubling, the grid hnswlib's ef is chosen from too) cheaper while
               recall 0.95 holds or broader until it does (at most SWEEP_STEPS settings); IVF likewise
               from nlist/8. Its hits are ids and scores only (ids_only), as hnswlib answers; the
               head-to-head with hnswlib shows full hits (text and metadata looked up) as well.
  chromadb     in-process PersistentClient with its default HNSW settings (l2, M=16,
               ef_construction=100, ef_search=100), and when those miss recall 0.95 the smallest
               ef_search that reaches it
  milvus-lite  pymilvus MilvusClient on a local .db: milvus-lite 3 is pure Python and serves gRPC from
               a thread of the calling process. FLAT, and IVF_FLAT with the smallest nprobe reaching 0.95
  hnswlib      M=32 and ef_construction=80 (vecserve's HNSW defaults), ef the smallest reaching 0.95
Each peer runs in a process of its own, so that its memory can be measured (growth of the resident set
while it loads) and its threads end with it. A peer that is not installed is skipped with a note
(pip install 'vecserve[bench]'). Key ratios: the fastest vecserve setup reaching recall 0.95 over
the fastest setup of each peer reaching it; and for HNSW against hnswlib, the two at those settings in
alternating rounds of batched search (hnswlib kept loaded meanwhile), which separate runs minutes apart
on a shared machine cannot replace.

Bulk indexing: documents/s of `vecserve add` (CLI process, JSONL of short texts, the server embedding
them) vs in-process SentenceTransformer.encode of the same texts.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Report, gpu_available, machine_context, median, short_texts
from service.index.model import HnswParams, IvfParams, IvfPqParams, KindParams, Sq8Params

DIMENSION = 384
K = 10
TARGET_RECALL = 0.95
QUERIES_PER_CALL = 100
# Above this many vectors, indexes are built in-process and then served (streaming a million vectors
# through gRPC into each of seven indexes would take most of an hour on two cores).
GRPC_LOAD_LIMIT = 200_000
# vecserve's HNSW defaults, used for hnswlib too so that both build the same graph.
HNSW_M = HnswParams().m
HNSW_EF_CONSTRUCTION = HnswParams().ef_construction
# vecserve's first ef_search when hnswlib is not installed to suggest one.
FIRST_EF_SEARCH = 128


def ef_steps() -> tuple[int, ...]:
    """10, 12, 14, then eight steps per doubling up to 4096 (16, 18, ..., 30, 32, 36, ...): about 9%
    apart, so that the smallest ef reaching the target is not overshot by a third (near 0.95, recall
    moves a few thousandths per step and a coarse grid decided the comparison)."""
    steps = [10, 12, 14]
    base = 16
    while base < 4096:
        steps += range(base, 2 * base, base // 8)
        base *= 2
    return (*steps, 4096)


# The ef_search values tried, the same for vecserve's sweep and for hnswlib (and chromadb's tuning).
EF_STEPS = ef_steps()
# Below this, a process's fixed allocations swamp its growth per vector.
MIN_VECTORS_FOR_MEMORY = 20_000
# Settings of ef_search or nprobe tried per swept index, at most: IVF starts at nlist/8 and can need
# six halvings before its recall drops below the target (nlist 4,096 at a million vectors).
SWEEP_STEPS = 7
# Alternating rounds of vecserve's and hnswlib's batched search at their chosen settings.
HEAD_TO_HEAD_ROUNDS = 6
# The analogy vocabulary a fresh data directory builds at start-up would compete with the searches.
SERVER_ENV = {"VECSERVE_VOCABULARY_SIZE": "1"}
CORPUS_SEED = 2024
QUERY_SEED = 2025
WORDS_PER_TEXT = 12
CACHE_DIR = Path(os.environ.get("VECSERVE_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
PEERS = {"chromadb": "chromadb", "milvus-lite": "pymilvus", "hnswlib": "hnswlib"}  # name: module
DATASETS = ("minilm", "random", "clustered")
KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq", "sq8")
# milvus-lite's pure-Python server grew by about 2 GiB while loading 100,000 vectors here (20 GiB per
# million): a million would not fit next to the data and the other peers on a 24 GiB machine.
MILVUS_LITE_MAX_VECTORS = 200_000
# Vectors of the index that measures the per-call floor (a search that costs next to nothing).
FLOOR_VECTORS = 16


# -- data sets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    name: str
    vectors: np.ndarray
    queries: np.ndarray
    truth: np.ndarray  # row numbers of each query's exact k nearest vectors, nearest first
    note: str

    @property
    def label(self) -> str:
        return f"{self.name} {len(self.vectors):,}"


def embedded_texts(count: int, seed: int) -> np.ndarray:
    """Normalized all-MiniLM-L6-v2 embeddings of `short_texts(count, seed=seed)`, cached as .npy.

    The texts are prefix-stable (the first n of a larger set are the set of n), so a larger cached
    file serves a smaller request.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cached = sorted(
        (int(path.stem.rsplit("-", 1)[-1]), path)
        for path in CACHE_DIR.glob(f"minilm-w{WORDS_PER_TEXT}-s{seed}-*.npy")
    )
    for stored, path in cached:
        if stored >= count:
            return np.load(path, mmap_mode="r")[:count].copy()
    from sentence_transformers import SentenceTransformer

    from service.config import default_model_path

    texts = short_texts(count, words_per_text=WORDS_PER_TEXT, seed=seed)
    model = SentenceTransformer(default_model_path(), device="cuda" if gpu_available() else "cpu")
    began = time.perf_counter()
    chunks = []
    for start in range(0, count, 10_000):
        chunks.append(model.encode(texts[start : start + 10_000], batch_size=64, normalize_embeddings=True))
        done = min(count, start + 10_000)
        print(f"  embedding {done:,}/{count:,} texts ({time.perf_counter() - began:.0f} s)", flush=True)
    vectors = np.concatenate(chunks).astype(np.float32)
    target = CACHE_DIR / f"minilm-w{WORDS_PER_TEXT}-s{seed}-{count}.npy"
    partial = CACHE_DIR / f"partial-{os.getpid()}.npy"
    np.save(partial, vectors)
    os.replace(partial, target)
    return vectors


def random_unit_vectors(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = np.empty((count, DIMENSION), dtype=np.float32)
    for start in range(0, count, 100_000):
        chunk = rng.standard_normal((min(100_000, count - start), DIMENSION), dtype=np.float32)
        vectors[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


def clustered_unit_vectors(count: int, seed: int) -> np.ndarray:
    from benchmarks.index_bench import unit_vectors

    rng = np.random.default_rng(seed)
    return np.concatenate(
        [unit_vectors(rng, min(100_000, count - start)) for start in range(0, count, 100_000)]
    )


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.search(queries, K)[1]


def make_dataset(name: str, vectors: np.ndarray, queries: np.ndarray, note: str) -> Dataset:
    return Dataset(name, vectors, queries, exact_neighbours(vectors, queries), note)


def recall(found: Sequence[Sequence[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(hits) & set(row)) / K for hits, row in zip(found, truth, strict=True)]))


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Result:
    system: str
    recall: float
    single_qps: float
    batched_qps: float
    # MiB per million vectors: the index structure's own count, or a process's resident-set growth.
    memory_per_million: float | None = None
    note: str = ""
    # The ef or nprobe a sweep chose for this result; 0 when none was swept.
    breadth: int = 0


SearchOne = Callable[[np.ndarray], Sequence[int]]
SearchMany = Callable[[np.ndarray], Sequence[Sequence[int]]]


def batched_search(
    search_many: SearchMany, queries: np.ndarray, seconds: float = 0.0
) -> tuple[float, list[Sequence[int]]]:
    """Queries per second searching QUERIES_PER_CALL queries per call, passing over the queries again
    until `seconds` have gone by (3 or 10 calls alone swung twofold between settings on a shared
    machine), and every query's hits from the first pass."""
    search_many(queries[:QUERIES_PER_CALL])  # warm-up
    found: list[Sequence[int]] = []
    searched = 0
    began = time.perf_counter()
    while not searched or time.perf_counter() - began < seconds:
        for start in range(0, len(queries), QUERIES_PER_CALL):
            hits = search_many(queries[start : start + QUERIES_PER_CALL])
            if not searched:
                found.extend(hits)
        searched += len(queries)
    return searched / (time.perf_counter() - began), found


def single_query_rate(search_one: SearchOne, queries: np.ndarray, seconds: float) -> float:
    """Queries per second, one query per call, sequentially, for up to `seconds` (all queries at most)."""
    search_one(queries[0])  # warm-up
    began = time.perf_counter()
    done = 0
    for query in queries:
        search_one(query)
        done += 1
        if time.perf_counter() - began > seconds:
            break
    return done / (time.perf_counter() - began)


def measure(
    system: str,
    search_one: SearchOne,
    search_many: SearchMany,
    dataset: Dataset,
    seconds: float,
    memory_per_million: float | None = None,
    note: str = "",
) -> Result:
    batched_qps, found = batched_search(search_many, dataset.queries, seconds)
    single_qps = single_query_rate(search_one, dataset.queries, seconds)
    return Result(system, recall(found, dataset.truth), single_qps, batched_qps, memory_per_million, note)


def per_million(total_bytes: float, count: int) -> float:
    return total_bytes / 2**20 * 1_000_000 / count


def growth_per_million(baseline: int, count: int) -> float | None:
    """Resident-set growth since `baseline` per million vectors; None when too few vectors to tell."""
    if not baseline or count < MIN_VECTORS_FOR_MEMORY:
        return None
    return per_million(resident_bytes() - baseline, count)


def resident_bytes() -> int:
    """This process's resident set size (Linux); 0 where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


# -- vecserve through gRPC -----------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    kind: str
    params: KindParams | None
    label: str


def params_message(params: KindParams | None) -> Any:
    """The CreateIndex parameters message of the store's parameters."""
    from vecserve.v1 import index_pb2

    if isinstance(params, HnswParams):
        return index_pb2.HnswParams(
            m=params.m, ef_construction=params.ef_construction, ef_search=params.ef_search
        )
    if isinstance(params, IvfPqParams):
        ivf = index_pb2.IvfParams(nlist=params.nlist, nprobe=params.nprobe)
        return index_pb2.IvfPqParams(ivf=ivf, m=params.m, nbits=params.nbits)
    if isinstance(params, IvfParams):
        return index_pb2.IvfParams(nlist=params.nlist, nprobe=params.nprobe)
    if isinstance(params, Sq8Params):
        return index_pb2.Sq8Params()
    return None


def ivf_lists(count: int) -> int:
    """nlist: the power of two nearest 4 * sqrt(count), with at least 39 training vectors per list."""
    lists = 2 ** round(np.log2(4 * np.sqrt(count)))
    while lists > 1 and lists * 39 > count:
        lists //= 2
    return int(lists)


def load_through_grpc(client: Any, name: str, vectors: np.ndarray) -> float:
    """Streams the vectors (ids are their row numbers) in messages as large as the server accepts
    (GetModelInfo's max_documents_per_request); returns vectors/s."""
    from vecserve.v1 import index_pb2

    batch = client.model_info().max_documents_per_request

    def batches() -> Any:
        for start in range(0, len(vectors), batch):
            yield [
                index_pb2.Document(id=str(start + offset), vector=vector)
                for offset, vector in enumerate(vectors[start : start + batch])
            ]

    began = time.perf_counter()
    client.stream_upsert(name, batches())
    return len(vectors) / (time.perf_counter() - began)


def build_in_process(data_dir: Path, name: str, setup: Setup, vectors: np.ndarray) -> float:
    """Builds the index with IndexStore directly (the server must not be running); returns vectors/s."""
    from service.index.model import Document
    from service.index.store import IndexStore

    chunk = 20_000
    began = time.perf_counter()
    # One snapshot, on close: the default interval (every 50,000 changes) would serialize and write the
    # growing structure 20 times over a million vectors, each time beside FAISS's two OpenMP threads.
    store = IndexStore(data_dir, max_documents_per_request=chunk, snapshot_every=len(vectors))
    try:
        store.create_index(name, DIMENSION, kind=setup.kind, params=setup.params)
        for start in range(0, len(vectors), chunk):
            store.upsert(
                name,
                [
                    Document(id=str(start + offset), vector=vector)
                    for offset, vector in enumerate(vectors[start : start + chunk])
                ],
            )
    finally:
        store.close()
    return len(vectors) / (time.perf_counter() - began)


@dataclass(frozen=True)
class Served:
    measure: Callable[..., Result]
    batched_rate: Callable[..., float]


class VecserveRunner:
    """Creates, loads and drops one index per setup on a server subprocess; measures it with any number
    of per-request search settings (ef_search, nprobe) without rebuilding it."""

    def __init__(self, dataset: Dataset, scratch: Path, seconds: float) -> None:
        self.dataset = dataset
        self.scratch = scratch
        self.seconds = seconds
        self.in_process = len(dataset.vectors) > GRPC_LOAD_LIMIT
        self.server: Any = None

    def __enter__(self) -> VecserveRunner:
        if not self.in_process:
            self.server = self._start(self.scratch / "vecserve")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()

    @staticmethod
    def _start(data_dir: Path) -> Any:
        from clients.local_server import ServerProcess

        # A one-word analogy vocabulary: building the default one would compete with the searches.
        return ServerProcess(data_dir, "--device", "auto", env=SERVER_ENV).start(timeout=600)

    def call_floor(self) -> float:
        """Queries/s, one query per call, on an index of FLOOR_VECTORS of the data set's vectors: what
        the round trip through the client, gRPC and the service costs when the search costs nothing."""
        from clients import VecserveClient

        server = self.server or self._start(self.scratch / "vecserve-floor")
        try:
            with VecserveClient(server.address, timeout=600) as client:
                client.create_index("floor", dimension=DIMENSION)
                client.upsert(
                    "floor",
                    [
                        {"id": str(row), "vector": vector}
                        for row, vector in enumerate(self.dataset.vectors[:FLOOR_VECTORS])
                    ],
                )
                rate = single_query_rate(
                    lambda query: client.search("floor", [query], k=K), self.dataset.queries, self.seconds
                )
                client.delete_index("floor")
                return rate
        finally:
            if server is not self.server:
                server.stop()

    @contextlib.contextmanager
    def serving(self, setup: Setup) -> Iterator[Served]:
        """Yields the loaded index's Served: measure(label, **tuning), a Result of it searched with
        `tuning` (ef_search or nprobe per request; none for the index's own settings), and
        batched_rate(**tuning), one round of batched search alone."""
        import shutil

        from clients import VecserveClient

        name = "bench"
        count = len(self.dataset.vectors)
        if self.in_process:
            data_dir = self.scratch / f"vecserve-{setup.kind}"
            load_rate = build_in_process(data_dir, name, setup, self.dataset.vectors)
            load_note = f"built in-process at {load_rate:,.0f} vectors/s"
            server = self._start(data_dir)
        else:
            server = self.server
        try:
            with VecserveClient(server.address, timeout=3600) as client:
                if not self.in_process:
                    client.create_index(
                        name, dimension=DIMENSION, kind=setup.kind, params=params_message(setup.params)
                    )
                    load_rate = load_through_grpc(client, name, self.dataset.vectors)
                    load_note = f"loaded through gRPC at {load_rate:,.0f} vectors/s"
                info = client.get_index(name)
                assert info.document_count == count, (info.document_count, count)
                trained = "" if not info.training_threshold or info.trained else ", not trained (exact)"

                def searcher(ids_only: bool, **tuning: int) -> SearchMany:
                    def search_many(queries: np.ndarray) -> list[list[int]]:
                        results = client.search(name, list(queries), k=K, ids_only=ids_only, **tuning)
                        return [[int(hit.id) for hit in hits] for hits in results]

                    return search_many

                def measure_tuned(label: str, **tuning: int) -> Result:
                    search_many = searcher(True, **tuning)

                    def search_one(query: np.ndarray) -> list[int]:
                        return search_many(query[None, :])[0]

                    result = measure(
                        f"vecserve {label}",
                        search_one,
                        search_many,
                        self.dataset,
                        self.seconds,
                        per_million(info.memory_bytes, count),
                        f"{load_note}{trained}; hits of ids and scores only (ids_only)",
                    )
                    result.breadth = next(iter(tuning.values()), 0)
                    return result

                def batched_rate(ids_only: bool = True, **tuning: int) -> float:
                    search_many = searcher(ids_only, **tuning)
                    return batched_search(search_many, self.dataset.queries, self.seconds)[0]

                yield Served(measure_tuned, batched_rate)
                if not self.in_process:
                    client.delete_index(name)
        finally:
            if self.in_process:
                server.stop()
                shutil.rmtree(data_dir)


def next_ef(ef: int, reached: bool) -> int:
    """The neighbouring EF_STEPS value: cheaper after reaching the target recall, broader otherwise."""
    lower = [step for step in EF_STEPS if step < ef]
    higher = [step for step in EF_STEPS if step > ef]
    if reached:
        return lower[-1] if lower else ef
    return higher[0] if higher else ef


def sweep(measure_at: Callable[[int], Result], first: int, step: Callable[[int, bool], int]) -> None:
    """Measures at `first`, then steps cheaper while the target recall holds or broader until it is
    reached, stopping at the first setting on the other side (or after SWEEP_STEPS settings)."""
    value = first
    reached = measure_at(value).recall >= TARGET_RECALL
    for _ in range(SWEEP_STEPS - 1):
        following = step(value, reached)
        if following == value:
            return
        value = following
        now_reached = measure_at(value).recall >= TARGET_RECALL
        if now_reached != reached:
            return


def next_nprobe(lists: int) -> Callable[[int, bool], int]:
    def step(nprobe: int, reached: bool) -> int:
        return max(1, nprobe // 2) if reached else min(lists, nprobe * 2)

    return step


def vecserve_results(
    report: Report,
    dataset: Dataset,
    scratch: Path,
    seconds: float,
    first_ef: int,
    kinds: Sequence[str] = KINDS,
    rival: HnswlibRival | None = None,
) -> list[Result]:
    """The given kinds; HNSW and IVF built once each and swept over ef_search and nprobe per request
    (ivf_pq takes the largest nprobe ivf_flat was swept to, or nlist/8 without ivf_flat). With a rival,
    the fastest HNSW setting reaching the target recall then takes turns with it (head_to_head)."""
    count = len(dataset.vectors)
    lists = ivf_lists(count)
    results: list[Result] = []

    def add(result: Result) -> Result:
        report_result(report, dataset, result)
        results.append(result)
        return result

    hnsw = HnswParams(m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
    ivf = IvfParams(nlist=lists)
    with VecserveRunner(dataset, scratch, seconds) as runner:
        if "flat" in kinds:
            with runner.serving(Setup("flat", None, "flat")) as served:
                add(served.measure("flat"))
        if "hnsw" in kinds:
            with runner.serving(Setup("hnsw", hnsw, "hnsw")) as served:
                swept: list[Result] = []

                def hnsw_at(ef: int) -> Result:
                    swept.append(add(served.measure(f"hnsw M={HNSW_M} ef_search={ef}", ef_search=ef)))
                    return swept[-1]

                sweep(hnsw_at, first_ef, next_ef)
                best = fastest(swept, batched=True)
                if rival is not None and best is not None:
                    head_to_head(report, dataset, served, best, rival, seconds)
        nprobes = [max(1, lists // 8)]
        if "ivf_flat" in kinds:
            with runner.serving(Setup("ivf_flat", ivf, f"ivf_flat {lists}")) as served:

                def ivf_at(nprobe: int) -> Result:
                    nprobes.append(nprobe)
                    return add(served.measure(f"ivf_flat {lists}/{nprobe}", nprobe=nprobe))

                sweep(ivf_at, nprobes[0], next_nprobe(lists))
        if "ivf_pq" in kinds:
            pq_nprobe = max(nprobes)
            pq = IvfPqParams(nlist=lists, nprobe=pq_nprobe, m=DIMENSION // 8, nbits=8)
            with runner.serving(Setup("ivf_pq", pq, "ivf_pq")) as served:
                add(served.measure(f"ivf_pq {lists}/{pq_nprobe} m={pq.m}"))
        if "sq8" in kinds:
            with runner.serving(Setup("sq8", Sq8Params(), "sq8")) as served:
                add(served.measure("sq8"))
        floor = runner.call_floor()
    report.add(
        f"peers {dataset.name}",
        f"vecserve: {FLOOR_VECTORS}-vector index, 1 query/call (the per-call floor)",
        floor,
        "q/s",
        f"{1000 / floor:.2f} ms per call through the client, gRPC and the service",
    )
    return results


# -- peers, each in a spawned process ------------------------------------------------------------


def load_dataset_file(path: str) -> Dataset:
    with np.load(path) as data:
        return Dataset(str(data["name"]), data["vectors"], data["queries"], data["truth"], "")


def chromadb_results(data_path: str, scratch: str, seconds: float) -> list[Result]:
    import chromadb

    dataset = load_dataset_file(data_path)
    count = len(dataset.vectors)
    path = str(Path(scratch) / "chroma")
    client = chromadb.PersistentClient(path=path)
    collection = client.create_collection("bench", embedding_function=None)
    baseline = resident_bytes()
    batch = client.get_max_batch_size()
    began = time.perf_counter()
    for start in range(0, count, batch):
        rows = dataset.vectors[start : start + batch]
        collection.add(ids=[str(start + i) for i in range(len(rows))], embeddings=rows)
    load_rate = count / (time.perf_counter() - began)
    gc.collect()
    memory = growth_per_million(baseline, count)

    def search_many(queries: np.ndarray) -> list[list[int]]:
        answer = collection.query(query_embeddings=queries, n_results=K, include=[])
        return [[int(i) for i in ids] for ids in answer["ids"]]

    def search_one(query: np.ndarray) -> list[int]:
        return search_many(query[None, :])[0]

    hnsw = collection.configuration["hnsw"]
    settings = f"{hnsw['space']}, M={hnsw['max_neighbors']}, ef_search={hnsw['ef_search']}"
    note = f"defaults ({settings}); loaded at {load_rate:,.0f} vectors/s"
    results = [measure("chromadb (defaults)", search_one, search_many, dataset, seconds, memory, note)]
    if results[0].recall < TARGET_RECALL:
        # The same collection with a broader search, as a user would tune it for the target recall.
        # A changed ef_search reaches the search only through a client opened afterwards.
        for ef in [ef for ef in EF_STEPS if ef > hnsw["ef_search"]]:
            collection.modify(configuration={"hnsw": {"ef_search": ef}})
            client.clear_system_cache()
            client = chromadb.PersistentClient(path=path)
            collection = client.get_collection("bench")
            if recall(search_many_all(search_many, dataset.queries), dataset.truth) >= TARGET_RECALL:
                break
        note = "smallest ef_search reaching the target recall"
        result = measure(f"chromadb ef_search={ef}", search_one, search_many, dataset, seconds, note=note)
        result.breadth = ef
        results.append(result)
    return results


def milvus_results(data_path: str, scratch: str, seconds: float) -> list[Result]:
    from pymilvus import DataType, MilvusClient

    dataset = load_dataset_file(data_path)
    count = len(dataset.vectors)
    client = MilvusClient(str(Path(scratch) / "milvus.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIMENSION)
    flat = client.prepare_index_params()
    flat.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    client.create_collection("bench", schema=schema, index_params=flat)
    baseline = resident_bytes()
    began = time.perf_counter()
    for start in range(0, count, 10_000):
        rows = dataset.vectors[start : start + 10_000]
        client.insert("bench", [{"id": start + i, "vector": row} for i, row in enumerate(rows)])
    client.flush("bench")
    client.load_collection("bench")
    load_rate = count / (time.perf_counter() - began)
    gc.collect()
    memory = growth_per_million(baseline, count)
    search_params: dict[str, Any] = {}

    def search_many(queries: np.ndarray) -> list[list[int]]:
        answer = client.search(
            "bench", data=list(queries), limit=K, output_fields=["id"], search_params=search_params
        )
        return [[hit["id"] for hit in hits] for hits in answer]

    def search_one(query: np.ndarray) -> list[int]:
        return search_many(query[None, :])[0]

    note = f"in-process server thread; loaded at {load_rate:,.0f} vectors/s"
    results = [measure("milvus-lite FLAT", search_one, search_many, dataset, seconds, memory, note)]

    lists = ivf_lists(count)
    client.release_collection("bench")
    client.drop_index("bench", "vector")
    ivf = client.prepare_index_params()
    # Nested: milvus-lite 3.2 reads build parameters only under "params", and pymilvus 3.0 sends a flat
    # {"nlist": n} as separate keys, which milvus-lite silently ignores (building 128 lists).
    ivf.add_index(
        field_name="vector", index_type="IVF_FLAT", metric_type="COSINE", params={"params": {"nlist": lists}}
    )
    client.create_index("bench", ivf)
    assert client.describe_index("bench", "vector")["params"] == {"nlist": lists}
    client.load_collection("bench")
    # Doubling from 1/64 of the lists up to all of them (exact), until the target recall.
    nprobe = max(1, lists // 64)
    while True:
        search_params = {"params": {"nprobe": nprobe}}
        reached = recall(search_many_all(search_many, dataset.queries), dataset.truth) >= TARGET_RECALL
        if reached or nprobe == lists:
            break
        nprobe = min(lists, nprobe * 2)
    note = "smallest nprobe, doubling, reaching the target recall"
    ivf_result = measure(
        f"milvus-lite IVF_FLAT {lists}/{nprobe}", search_one, search_many, dataset, seconds, note=note
    )
    ivf_result.breadth = nprobe
    results.append(ivf_result)
    client.close()
    return results


def hnswlib_results(data_path: str, scratch: str, seconds: float) -> list[Result]:
    import hnswlib

    dataset = load_dataset_file(data_path)
    count = len(dataset.vectors)
    baseline = resident_bytes()
    index = hnswlib.Index(space="ip", dim=DIMENSION)
    index.init_index(max_elements=count, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M)
    began = time.perf_counter()
    index.add_items(dataset.vectors, np.arange(count))
    load_rate = count / (time.perf_counter() - began)
    gc.collect()
    memory = growth_per_million(baseline, count)

    def search_many(queries: np.ndarray) -> list[list[int]]:
        return index.knn_query(queries, k=K)[0].tolist()

    def search_one(query: np.ndarray) -> list[int]:
        return index.knn_query(query, k=K)[0][0].tolist()

    for ef in EF_STEPS:
        index.set_ef(ef)
        if recall(search_many(dataset.queries), dataset.truth) >= TARGET_RECALL:
            break
    note = f"smallest ef reaching the target recall; built at {load_rate:,.0f} vectors/s"
    result = measure(f"hnswlib M={HNSW_M} ef={ef}", search_one, search_many, dataset, seconds, memory, note)
    result.breadth = ef
    return [result]


def hnswlib_rival(data_path: str, connection: Connection) -> None:
    """hnswlib in a process of its own: once built, sends the smallest ef reaching the target recall
    (its graph is built anew, and random levels move its recall) with that recall, then the rate of one
    round of batched search for each number of seconds it receives, until it receives None."""
    import hnswlib

    dataset = load_dataset_file(data_path)
    count = len(dataset.vectors)
    index = hnswlib.Index(space="ip", dim=DIMENSION)
    index.init_index(max_elements=count, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M)
    index.add_items(dataset.vectors, np.arange(count))

    def search_many(queries: np.ndarray) -> list[list[int]]:
        return index.knn_query(queries, k=K)[0].tolist()

    for ef in EF_STEPS:
        index.set_ef(ef)
        reached = recall(search_many_all(search_many, dataset.queries), dataset.truth)
        if reached >= TARGET_RECALL:
            break
    connection.send((ef, reached))
    while (seconds := connection.recv()) is not None:
        connection.send(batched_search(search_many, dataset.queries, seconds)[0])


class HnswlibRival:
    """hnswlib kept loaded beside vecserve, so that their batched rounds take turns in one stretch of
    the machine's load: measured minutes apart, hnswlib's batched rate swung 27-fold with the load of a
    shared 2-core machine, which no ratio of separate runs survives."""

    def __init__(self, data_path: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=hnswlib_rival, args=(str(data_path), child), daemon=True)
        self._process.start()
        child.close()
        # Built before vecserve's own work begins, which its building would otherwise slow.
        self.ef, self.recall = self._connection.recv()

    def batched_rate(self, seconds: float) -> float:
        self._connection.send(seconds)
        return self._connection.recv()

    def close(self) -> None:
        self._connection.send(None)
        self._process.join()


def head_to_head(
    report: Report,
    dataset: Dataset,
    served: Served,
    best: Result,
    rival: HnswlibRival,
    seconds: float,
) -> None:
    """vecserve's fastest HNSW setting reaching the target recall and hnswlib's, in alternating rounds of
    batched search; the median of the rounds' ratios. vecserve answers with ids and scores only
    (ids_only), as hnswlib does, and also with full hits (text and metadata looked up), each measured
    next to hnswlib: ids only, hnswlib, full hits in even rounds, the other way round in odd ones."""

    def ours(ids_only: bool) -> float:
        return served.batched_rate(ids_only=ids_only, ef_search=best.breadth)

    ids_ratios, full_ratios = [], []
    for round_number in range(HEAD_TO_HEAD_ROUNDS):
        if round_number % 2 == 0:
            ids_rate, theirs, full_rate = ours(True), rival.batched_rate(seconds), ours(False)
        else:
            full_rate, theirs, ids_rate = ours(False), rival.batched_rate(seconds), ours(True)
        ids_ratios.append(ids_rate / theirs)
        full_ratios.append(full_rate / theirs)
    against = (
        f"{best.system.removeprefix('vecserve ')} (recall {best.recall:.3f}) against ef={rival.ef} (recall "
        f"{rival.recall:.3f}), {HEAD_TO_HEAD_ROUNDS} interleaved rounds"
    )
    for what, ratios in (("ids and scores", ids_ratios), ("full hits", full_ratios)):
        report.add(
            f"peers {dataset.name}",
            f"vecserve / hnswlib, {QUERIES_PER_CALL} queries/call, {what}",
            median(ratios),
            "ratio",
            f"{against}; rounds {', '.join(f'{ratio:.2f}' for ratio in ratios)}; aim >= 0.7",
        )


def search_many_all(search_many: SearchMany, queries: np.ndarray) -> list[Sequence[int]]:
    found: list[Sequence[int]] = []
    for start in range(0, len(queries), QUERIES_PER_CALL):
        found.extend(search_many(queries[start : start + QUERIES_PER_CALL]))
    return found


PEER_RUNNERS: dict[str, Callable[[str, str, float], list[Result]]] = {
    "chromadb": chromadb_results,
    "milvus-lite": milvus_results,
    "hnswlib": hnswlib_results,
}


def save_dataset(dataset: Dataset, scratch: Path) -> Path:
    """The data set in a file the peers' processes load (load_dataset_file)."""
    data_path = scratch / f"{dataset.name}.npz"
    np.savez(
        data_path, name=dataset.name, vectors=dataset.vectors, queries=dataset.queries, truth=dataset.truth
    )
    return data_path


def peer_results(
    report: Report,
    dataset: Dataset,
    data_path: Path,
    scratch: Path,
    seconds: float,
    peers: Sequence[str] = tuple(PEERS),
) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {}
    for peer, module in PEERS.items():
        if peer not in peers:
            continue
        if importlib.util.find_spec(module) is None:
            print(f"  {peer} is not installed: skipped (pip install 'vecserve[bench]')", flush=True)
            continue
        if peer == "milvus-lite" and len(dataset.vectors) > MILVUS_LITE_MAX_VECTORS:
            print(
                f"  milvus-lite skipped above {MILVUS_LITE_MAX_VECTORS:,} vectors: it needs about 20 GiB "
                "per million",
                flush=True,
            )
            continue
        workdir = scratch / peer
        workdir.mkdir()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[peer] = pool.submit(PEER_RUNNERS[peer], str(data_path), str(workdir), seconds).result()
        for result in results[peer]:
            report_result(report, dataset, result)
    return results


# -- reporting -----------------------------------------------------------------------------------


def report_result(report: Report, dataset: Dataset, result: Result) -> None:
    section = f"peers {dataset.name}"
    report.add(section, f"{result.system}: recall@10", result.recall, "fraction", result.note)
    report.add(section, f"{result.system}: 1 query/call", result.single_qps, "q/s")
    report.add(section, f"{result.system}: {QUERIES_PER_CALL} queries/call", result.batched_qps, "q/s")
    if result.memory_per_million is not None:
        how = "structure" if result.system.startswith("vecserve") else "RSS growth while loading"
        report.add(section, f"{result.system}: memory per 1M vectors", result.memory_per_million, "MiB", how)


def fastest(results: Sequence[Result], batched: bool) -> Result | None:
    """The fastest result reaching the target recall (one query per call, or batched)."""
    reaching = [r for r in results if r.recall >= TARGET_RECALL]
    if not reaching:
        return None
    return max(reaching, key=lambda r: r.batched_qps if batched else r.single_qps)


def report_ratios(
    report: Report, dataset: Dataset, ours: Sequence[Result], peers: dict[str, list[Result]]
) -> None:
    section = f"peers {dataset.name}"
    for batched, mode in ((False, "1 query/call"), (True, f"{QUERIES_PER_CALL} queries/call")):
        best = fastest(ours, batched)
        if best is None:  # only without flat, which always reaches it
            print(f"  no vecserve setup measured reached recall {TARGET_RECALL}", flush=True)
            continue

        def qps(result: Result, batched: bool = batched) -> float:
            return result.batched_qps if batched else result.single_qps

        report.add(
            section,
            f"vecserve at recall >= {TARGET_RECALL}, {mode}",
            qps(best),
            "q/s",
            f"{best.system.removeprefix('vecserve ')}, recall {best.recall:.3f}",
        )
        for peer, aim in (("chromadb", ">= 1"), ("hnswlib", ">= 0.5"), ("milvus-lite", "")):
            if peer not in peers:
                continue
            theirs = fastest(peers[peer], batched)
            if theirs is not None:
                note = f"{theirs.system}, recall {theirs.recall:.3f}"
            else:
                theirs = max(peers[peer], key=qps)
                note = f"{theirs.system} below the target: recall {theirs.recall:.3f}"
            report.add(
                section,
                f"vecserve / {peer}, {mode}",
                qps(best) / qps(theirs),
                "ratio",
                note + (f"; aim {aim}" if aim else ""),
            )


# -- bulk indexing through the CLI ---------------------------------------------------------------


def bulk_indexing(report: Report, count: int, scratch: Path) -> None:
    from benchmarks.embedding_bench import in_process_rate
    from clients import VecserveClient
    from clients.local_server import ServerProcess

    texts = short_texts(count, words_per_text=WORDS_PER_TEXT, seed=11)
    source = scratch / "documents.jsonl"
    source.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    server = ServerProcess(scratch / "bulk", "--device", "auto").start()
    try:

        def add(index_name: str) -> float:
            with VecserveClient(server.address) as client:
                client.create_index(index_name)
            command = [sys.executable, "-m", "clients.cli", "--address", server.address, "add", index_name]
            began = time.perf_counter()
            finished = subprocess.run(
                [*command, str(source), "--no-progress", "--json"], capture_output=True, text=True, check=True
            )
            elapsed = time.perf_counter() - began
            assert json.loads(finished.stdout)["upserted"] == count
            return count / elapsed

        # Interleaved, best of two, so that drift on a shared machine hits both sides alike.
        local_rates, add_rates = [], []
        for attempt in range(2):
            local_rates.append(in_process_rate(texts, 64))
            add_rates.append(add(f"bulk-{attempt}"))
    finally:
        server.stop()
    section = "bulk index"
    local, added = max(local_rates), max(add_rates)
    report.add(
        section, f"vecserve add, {count:,} short texts (JSONL)", added, "docs/s", "CLI process, wall clock"
    )
    report.add(section, "in-process SentenceTransformer.encode, batch 64", local, "texts/s")
    report.add(section, "vecserve add / in-process encode", added / local, "ratio", "aim >= 0.8")


# -- the suite -----------------------------------------------------------------------------------


def datasets(report: Report, names: Sequence[str]) -> Iterator[Dataset]:
    """The named data sets, one at a time (a million vectors and their copies take gigabytes)."""
    queries = report.pick(tiny=100, quick=300, full=1_000)
    for name in names:
        if name == "minilm":
            # Quick: few enough texts to embed within the quick suite's five minutes on a fresh clone.
            count = report.pick(tiny=2_000, quick=20_000, full=100_000)
            vectors = embedded_texts(count, CORPUS_SEED)
            yield make_dataset(
                name, vectors, embedded_texts(queries, QUERY_SEED), "all-MiniLM-L6-v2 embeddings of sentences"
            )
        elif name == "random":
            count = report.pick(tiny=2_000, quick=20_000, full=100_000)
            vectors = random_unit_vectors(count, 1)
            yield make_dataset(name, vectors, random_unit_vectors(queries, 2), "normalized Gaussian vectors")
        else:
            count = report.pick(tiny=2_000, quick=100_000, full=1_000_000)
            vectors = clustered_unit_vectors(count + queries, 3)
            yield make_dataset(
                name, vectors[:count], vectors[count:], "synthetic vectors clustered like embeddings"
            )


def run(
    report: Report,
    names: Sequence[str] | None = None,
    bulk: bool = True,
    peers: Sequence[str] = tuple(PEERS),
    kinds: Sequence[str] = KINDS,
) -> None:
    """Search on the named data sets (default: minilm alone at tiny and quick sizes, all of them at full
    size) with the given peers and vecserve index kinds, then bulk indexing unless `bulk` is false."""
    if names is None:
        names = {"tiny": DATASETS[:1], "quick": DATASETS[:1], "full": DATASETS}[report.size]
    seconds = {"tiny": 0.3, "quick": 1.0, "full": 5.0}[report.size]
    load = os.getloadavg()[0]
    report.context["peers_load_average"] = round(load, 2)
    if load > (os.cpu_count() or 1) / 2:
        print(f"  warning: load average {load:.1f} on {os.cpu_count()} CPUs: other work skews these figures")
    with tempfile.TemporaryDirectory(dir=os.environ.get("VECSERVE_BENCH_DIR")) as scratch_name:
        scratch = Path(scratch_name)
        for dataset in datasets(report, names):
            print(
                f"  -- {dataset.label} ({dataset.note}), {len(dataset.queries):,} queries, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            workdir = scratch / dataset.name
            workdir.mkdir()
            data_path = save_dataset(dataset, workdir)
            theirs = peer_results(report, dataset, data_path, workdir, seconds, peers)
            # hnswlib's graph (same M and ef_construction) needs about the same ef as FAISS's: start there.
            first_ef = theirs["hnswlib"][0].breadth if "hnswlib" in theirs else FIRST_EF_SEARCH
            rival = HnswlibRival(data_path) if "hnswlib" in theirs and "hnsw" in kinds else None
            try:
                ours = vecserve_results(report, dataset, workdir, seconds, first_ef, kinds, rival)
            finally:
                if rival is not None:
                    rival.close()
            data_path.unlink()
            report_ratios(report, dataset, ours, theirs)
        if bulk:
            bulk_indexing(report, report.pick(tiny=200, quick=2_000, full=10_000), scratch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "quick", "full"], default="full")
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, help="search on these (default: all at full size)"
    )
    parser.add_argument("--no-bulk", action="store_true", help="leave out bulk indexing")
    parser.add_argument(
        "--peers", nargs="+", choices=list(PEERS), default=list(PEERS), help="compare with these"
    )
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="vecserve index kinds")
    parser.add_argument("--json-out", type=Path, default=Path("bench-peers.json"))
    args = parser.parse_args(argv)
    report = Report(size=args.size, context=machine_context())
    began = time.perf_counter()
    run(report, args.datasets, bulk=not args.no_bulk, peers=args.peers, kinds=args.kinds)
    report.finish(began, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

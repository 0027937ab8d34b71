"""Scale-out on one machine: `cluster index` with 1 and 2 encoder actors against `vecserve add` into one
server, search latency through `cluster serve` (2 shards) against one server on the same vectors, and
Embed throughput through the cluster's encoder replicas against one server's encoder.

The single server runs first and is stopped before Ray starts, so neither side's processes take the
other's cores. Each actor reserves one CPU (one torch thread); the one server uses every core. The
index rates are steady rates, from the first embedded batch to the last; the actors' start-up (model
load) is reported apart, since a long job pays it once.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Report, concurrent_calls, short_texts, timed
from clients import VecserveClient
from clients.cli import main as cli
from clients.local_server import ServerProcess
from service.cluster.indexing import (
    EmbeddedBatch,
    EncoderOptions,
    ErrorBudget,
    IndexRequest,
    PoolOptions,
    ShardWriter,
    embedded_batches,
)
from service.cluster.manifest import open_manifest
from service.cluster.serving import ClusterSettings, start_cluster_server
from service.common.document_files import ReadOptions, read_records
from service.config import Settings, default_model_path
from service.index.model import Document, IndexKind
from service.index.store import IndexStore

DIMENSION = 384
SEARCH_CLIENTS = 8
EMBED_CLIENTS = 8
TEXTS_PER_EMBED = 8
SHARDS = 2
# A one-word analogy vocabulary: none is embedded at start-up while the figures are taken.
SERVER_ENV = {"VECSERVE_VOCABULARY_SIZE": "1"}


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIMENSION)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def vector_documents(vectors: np.ndarray) -> list[Document]:
    return [Document(id=f"d{number}", vector=vector) for number, vector in enumerate(vectors)]


def one_server_dir(path: Path, documents: list[Document]) -> None:
    store = IndexStore(path)
    try:
        store.create_index("bench", dimension=DIMENSION, kind=IndexKind.FLAT)
        for start in range(0, len(documents), 1000):
            store.upsert("bench", documents[start : start + 1000])
    finally:
        store.close()


def sharded_dir(path: Path, documents: list[Document]) -> None:
    """What `cluster index --shards 2` writes, from vectors (nothing to embed)."""
    writer = ShardWriter(path, open_manifest(path, SHARDS), IndexRequest("bench"), default_model_path())
    try:
        for start in range(0, len(documents), 1000):
            chunk = documents[start : start + 1000]
            writer.write(EmbeddedBatch(documents=chunk, wheres=[d.id for d in chunk]), ErrorBudget(0, print))
    finally:
        writer.close()


def cluster_index_rates(source: Path, out: Path, actors: int, batch_size: int) -> tuple[float, float]:
    """Steady documents/s of the pipeline (first embedded batch to the last, stored) and the seconds
    before the first batch (actor start-up and model load)."""
    writer = ShardWriter(out, open_manifest(out, SHARDS), IndexRequest("bench"), default_model_path())
    began = time.perf_counter()
    first_batch = 0.0
    stored = first_stored = 0
    try:
        batches = embedded_batches(
            [source],
            ReadOptions(),
            EncoderOptions(default_model_path(), "cpu"),
            PoolOptions(actors=actors, batch_size=batch_size),
            normalize=True,
        )
        for batch in batches:
            written = writer.write(batch, ErrorBudget(0, print))
            if not first_batch:
                first_batch, first_stored = time.perf_counter(), written
            stored += written
    finally:
        writer.close()
    steady = (stored - first_stored) / (time.perf_counter() - first_batch)
    return steady, first_batch - began


def search_one(client: VecserveClient, query: np.ndarray) -> None:
    client.search("bench", [query], k=10)


def embed_some(client: VecserveClient, texts: list[str]) -> None:
    client.embed(texts)


def run(report: Report) -> None:
    import ray

    document_count = report.pick(tiny=256, quick=4_000, full=20_000)
    vector_count = report.pick(tiny=2_000, quick=50_000, full=200_000)
    query_count = report.pick(tiny=64, quick=1_024, full=4_096)
    embed_calls = report.pick(tiny=32, quick=256, full=1_024)
    batch_size = 64
    texts = short_texts(document_count, seed=11)
    documents = vector_documents(unit_rows(vector_count, 1))
    queries = list(unit_rows(query_count, 2))
    embed_batches = [short_texts(TEXTS_PER_EMBED, seed=number) for number in range(embed_calls)]
    section = "cluster"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        source = root / "texts.jsonl"
        source.write_text("".join(json.dumps({"id": f"t{n}", "text": t}) + "\n" for n, t in enumerate(texts)))
        one_server_dir(root / "one", documents)
        # The two steps that stay on the command's machine, whatever the number of actors.
        write_seconds, _ = timed(lambda: sharded_dir(root / "sharded", documents))
        read_seconds, read = timed(lambda: sum(1 for _ in read_records(source, ReadOptions())))

        server = ServerProcess(root / "one", env=SERVER_ENV).start()
        try:
            assert cli(["--address", server.address, "index", "create", "added"]) == 0
            began = time.perf_counter()
            assert cli(["--address", server.address, "add", "added", str(source), "--no-progress"]) == 0
            add_rate = document_count / (time.perf_counter() - began)
            one_search = concurrent_calls(server.address, queries, SEARCH_CLIENTS, search_one)
            one_embed = concurrent_calls(server.address, embed_batches, EMBED_CLIENTS, embed_some)
        finally:
            server.stop()

        ray.init(num_cpus=4, include_dashboard=False, logging_level="warning")
        try:
            one_actor, one_actor_start = cluster_index_rates(source, root / "index-1", 1, batch_size)
            two_actors, two_actors_start = cluster_index_rates(source, root / "index-2", 2, batch_size)
            settings = Settings(listen="127.0.0.1:0", data_dir=root / "sharded", vocabulary_size=1)
            layout = ClusterSettings(encoder_replicas=2, cpus_per_encoder=1, cpus_per_shard=0.5)
            cluster = start_cluster_server(settings, layout, shard_count=None)
            try:
                address = f"127.0.0.1:{cluster.port}"
                cluster_search = concurrent_calls(address, queries, SEARCH_CLIENTS, search_one)
                cluster_embed = concurrent_calls(address, embed_batches, EMBED_CLIENTS, embed_some)
            finally:
                cluster.stop()
        finally:
            ray.shutdown()

    report.add(
        section,
        "reading JSON Lines on the command's node",
        read / read_seconds,
        "docs/s",
        "bounds cluster index",
    )
    report.add(
        section,
        f"storing into {SHARDS} shards at the command's node",
        vector_count / write_seconds,
        "docs/s",
        "idem",
    )
    report.add(section, f"vecserve add into one server ({document_count:,} texts)", add_rate, "docs/s")
    for actors, rate, start in ((1, one_actor, one_actor_start), (2, two_actors, two_actors_start)):
        report.add(
            section,
            f"cluster index, {actors} actor(s) x 1 CPU, steady",
            rate,
            "docs/s",
            f"start-up {start:.1f} s",
        )
        report.add(section, f"cluster index {actors} actor(s) / vecserve add", rate / add_rate, "ratio")
    report.add(
        section, "cluster index per actor (1 CPU)", one_actor, "docs/s", "the unit to multiply by actors"
    )
    for name, (rate, p50, p99) in (
        ("one server", one_search),
        (f"cluster serve, {SHARDS} shards", cluster_search),
    ):
        report.add(
            section,
            f"search {vector_count:,} x {DIMENSION} flat, {SEARCH_CLIENTS} clients: {name}",
            rate,
            "queries/s",
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        )
    report.add(section, "search p50: cluster / one server", cluster_search[1] / one_search[1], "ratio")
    report.add(section, "search p99: cluster / one server", cluster_search[2] / one_search[2], "ratio")
    for name, (rate, p50, _) in (("one server", one_embed), ("cluster, 2 encoder replicas", cluster_embed)):
        report.add(
            section,
            f"Embed {TEXTS_PER_EMBED} texts/call, {EMBED_CLIENTS} clients: {name}",
            rate * TEXTS_PER_EMBED,
            "texts/s",
            f"p50 {p50:.1f} ms",
        )
    report.add(section, "Embed throughput: cluster / one server", cluster_embed[0] / one_embed[0], "ratio")

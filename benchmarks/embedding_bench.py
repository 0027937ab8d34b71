"""Embedding throughput: gRPC vs in-process encode, and many small concurrent calls with and without
dynamic batching (aims 1 and 2 of the throughput work)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import Report, concurrent_calls, gpu_available, median, short_texts
from clients import VecserveClient
from tests.server_process import ServerProcess

BATCH = 64


def in_process_rate(texts: list[str], batch_size: int) -> float:
    """texts/s of SentenceTransformer.encode on this process's own copy of the default model."""
    from sentence_transformers import SentenceTransformer

    from service.config import default_model_path

    model = SentenceTransformer(default_model_path(), device="cuda" if gpu_available() else "cpu")
    if gpu_available():
        model.half()
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    began = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - began)


def grpc_batched_rate(address: str, texts: list[str]) -> float:
    with VecserveClient(address, timeout=600) as client:
        client.embed(texts[:BATCH])  # warm-up
        began = time.perf_counter()
        for start in range(0, len(texts), BATCH):
            client.embed(texts[start : start + BATCH])
        return len(texts) / (time.perf_counter() - began)


def embed_one(client: VecserveClient, text: str) -> None:
    client.embed([text])


def run(report: Report) -> None:
    count = report.pick(tiny=64, quick=512, full=2000)
    concurrent_count = report.pick(tiny=64, quick=320, full=1280)
    texts = short_texts(count)
    with tempfile.TemporaryDirectory() as scratch:
        batching = ServerProcess(Path(scratch) / "batching").start()
        plain = ServerProcess(Path(scratch) / "plain", "--no-dynamic-batching").start()
        try:
            # Interleaved, best of two, so that drift on a shared machine hits both sides alike.
            local_rates, grpc_rates = [], []
            for _ in range(2):
                local_rates.append(in_process_rate(texts, BATCH))
                grpc_rates.append(grpc_batched_rate(batching.address, texts))
            local, remote = max(local_rates), max(grpc_rates)
            report.add("embed", f"in-process encode, batch {BATCH} ({count} texts)", local, "texts/s")
            report.add("embed", f"gRPC Embed, batch {BATCH}", remote, "texts/s")
            report.add("embed", "gRPC / in-process", remote / local, "ratio", "aim >= 0.9")

            concurrent_texts = short_texts(concurrent_count, seed=11)
            with_rate, with_p50, with_p99 = concurrent_calls(
                batching.address, concurrent_texts, 32, embed_one
            )
            without_rate, without_p50, without_p99 = concurrent_calls(
                plain.address, concurrent_texts, 32, embed_one
            )
            in_process = in_process_rate(concurrent_texts, BATCH)
            section = "embed-32"
            report.add(section, "32 clients x 1 text/call, dynamic batching", with_rate, "texts/s")
            report.add(section, "  latency p50 / p99", with_p50, "ms", f"p99 {with_p99:.0f} ms")
            report.add(section, "32 clients x 1 text/call, batching off", without_rate, "texts/s")
            report.add(section, "  latency p50 / p99", without_p50, "ms", f"p99 {without_p99:.0f} ms")
            report.add(section, "in-process batched encode (same texts)", in_process, "texts/s")
            report.add(section, "batching on / off", with_rate / without_rate, "ratio", "aim >= 3")
            report.add(
                section, "batching on / in-process batched", with_rate / in_process, "ratio", "aim >= 0.8"
            )
            report.context["median_grpc_rate"] = median(grpc_rates)
        finally:
            batching.stop()
            plain.stop()

"""Embedding throughput on issue 14's workload: gRPC vs in-process encode, with batches of 64 and with 32
one-text clients (dynamic batching on and off); where the server's CPU per text goes, stage by stage
(from its metrics), and how much of each model batch is padding; and the fixed cost of any call
through the server's interceptors compared with a bare gRPC server."""

from __future__ import annotations

import collections
import functools
import logging
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.common import (
    Report,
    concurrent_calls,
    gpu_available,
    median,
    sequential_call_ms,
    short_texts,
)
from clients import VecserveClient
from clients.local_server import ServerProcess, free_port

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BATCH = 64
CLIENTS = 32
# The server's stages of an Embed call, in order (service/embedding/stages.py).
STAGES = ("parse", "tokenize", "queue", "model", "normalize", "response")


def workload_texts(count: int) -> list[str]:
    """Issue 14's texts: short sentences of 7 to 15 words, of mixed lengths."""
    return short_texts(count, words_per_text=15, seed=11, fewest_words=7)


@functools.cache
def reference_model() -> SentenceTransformer:
    """This process's own copy of the default model, as a user of sentence-transformers loads it."""
    from sentence_transformers import SentenceTransformer

    from service.config import default_model_path

    model = SentenceTransformer(default_model_path(), device="cuda" if gpu_available() else "cpu")
    if gpu_available():
        model.half()
    return model


def in_process_run(texts: list[str], batch_size: int) -> tuple[float, float]:
    """texts/s and CPU ms per text of SentenceTransformer.encode on this process's copy of the model."""
    model = reference_model()
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    began, cpu = time.perf_counter(), time.process_time()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - began), (time.process_time() - cpu) * 1000 / len(texts)


def in_process_rate(texts: list[str], batch_size: int) -> float:
    """texts/s of SentenceTransformer.encode on this process's own copy of the default model."""
    return in_process_run(texts, batch_size)[0]


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grpc_batched_rate(address: str, texts: list[str], after_warm_up: Callable[[], object]) -> float:
    """texts/s of Embed calls of BATCH texts one after another."""
    with VecserveClient(address, timeout=600) as client:
        client.embed(texts[:BATCH])  # warm-up
        after_warm_up()
        began = time.perf_counter()
        for start in range(0, len(texts), BATCH):
            client.embed(texts[start : start + BATCH])
        return len(texts) / (time.perf_counter() - began)


def median_run(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The (rate, p50, p99) run of median rate."""
    return sorted(runs)[len(runs) // 2]


def scrape(port: int) -> dict[str, float]:
    """A server's metrics, by sample name and labels ("name{label=value}")."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


class ServerSpend:
    """What a server spent on one workload, summed over rounds: process CPU and its metrics' growth."""

    def __init__(self, server: ServerProcess, metrics_port: int) -> None:
        assert server.process is not None
        self._pid = server.process.pid
        self._metrics_port = metrics_port
        self.texts = 0
        self.cpu_seconds = 0.0
        self.grown: collections.Counter[str] = collections.Counter()
        self._start: tuple[float, dict[str, float]] = (0.0, {})

    def start(self) -> None:
        metrics = scrape(self._metrics_port)  # scraped first: the scrape's own CPU is not counted
        self._start = (cpu_seconds(self._pid), metrics)

    def stop(self, texts: int) -> None:
        cpu, metrics = cpu_seconds(self._pid), scrape(self._metrics_port)
        self.texts += texts
        self.cpu_seconds += cpu - self._start[0]
        for name, value in metrics.items():
            self.grown[name] += value - self._start[1].get(name, 0.0)

    def per_text_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.texts

    def stage(self, kind: str, stage: str) -> float:
        """Seconds of CPU ("cpu") or of texts' wall time ("text") a stage grew by."""
        return self.grown[f"vecserve_embed_stage_{kind}_seconds_total{{stage={stage}}}"]

    def report(self, report: Report, section: str) -> None:
        """Server CPU per text, by stage, and the padding of its model batches."""
        report.add(section, "server CPU per text (process, /proc)", self.per_text_ms(self.cpu_seconds), "ms")
        if not any(name.startswith("vecserve_embed_stage_") for name in self.grown):
            report.add(section, "  (this server exposes no stage metrics)", 0, "")
            return
        for stage in STAGES:
            if stage == "queue":
                # Wall time between entering the batcher and the model call: the batcher's round trip
                # minus the model batch's duration, both summed over texts.
                waited = self.stage("text", "queue") - self.stage("text", "model")
                report.add(section, "  queue wait per text (wall)", self.per_text_ms(waited), "ms")
                continue
            report.add(section, f"  {stage}: CPU per text", self.per_text_ms(self.stage("cpu", stage)), "ms")
        staged = sum(self.stage("cpu", stage) for stage in STAGES)
        report.add(
            section,
            "  outside the stages: CPU per text",
            self.per_text_ms(self.cpu_seconds - staged),
            "ms",
            "gRPC (decode, encode, HTTP/2), interceptors, torch's extra threads",
        )
        real = self.grown["vecserve_encoder_real_tokens_total{}"]
        padded = self.grown["vecserve_encoder_padded_tokens_total{}"]
        batches = self.grown["vecserve_encoder_model_batches_total{}"]
        report.add(
            section, "padded / real tokens", padded / real, "ratio", f"{real / self.texts:.1f} real per text"
        )
        report.add(section, "texts per model batch", self.texts / batches, "texts", "after length buckets")
        gathered = self.grown["vecserve_encoder_batches_total{}"]
        if gathered:
            report.add(section, "texts per gathered batch", self.texts / gathered, "texts", "dynamic batcher")


def embed_one(client: VecserveClient, text: str) -> None:
    client.embed([text])


def per_call_overhead(report: Report, count: int) -> None:
    """Health/Check and GetModelInfo one after another: a vecserve server (interceptors, access log
    on, as served) vs a bare gRPC server holding only the health service, both in this process."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from vecserve.v1 import embedding_pb2, embedding_pb2_grpc

    from service.config import Settings, default_model_path
    from service.embedding.batching import BatchingSettings
    from service.embedding.encoder import Encoder
    from service.grpc_server.server import create_server
    from service.observability.logs import TextFormatter

    # Access lines are formatted and written as a served process does, to a sink instead of stderr.
    sink = logging.FileHandler(os.devnull)
    sink.setFormatter(TextFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(sink)
    root.setLevel(logging.INFO)
    bare = grpc.server(ThreadPoolExecutor(max_workers=8))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), bare)
    bare_port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    encoder = Encoder(default_model_path(), device="cpu", batching=BatchingSettings())
    with tempfile.TemporaryDirectory() as scratch:
        served = create_server(Settings(listen="127.0.0.1:0", data_dir=Path(scratch)), encoder=encoder)
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in (bare_port, served.port)]
        try:
            bare_health = health_pb2_grpc.HealthStub(channels[0])
            vecserve_health = health_pb2_grpc.HealthStub(channels[1])
            embedding = embedding_pb2_grpc.EmbeddingServiceStub(channels[1])
            check, info = health_pb2.HealthCheckRequest(), embedding_pb2.GetModelInfoRequest()
            ms = sequential_call_ms(
                {
                    "bare": lambda: bare_health.Check(check, timeout=10),
                    "health": lambda: vecserve_health.Check(check, timeout=10),
                    "info": lambda: embedding.GetModelInfo(info, timeout=10),
                },
                count,
            )
        finally:
            for channel in channels:
                channel.close()
            served.stop(grace=1)
            bare.stop(grace=1)
            encoder.close()
            root.removeHandler(sink)
            root.setLevel(level)
            sink.close()
    section = "per-call"
    report.add(section, f"bare gRPC server: Health/Check ({count} in a row)", ms["bare"], "ms")
    report.add(section, "vecserve: Health/Check (interceptors, access log)", ms["health"], "ms")
    report.add(section, "vecserve: GetModelInfo", ms["info"], "ms")
    report.add(
        section,
        "per-call overhead: vecserve - bare Health/Check",
        ms["health"] - ms["bare"],
        "ms",
        "request id, metadata, metrics, access log",
    )


def run(report: Report) -> None:
    count = report.pick(tiny=64, quick=1536, full=1536)
    rounds = {"tiny": 1, "quick": 3, "full": 3}[report.size]
    per_call_overhead(report, {"tiny": 50, "quick": 500, "full": 2000}[report.size])
    texts = workload_texts(count)
    metrics_port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        batching = ServerProcess(
            Path(scratch) / "batching", "--metrics-listen", f"127.0.0.1:{metrics_port}"
        ).start()
        plain = ServerProcess(Path(scratch) / "plain", "--no-dynamic-batching").start()
        try:
            # Rounds interleaved, the median of each side kept: one round on a shared 2-core machine
            # swings by a third, and drift hits every side alike.
            local_runs: list[tuple[float, float]] = []
            batch_rates: list[float] = []
            clients_runs: list[tuple[float, float, float]] = []
            plain_runs: list[tuple[float, float, float]] = []
            batch_spend = ServerSpend(batching, metrics_port)
            clients_spend = ServerSpend(batching, metrics_port)
            for _ in range(rounds):
                local_runs.append(in_process_run(texts, BATCH))
                batch_rates.append(grpc_batched_rate(batching.address, texts, batch_spend.start))
                batch_spend.stop(len(texts))
                clients_runs.append(
                    concurrent_calls(batching.address, texts, CLIENTS, embed_one, clients_spend.start)
                )
                clients_spend.stop(len(texts))
                plain_runs.append(concurrent_calls(plain.address, texts, CLIENTS, embed_one))
        finally:
            batching.stop()
            plain.stop()
    local_rates = [rate for rate, _ in local_runs]
    batch_ratios = [rate / local for rate, local in zip(batch_rates, local_rates, strict=True)]
    clients_ratios = [run[0] / local for run, local in zip(clients_runs, local_rates, strict=True)]
    with_rate, with_p50, with_p99 = median_run(clients_runs)
    without_rate, without_p50, without_p99 = median_run(plain_runs)

    def rounds_note(ratios: list[float], aim: str) -> str:
        return f"aim {aim}; rounds {', '.join(f'{ratio:.2f}' for ratio in ratios)}"

    section = "embed"
    words = f"{count} texts of 7-15 words, {rounds} rounds, median"
    report.add(section, f"in-process encode, batch {BATCH}", median(local_rates), "texts/s", words)
    report.add(section, f"gRPC Embed, {count // BATCH} calls of {BATCH}", median(batch_rates), "texts/s")
    report.add(
        section, "gRPC / in-process", median(batch_ratios), "ratio", rounds_note(batch_ratios, ">= 0.9")
    )
    local_cpu = median([ms for _, ms in local_runs])
    report.add(section, "CPU per text: in-process encode", local_cpu, "ms")
    batch_spend.report(report, section)
    efficiency_note = "CPU per text, steadier than rates on a shared machine"
    batch_efficiency = local_cpu / batch_spend.per_text_ms(batch_spend.cpu_seconds)
    report.add(section, "CPU per text: in-process / server", batch_efficiency, "ratio", efficiency_note)

    section = "embed-32"
    report.add(section, f"{CLIENTS} clients x 1 text/call, dynamic batching", with_rate, "texts/s")
    report.add(section, "  latency p50 / p99", with_p50, "ms", f"p99 {with_p99:.0f} ms")
    report.add(section, f"{CLIENTS} clients x 1 text/call, batching off", without_rate, "texts/s")
    report.add(section, "  latency p50 / p99", without_p50, "ms", f"p99 {without_p99:.0f} ms")
    report.add(section, "batching on / off", with_rate / without_rate, "ratio", "aim >= 3")
    report.add(
        section,
        "batching on / in-process batched",
        median(clients_ratios),
        "ratio",
        rounds_note(clients_ratios, ">= 0.8"),
    )
    clients_spend.report(report, section)
    clients_efficiency = local_cpu / clients_spend.per_text_ms(clients_spend.cpu_seconds)
    report.add(section, "CPU per text: in-process / server", clients_efficiency, "ratio", efficiency_note)

"""CPU backends vs float32 torch: throughput in-process and through gRPC, mean cosine, build times.

Every backend is measured in the same run as torch, interleaved round by round (best round kept),
so that drift on a shared machine hits all sides alike. Run alone with
`python -m benchmarks.backends_bench [--quick] [--json-out FILE] [--cache-dir DIR]`, or as the
`backends` suite of benchmarks.run through `run(report)` (which keeps builds in the directory named
by VECSERVE_BENCH_BACKEND_CACHE, when set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Report, machine_context, short_texts
from clients import VecserveClient
from clients.local_server import ServerProcess
from service.config import default_model_path
from service.embedding import backends
from service.embedding.encoder import Encoder

BATCH = 64
ROUNDS = 2
FAST_BACKENDS = (backends.OPENVINO, backends.OPENVINO_INT8)
# Where the suite keeps built backend models between runs (default: a temporary directory).
BACKEND_CACHE_VARIABLE = "VECSERVE_BENCH_BACKEND_CACHE"


def in_process_rate(encoder: Encoder, texts: list[str], batch_size: int) -> float:
    """texts/s of the encoder's model path (no batcher) on batches of batch_size."""
    encoder.encode(texts[:batch_size])  # warm-up
    began = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        encoder.encode(texts[start : start + batch_size])
    return len(texts) / (time.perf_counter() - began)


def grpc_rate(address: str, texts: list[str]) -> float:
    """texts/s of Embed calls of BATCH texts, one after another."""
    with VecserveClient(address, timeout=600) as client:
        client.embed(texts[:BATCH])  # warm-up
        began = time.perf_counter()
        for start in range(0, len(texts), BATCH):
            client.embed(texts[start : start + BATCH])
        return len(texts) / (time.perf_counter() - began)


def build_record(cache_dir: Path, backend: str) -> dict[str, float]:
    records = list(cache_dir.glob(f"*/{backend}/build.json"))
    return json.loads(records[0].read_text()) if records else {}


def run(report: Report, cache_dir: Path | None = None) -> None:
    # The backends run on the CPU on every machine, so sizes do not grow with a GPU.
    count = {"tiny": 64, "quick": 512, "full": 2000}[report.size]
    single_count = {"tiny": 8, "quick": 32, "full": 128}[report.size]
    texts = short_texts(count, seed=23)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        cache = cache_dir or Path(os.environ.get(BACKEND_CACHE_VARIABLE) or scratch / "models")
        model_path = default_model_path()

        encoders = {backends.TORCH: Encoder(model_path, device="cpu")}
        for name in FAST_BACKENDS:
            cached = bool(build_record(cache, name))
            seconds = time.perf_counter()
            encoders[name] = Encoder(model_path, device="cpu", backend=name, cache_dir=cache)
            seconds = time.perf_counter() - seconds
            record = build_record(cache, name)
            note = (
                "cached build reused"
                if cached
                else (f"export {record['export_seconds']:.1f} s, quantize {record['quantize_seconds']:.1f} s")
            )
            report.add("backend-build", f"{name}: start-up incl. build and quality check", seconds, "s", note)

        reference = encoders[backends.TORCH].encode(texts, normalize=False)
        guard_reference = encoders[backends.TORCH].encode(list(backends.QUALITY_CHECK_TEXTS))
        for name in FAST_BACKENDS:
            encoder = encoders[name]
            report.add(
                "backend-quality",
                f"{name} ({encoder.info.dtype}): mean cosine vs torch, guard set",
                backends.mean_cosine(encoder.encode(list(backends.QUALITY_CHECK_TEXTS)), guard_reference),
                "cosine",
                f"guard >= {backends.MIN_MEAN_COSINE}",
            )
            vectors = encoder.encode(texts, normalize=False)
            cosines = np.sum(vectors * reference, axis=1) / (
                np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
            )
            report.add(
                "backend-quality",
                f"{name}: mean cosine vs torch, {count} bench texts",
                float(cosines.mean()),
                "cosine",
                f"min {cosines.min():.4f}",
            )

        batched: dict[str, list[float]] = {name: [] for name in encoders}
        single: dict[str, list[float]] = {name: [] for name in encoders}
        for _ in range(ROUNDS):
            for name, encoder in encoders.items():
                batched[name].append(in_process_rate(encoder, texts, BATCH))
                single[name].append(in_process_rate(encoder, texts[:single_count], 1))
        for name in encoders:
            report.add(
                "backend-inproc",
                f"{name}: in-process, batch {BATCH} ({count} texts)",
                max(batched[name]),
                "texts/s",
            )
        for name in FAST_BACKENDS:
            report.add(
                "backend-inproc",
                f"{name} / torch, in-process batch {BATCH}",
                max(batched[name]) / max(batched[backends.TORCH]),
                "ratio",
                "aim >= 3 for int8",
            )
        for name in FAST_BACKENDS:
            report.add(
                "backend-inproc",
                f"{name} / torch, in-process batch 1",
                max(single[name]) / max(single[backends.TORCH]),
                "ratio",
            )
        for encoder in encoders.values():
            encoder.close()
        del encoders

        # One server per backend, each on its own data directory sharing the built models.
        servers = {}
        try:
            for name in (backends.TORCH, *FAST_BACKENDS):
                data_dir = scratch / f"data-{name}"
                data_dir.mkdir()
                (data_dir / ".models").symlink_to(cache.resolve(), target_is_directory=True)
                servers[name] = ServerProcess(data_dir, "--backend", name).start(timeout=600)
            served: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(ROUNDS):
                for name, server in servers.items():
                    served[name].append(grpc_rate(server.address, texts))
            for name in servers:
                report.add("backend-grpc", f"{name}: gRPC Embed, batch {BATCH}", max(served[name]), "texts/s")
            for name in FAST_BACKENDS:
                report.add(
                    "backend-grpc",
                    f"{name} / torch, through gRPC",
                    max(served[name]) / max(served[backends.TORCH]),
                    "ratio",
                    "aim >= 3 for int8",
                )
        finally:
            for server in servers.values():
                server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="fewer texts (a few minutes)")
    sizes.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    parser.add_argument("--json-out", type=Path, help="write the results here as JSON")
    parser.add_argument(
        "--cache-dir", type=Path, help="keep built backend models here between runs (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    report = Report(
        size="tiny" if args.tiny else "quick" if args.quick else "full", context=machine_context()
    )
    began = time.perf_counter()
    run(report, args.cache_dir)
    report.finish(began, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

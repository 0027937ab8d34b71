"""Embedding on a GPU: `make bench-gpu`, or `python -m benchmarks.gpu_bench [--device cpu] [--tiny]`.

On a CUDA machine, a server subprocess (`vecserve serve --device cuda`, float16) against in-process
sentence-transformers on the same GPU in float16:
  - Embed throughput through gRPC and in-process encode at batch sizes 1, 2, 4, ..., 1,024 (the same
    texts, the two sides taking turns at each size), and their ratio;
  - 256 concurrent clients sending one text per call (dynamic batching gathers them);
  - texts/s of each, and GPU memory: the in-process peak (torch) and the server process's (nvidia-smi).
Each batch size embeds a fixed number of texts, so the run stays under six minutes on a current GPU.

Without a GPU it says so and exits 0: nothing here would measure what the GPU path does. `--device
cpu` runs the same measurements on the CPU at small sizes, which is how the test suite checks this
benchmark's own code on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import Report, concurrent_calls, machine_context, short_texts
from clients import VecserveClient
from clients.local_server import ServerProcess


@dataclass(frozen=True)
class GpuRun:
    """The sizes of one run: the batch sizes swept, texts per batch size, concurrent clients."""

    batch_sizes: tuple[int, ...]
    texts_per_size: int
    clients: int
    concurrent_texts: int


FULL = GpuRun(tuple(2**power for power in range(11)), 4096, 256, 8192)
# Small enough for the CPU, where the test suite runs it.
TINY = GpuRun((1, 8), 16, 4, 16)


def batches(texts: list[str], size: int) -> list[list[str]]:
    return [texts[start : start + size] for start in range(0, len(texts), size)]


def in_process_rate(model: object, texts: list[str], size: int) -> float:
    """texts/s of SentenceTransformer.encode at one batch size (after a warm-up batch)."""
    model.encode(texts[:size], batch_size=size)  # type: ignore[attr-defined]
    began = time.perf_counter()
    model.encode(texts, batch_size=size, normalize_embeddings=True)  # type: ignore[attr-defined]
    return len(texts) / (time.perf_counter() - began)


def grpc_rate(client: VecserveClient, texts: list[str], size: int) -> float:
    """texts/s of Embed calls of `size` texts one after another (after a warm-up call)."""
    client.embed(texts[:size])
    began = time.perf_counter()
    for batch in batches(texts, size):
        client.embed(batch)
    return len(texts) / (time.perf_counter() - began)


def server_gpu_memory_mib(pid: int) -> float | None:
    """GPU memory the server process holds, from nvidia-smi (None without it)."""
    if shutil.which("nvidia-smi") is None:
        return None
    listing = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in listing.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return float(fields[1])
    return None


def load_model(device: str) -> object:
    from sentence_transformers import SentenceTransformer

    from service.config import default_model_path

    model = SentenceTransformer(default_model_path(), device=device)
    if device == "cuda":
        model.half()  # what the server runs on CUDA
    return model


def run(report: Report, device: str, sizes: GpuRun) -> None:
    import torch

    model = load_model(device)
    precision = "float16 on CUDA" if device == "cuda" else "float32 on the CPU"
    texts = short_texts(sizes.texts_per_size, seed=21)
    with tempfile.TemporaryDirectory() as scratch:
        # One RPC thread per concurrent client; a one-word vocabulary keeps its build out of the figures.
        server = ServerProcess(
            Path(scratch) / "data",
            "--device",
            device,
            "--worker-threads",
            str(max(32, sizes.clients)),
            env={"VECSERVE_VOCABULARY_SIZE": "1"},
        ).start(timeout=300)
        try:
            with VecserveClient(server.address, timeout=600) as client:
                for size in sizes.batch_sizes:
                    local = in_process_rate(model, texts, size)
                    remote = grpc_rate(client, texts, size)
                    section = f"batch {size}"
                    report.add(section, f"in-process encode ({precision})", local, "texts/s")
                    report.add(section, "gRPC Embed", remote, "texts/s")
                    report.add(section, "gRPC / in-process", remote / local, "ratio")
            concurrent_texts = short_texts(sizes.concurrent_texts, seed=22)
            rate, p50, p99 = concurrent_calls(
                server.address, concurrent_texts, sizes.clients, lambda c, text: c.embed([text])
            )
            section = f"{sizes.clients} clients"
            best_local = in_process_rate(model, concurrent_texts, max(sizes.batch_sizes))
            report.add(
                section, f"{sizes.clients} clients x 1 text/call", rate, "texts/s", f"p99 {p99:.0f} ms"
            )
            report.add(section, "  latency p50", p50, "ms")
            report.add(section, f"in-process encode, batch {max(sizes.batch_sizes)}", best_local, "texts/s")
            report.add(section, "clients / in-process", rate / best_local, "ratio")
            assert server.process is not None
            served_mib = server_gpu_memory_mib(server.process.pid)
        finally:
            server.stop()
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        report.add("memory", "in-process peak (torch.cuda.max_memory_allocated)", peak_mib, "MiB")
        if served_mib is not None:
            report.add("memory", "server process (nvidia-smi)", served_mib, "MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: the GPU, or stop without one"
    )
    parser.add_argument("--tiny", action="store_true", help="small sizes (for a run on the CPU)")
    parser.add_argument("--json-out", type=Path, default=Path("bench-gpu.json"))
    args = parser.parse_args(argv)
    import torch

    if args.device != "cpu" and not torch.cuda.is_available():
        print("no GPU: torch sees no CUDA device here, so there is nothing for bench-gpu to measure")
        return 0
    device = "cpu" if args.device == "cpu" else "cuda"
    report = Report(size="tiny" if args.tiny else "full", context=machine_context())
    began = time.perf_counter()
    run(report, device, TINY if args.tiny or device == "cpu" else FULL)
    report.finish(began, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

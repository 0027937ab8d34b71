"""The benchmark suite runs end to end on tiny sizes and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.backends_bench import BACKEND_CACHE_VARIABLE

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
# Every suite in one process: about six minutes on 2 quiet cores, far longer while other work loads them.
@pytest.mark.timeout(2400)
def test_tiny_benchmark_run_writes_json(tmp_path: Path, model_cache: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--tiny", "--json-out", str(out)],
        cwd=ROOT,
        # The backend builds of tests/test_backends.py, when it ran first, are reused.
        env={**os.environ, BACKEND_CACHE_VARIABLE: str(model_cache)},
        capture_output=True,
        text=True,
        timeout=2300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["size"] == "tiny"
    names = {row["name"] for row in payload["results"]}
    assert {
        "gRPC / in-process",
        "per-call floor: HTTP/JSON / gRPC",
        "Embed batches: HTTP/JSON / gRPC",
    } <= names
    assert all(row["value"] > 0 for row in payload["results"] if row["unit"] in ("ratio", "texts/s"))
    assert "ratio" in result.stdout


def run_gpu_bench(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_bench", *args, "--json-out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_gpu_benchmark_without_a_gpu_says_so_and_succeeds(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: `make bench-gpu` measures it")
    result = run_gpu_bench(out=tmp_path / "gpu.json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no GPU" in result.stdout
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.slow
def test_gpu_benchmark_code_runs_on_the_cpu(tmp_path: Path) -> None:
    """The GPU benchmark's measurements, run on the CPU at tiny sizes: every batch size and the
    concurrent clients are measured through a real server."""
    out = tmp_path / "gpu.json"
    result = run_gpu_bench("--device", "cpu", "--tiny", out=out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    ratios = {row["section"] for row in rows if row["name"] == "gRPC / in-process"}
    assert ratios == {"batch 1", "batch 8"}
    assert any(row["name"] == "clients / in-process" for row in rows)
    assert all(row["value"] > 0 for row in rows)

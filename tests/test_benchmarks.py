"""The benchmark suite runs end to end on tiny sizes and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_tiny_benchmark_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--tiny", "--json-out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
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

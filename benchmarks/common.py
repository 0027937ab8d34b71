"""Shared pieces of the benchmarks: result table and JSON, text sets, timing, a server subprocess."""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import service  # noqa: F401 - applies the server's threading defaults: both sides of a comparison run with them
from clients import VecserveClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Closable(Protocol):
    def close(self) -> None: ...


Connection = TypeVar("Connection", bound=Closable)


@dataclass
class Row:
    section: str
    name: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Report:
    """Collects figures; prints them as a table and writes them as JSON.

    `size` is "tiny" (a smoke run for the test suite), "quick" (a few minutes) or "full".
    """

    size: str
    rows: list[Row] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def add(self, section: str, name: str, value: float, unit: str, note: str = "") -> float:
        row = Row(section, name, float(value), unit, note)
        self.rows.append(row)
        print(f"  {section:<14} {name:<58} {format_value(value):>12} {unit:<9} {note}", flush=True)
        return value

    def pick(self, tiny: int, quick: int, full: int) -> int:
        """A size for this run, four times larger on a GPU."""
        chosen = {"tiny": tiny, "quick": quick, "full": full}[self.size]
        return chosen * 4 if self.size != "tiny" and gpu_available() else chosen

    def write_json(self, path: Path) -> None:
        payload = {"size": self.size, "context": self.context, "results": [asdict(r) for r in self.rows]}
        path.write_text(json.dumps(payload, indent=2) + "\n")

    def print_table(self) -> None:
        print("\n" + f"{'section':<14} {'measure':<58} {'value':>12} {'unit':<9} note")
        for r in self.rows:
            print(f"{r.section:<14} {r.name:<58} {format_value(r.value):>12} {r.unit:<9} {r.note}")

    def finish(self, began: float, json_out: Path | None) -> None:
        """Records the run's duration (since perf_counter() was `began`), prints the table and writes
        the JSON file when one is named."""
        self.context["seconds"] = round(time.perf_counter() - began, 1)
        self.print_table()
        if json_out is not None:
            self.write_json(json_out)
            print(f"\nwrote {json_out} ({self.context['seconds']} s)")


def format_value(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def machine_context() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def short_texts(
    count: int, words_per_text: int = 14, seed: int = 7, fewest_words: int | None = None
) -> list[str]:
    """Deterministic English-like sentences built from frequent words (no download needed); with
    `fewest_words`, each has between that many and `words_per_text` words (mixed lengths)."""
    from wordfreq import top_n_list

    vocabulary = [w for w in top_n_list("en", 5000) if w.isalpha()]
    rng = random.Random(seed)

    def words() -> int:
        return words_per_text if fewest_words is None else rng.randint(fewest_words, words_per_text)

    return [" ".join(rng.choices(vocabulary, k=words())).capitalize() + "." for _ in range(count)]


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def concurrent_calls(
    address: str,
    items: Sequence[Any],
    clients: int,
    call: Callable[[VecserveClient, Any], object],
    after_warm_up: Callable[[], object] | None = None,
) -> tuple[float, float, float]:
    """items/s, p50 and p99 latency (ms) of `clients` threads, each with its own gRPC connection, making
    one call per item (after one warm-up call each; `after_warm_up` runs just before the timed part)."""
    connections = [VecserveClient(address, timeout=600) for _ in range(clients)]
    return concurrent_calls_over(connections, items, call, after_warm_up)


def concurrent_calls_over(
    connections: Sequence[Connection],
    items: Sequence[Any],
    call: Callable[[Connection, Any], object],
    after_warm_up: Callable[[], object] | None = None,
) -> tuple[float, float, float]:
    """As concurrent_calls, over any connections (one thread each), which are closed at the end."""
    clients = len(connections)
    latencies: list[float] = []
    lock = threading.Lock()
    try:
        for connection in connections:
            call(connection, items[0])

        def worker(index: int) -> None:
            mine = []
            for item in items[index::clients]:
                began = time.perf_counter()
                call(connections[index], item)
                mine.append(time.perf_counter() - began)
            with lock:
                latencies.extend(mine)

        if after_warm_up is not None:
            after_warm_up()
        began = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(worker, range(clients)))
        elapsed = time.perf_counter() - began
    finally:
        for connection in connections:
            connection.close()
    return len(items) / elapsed, percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000


def sequential_call_ms(
    calls: dict[str, Callable[[], object]], count: int, rounds: int = 5
) -> dict[str, float]:
    """Milliseconds per call of each callable, called `count` times in a row; the calls take turns
    round by round and the best round counts, so drift on a shared machine hits all alike."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(20):  # warm-up
                call()
            began = time.perf_counter()
            for _ in range(count):
                call()
            best[name] = min(best[name], (time.perf_counter() - began) / count * 1000)
    return best

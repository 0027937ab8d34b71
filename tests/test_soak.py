"""Soak: 16 concurrent clients mix embed, search, upsert (and analogy, when served) for 60 seconds
against a server process on loopback. No call may fail, every acknowledged write must be stored,
and the server's resident memory may grow by at most MAX_RSS_GROWTH_MB after warm-up. The figures
(requests/s, p50/p99 latency, memory before and after) are printed."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import VecserveClient
from clients.local_server import ServerProcess
from tests.rpcs import served_services

CLIENTS = 16
WARM_UP_SECONDS = 10.0
SOAK_SECONDS = 60.0
# Upserts add a few thousand documents during the soak (a few MB); more than this is a leak.
MAX_RSS_GROWTH_MB = 200
INDEX = "soak"
WORDS_INDEX = "soak-words"
TOPICS = ["rivers", "trains", "bread", "music", "storms", "gardens", "markets", "bridges", "clocks", "boats"]
# Vocabulary of the analogy calls: a small index, so the soak never waits for the built-in one.
WORDS = [
    "king",
    "queen",
    "man",
    "woman",
    "prince",
    "princess",
    "boy",
    "girl",
    "father",
    "mother",
    "son",
    "daughter",
    "uncle",
    "aunt",
    "paris",
    "france",
    "rome",
    "italy",
    "berlin",
    "germany",
    "madrid",
    "spain",
    "tokyo",
    "japan",
    "walk",
    "walked",
    "run",
    "ran",
    "swim",
    "swam",
    "big",
    "bigger",
    "small",
    "smaller",
    "good",
    "better",
]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


@dataclass
class Tally:
    """What the clients did: latencies per operation, failures, acknowledged document ids."""

    measuring: bool = False
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    stored_ids: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, operation: str, seconds: float) -> None:
        if self.measuring:
            with self.lock:
                self.latencies[operation].append(seconds)


def sentence(rng: random.Random) -> str:
    return f"a short note about {rng.choice(TOPICS)} and {rng.choice(TOPICS)}, number {rng.randrange(10**6)}"


def run_client(address: str, number: int, with_analogy: bool, tally: Tally, stop: threading.Event) -> None:
    rng = random.Random(number)
    operations: list[tuple[str, float, Callable[[VecserveClient], object]]] = [
        ("embed", 0.35, lambda c: c.embed([sentence(rng) for _ in range(rng.randint(1, 8))])),
        ("search", 0.35, lambda c: c.search(INDEX, [sentence(rng)], k=10)),
        ("upsert", 0.20, lambda c: upsert(c, rng, number, tally)),
    ]
    if with_analogy:
        operations.append(
            (
                "analogy",
                0.10,
                lambda c: c.solve_analogy(["king", "woman"], ["man"], k=5, vocabulary_index=WORDS_INDEX),
            )
        )
    names = [name for name, _, _ in operations]
    weights = [weight for _, weight, _ in operations]
    calls = {name: action for name, _, action in operations}
    with VecserveClient(address, timeout=60) as client:
        while not stop.is_set():
            name = rng.choices(names, weights)[0]
            started = time.perf_counter()
            try:
                calls[name](client)
            except grpc.RpcError as error:
                with tally.lock:
                    tally.errors.append(f"{name}: {error.code().name}: {error.details()}")
                continue
            tally.record(name, time.perf_counter() - started)


def upsert(client: VecserveClient, rng: random.Random, number: int, tally: Tally) -> None:
    documents = [
        {"id": f"c{number}-{rng.randrange(10**9)}", "text": sentence(rng), "metadata": {"client": number}}
        for _ in range(rng.randint(1, 4))
    ]
    client.upsert(INDEX, documents)
    with tally.lock:
        tally.stored_ids.update(document["id"] for document in documents)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with VecserveClient(server.address, timeout=120) as client:
            client.create_index(INDEX)
            seed = random.Random(0)
            client.upsert(INDEX, [{"id": f"seed-{n}", "text": sentence(seed)} for n in range(200)])
            with grpc.insecure_channel(server.address) as channel:
                with_analogy = "vecserve.v1.AnalogyService" in served_services(channel)
            if with_analogy:
                client.create_index(WORDS_INDEX)
                client.upsert(WORDS_INDEX, [{"id": word, "text": word} for word in WORDS])
        tally = Tally()
        stop = threading.Event()
        clients = [
            threading.Thread(target=run_client, args=(server.address, n, with_analogy, tally, stop))
            for n in range(CLIENTS)
        ]
        for thread in clients:
            thread.start()
        time.sleep(WARM_UP_SECONDS)
        assert server.process is not None
        rss_before = rss_mb(server.process.pid)
        tally.measuring = True
        started = time.monotonic()
        time.sleep(SOAK_SECONDS)
        tally.measuring = False
        elapsed = time.monotonic() - started
        rss_after = rss_mb(server.process.pid)
        stop.set()
        for thread in clients:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in clients)

        everything = [seconds for values in tally.latencies.values() for seconds in values]
        lines = [
            f"soak: {CLIENTS} clients for {elapsed:.0f} s on loopback"
            f"{'' if with_analogy else ' (no AnalogyService served: analogy left out)'}: "
            f"{len(everything)} requests, {len(everything) / elapsed:.1f} requests/s, "
            f"p50 {percentile(everything, 50):.1f} ms, p99 {percentile(everything, 99):.1f} ms; "
            f"server RSS {rss_before:.0f} MB after warm-up -> {rss_after:.0f} MB "
            f"({rss_after - rss_before:+.0f} MB, bound {MAX_RSS_GROWTH_MB} MB); errors {len(tally.errors)}",
            *(
                f"  {name:8} {len(values):6} calls  {len(values) / elapsed:6.1f}/s  "
                f"p50 {percentile(values, 50):7.1f} ms  p99 {percentile(values, 99):7.1f} ms"
                for name, values in sorted(tally.latencies.items())
            ),
        ]
        with capsys.disabled():
            print("\n" + "\n".join(lines))

        assert not tally.errors, tally.errors[:10]
        assert len(everything) > CLIENTS * 10, "the clients made progress"
        assert rss_after - rss_before < MAX_RSS_GROWTH_MB
        with VecserveClient(server.address, timeout=120) as client:
            assert client.get_index(INDEX).document_count == 200 + len(tally.stored_ids)
            for document_id in random.Random(1).sample(
                sorted(tally.stored_ids), min(50, len(tally.stored_ids))
            ):
                assert client.get_document(INDEX, document_id).id == document_id
    finally:
        server.stop()

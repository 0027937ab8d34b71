"""A freshly started server (issue 14): live Embed throughput while it builds its analogy vocabulary
in the background, and after; and how long the vocabulary takes to become ready, on an idle server
and under that steady load."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import grpc

from benchmarks.common import Report, median, short_texts
from clients import VecserveClient
from clients.local_server import ServerProcess

CALLS = 24
BATCH = 64
# How long one GetVocabulary call waits for the build before it is asked again.
READY_POLL_SECONDS = 30.0
ROUNDS_AFTER = 3


class ReadyWatch:
    """Waits in a thread for a server's vocabulary (GetVocabulary waits within its deadline), and
    records how long after `started` (perf_counter) it became ready."""

    def __init__(self, address: str, started: float) -> None:
        self.ready = threading.Event()
        self.seconds = 0.0
        self._address = address
        self._started = started
        self._thread = threading.Thread(target=self._watch, name="vocabulary-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        with VecserveClient(self._address, timeout=READY_POLL_SECONDS + 5) as client:
            while True:
                try:
                    client.get_vocabulary(timeout=READY_POLL_SECONDS)
                    break
                except grpc.RpcError as error:
                    still_building = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED)
                    if error.code() not in still_building:
                        raise
        self.seconds = time.perf_counter() - self._started
        self.ready.set()

    def wait(self) -> float:
        self._thread.join()
        if not self.ready.is_set():
            raise RuntimeError("the vocabulary watch ended without the vocabulary (see the server log)")
        return self.seconds


def embed_round(client: VecserveClient, texts: list[str]) -> float:
    """texts/s of CALLS Embed calls of BATCH texts, one after another."""
    began = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        client.embed(texts[start : start + BATCH])
    return len(texts) / (time.perf_counter() - began)


def fresh_server(data_dir: Path, vocabulary_size: int) -> tuple[ServerProcess, ReadyWatch]:
    """A server on a fresh data directory, and the watch for its vocabulary (started once it serves,
    when the build has begun)."""
    server = ServerProcess(data_dir, env={"VECSERVE_VOCABULARY_SIZE": str(vocabulary_size)}).start()
    return server, ReadyWatch(server.address, time.perf_counter())


def run(report: Report) -> None:
    vocabulary_size = {"tiny": 200, "quick": 30_000, "full": 30_000}[report.size]
    texts = short_texts(CALLS * BATCH)
    during: list[float] = []
    overlapping: list[float] = []
    after: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        idle, idle_watch = fresh_server(Path(scratch) / "idle", vocabulary_size)
        try:
            idle_seconds = idle_watch.wait()
        finally:
            idle.stop()
        loaded, watch = fresh_server(Path(scratch) / "loaded", vocabulary_size)
        try:
            with VecserveClient(loaded.address, timeout=600) as client:
                client.embed(texts[:BATCH])  # warm-up
                # Rounds one after another until the vocabulary is ready: the build runs under steady load.
                while True:
                    rate = embed_round(client, texts)
                    if watch.ready.is_set():
                        overlapping.append(rate)
                        break
                    during.append(rate)
                loaded_seconds = watch.wait()
                after = [embed_round(client, texts) for _ in range(ROUNDS_AFTER)]
        finally:
            loaded.stop()
    note = f"{len(during)} rounds wholly during the build, median"
    if not during:  # a build shorter than one round (tiny sizes): the round it ended in
        during, note = overlapping, "the build ended within the first round"
    section = "warm-up"
    calls = f"{CALLS} calls of {BATCH}"
    report.add(section, f"vocabulary of {vocabulary_size:,} words: ready, idle server", idle_seconds, "s")
    report.add(section, f"  ready under steady Embed load ({calls})", loaded_seconds, "s")
    report.add(section, "  under load / idle", loaded_seconds / idle_seconds, "ratio")
    report.add(section, f"Embed {calls} during the vocabulary build", median(during), "texts/s", note)
    report.add(section, f"Embed {calls} after the vocabulary build", median(after), "texts/s")
    report.add(section, "during / after the build", median(during) / median(after), "ratio", "aim >= 0.8")

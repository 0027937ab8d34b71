"""A freshly started server (issue 14): live Embed throughput while it builds its analogy vocabulary
in the background, and after; and how long the vocabulary takes to become ready, on an idle server
and under that steady load. The machine's load average is sampled during both builds: the two are
comparable only when it was about the same."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import grpc

from benchmarks.common import Report, median, short_texts
from clients import VecserveClient
from clients.local_server import ServerProcess
from service.embedding.batching import BatchingSettings

CALLS = 24
BATCH = 64
# How long one GetVocabulary call waits for the build before it is asked again.
READY_POLL_SECONDS = 30.0
ROUNDS_AFTER = 3
LOAD_SAMPLE_SECONDS = 5.0


class LoadSampler:
    """Samples the machine's 1-minute load average in a thread until stopped."""

    def __init__(self) -> None:
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="load-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(LOAD_SAMPLE_SECONDS):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> str:
        """Stops sampling; describes the load seen."""
        self._stop.set()
        self._thread.join()
        low, high, middle = min(self.samples), max(self.samples), median(self.samples)
        return f"load average {low:.1f} to {high:.1f}, median {middle:.1f}"


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


def fresh_servers(report: Report) -> None:
    vocabulary_size = {"tiny": 200, "quick": 30_000, "full": 30_000}[report.size]
    texts = short_texts(CALLS * BATCH)
    during: list[float] = []
    overlapping: list[float] = []
    after: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        idle, idle_watch = fresh_server(Path(scratch) / "idle", vocabulary_size)
        idle_load = LoadSampler()
        try:
            idle_seconds = idle_watch.wait()
        finally:
            idle_load_note = idle_load.stop()
            idle.stop()
        loaded, watch = fresh_server(Path(scratch) / "loaded", vocabulary_size)
        loaded_load = LoadSampler()
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
                loaded_load_note = loaded_load.stop()
                after = [embed_round(client, texts) for _ in range(ROUNDS_AFTER)]
        finally:
            loaded_load.stop()
            loaded.stop()
    note = f"{len(during)} rounds wholly during the build, median"
    if not during:  # a build shorter than one round (tiny sizes): the round it ended in
        during, note = overlapping, "the build ended within the first round"
    section = "warm-up"
    calls = f"{CALLS} calls of {BATCH}"
    bound = 1 / BatchingSettings().background_share
    ready = f"vocabulary of {vocabulary_size:,} words: ready, idle server"
    report.add(section, ready, idle_seconds, "s", idle_load_note)
    report.add(section, f"  ready under steady Embed load ({calls})", loaded_seconds, "s", loaded_load_note)
    report.add(
        section, "  under load / idle", loaded_seconds / idle_seconds, "ratio", f"bound about {bound:.1f}"
    )
    report.add(section, f"Embed {calls} during the vocabulary build", median(during), "texts/s", note)
    report.add(section, f"Embed {calls} after the vocabulary build", median(after), "texts/s")
    report.add(section, "during / after the build", median(during) / median(after), "ratio", "aim >= 0.8")


def alternating_rounds(report: Report) -> None:
    """Live throughput with the vocabulary's background work and without it, in windows alternating in
    one process (the encoder as served, no transport), so that the machine's changing load falls on
    both alike; and the share of the time the background batches took."""
    from service.analogy.space import WORD_TEMPLATE
    from service.analogy.vocabulary import english_words
    from service.config import Settings
    from service.embedding.encoder import Encoder

    settings = Settings(device="cpu")
    encoder = Encoder(settings.model_name_or_path, device="cpu", batching=settings.batching)
    batcher = encoder.batcher
    assert batcher is not None
    words = [WORD_TEMPLATE.format(word) for word in english_words(30_000)]
    background_on = threading.Event()
    # Held by the background thread while it has a submission in the batcher.
    submitting = threading.Lock()
    finished = threading.Event()

    def build_without_end() -> None:
        start = 0
        while not finished.is_set():
            background_on.wait()
            with submitting:
                if background_on.is_set():
                    encoder.encode(words[start : start + 512], background=True)
                    start = (start + 512) % (len(words) - 512)

    building = threading.Thread(target=build_without_end, name="background-words", daemon=True)
    building.start()
    texts = short_texts(CALLS * BATCH)
    encoder.encode(texts[:BATCH])  # warm-up
    window = report.pick(tiny=1, quick=6, full=10)
    ratios: list[float] = []
    shares: list[float] = []
    try:
        for _ in range(report.pick(tiny=1, quick=12, full=20)):
            rates = []
            for on in (True, False):
                if on:
                    background_on.set()
                else:
                    background_on.clear()
                    with submitting:  # the last background submission ends: these windows run without any
                        pass
                background_before = batcher.background_seconds_run
                began, done, start = time.perf_counter(), 0, 0
                while time.perf_counter() - began < window:
                    encoder.encode(texts[start : start + BATCH])
                    done, start = done + BATCH, (start + BATCH) % len(texts)
                elapsed = time.perf_counter() - began
                rates.append(done / elapsed)
                if on:
                    shares.append((batcher.background_seconds_run - background_before) / elapsed)
            ratios.append(rates[0] / rates[1])
    finally:
        finished.set()
        background_on.set()
        building.join()
        encoder.close()
    section = "warm-up"
    report.add(
        section,
        f"alternating {window} s windows: Embed with / without background work",
        median(ratios),
        "ratio",
        f"median of {len(ratios)} pairs, aim >= 0.8",
    )
    report.add(section, "  share of the time the background batches took", median(shares), "ratio")


def run(report: Report) -> None:
    fresh_servers(report)
    alternating_rounds(report)

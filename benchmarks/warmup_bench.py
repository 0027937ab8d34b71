"""A freshly started server (issue 14): live Embed throughput while it builds its analogy vocabulary
in the background, against a server whose vocabulary is built; and how long the vocabulary takes to
become ready, on an idle server and under steady load.

The throughput ratio comes from rounds taking turns, the order swapped every pair: a server started
on a copy of a data directory whose vocabulary is built answers one round, then a server started on
an empty one (building its vocabulary) the next, and so on. Each server answers one round and is
killed before the next one starts, so that no two compete for the cores and the machine's changing
load falls on both alike; and both are as freshly started: a server that has run for minutes
(through its whole build) is not compared with one started seconds before. The ready times come
from two builds one after the other, the machine's load average sampled during each: they are
comparable only when it was about the same.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import Report, median, short_texts
from clients import VecserveClient
from clients.local_server import ServerProcess, free_port
from service.embedding.batching import BatchingSettings

CALLS = 24
BATCH = 64
# How long one GetVocabulary call waits for the build before it is asked again.
READY_POLL_SECONDS = 30.0
ROUNDS_AFTER = 3
# How long a call asking whether the vocabulary is ready waits for it.
READY_CHECK_SECONDS = 0.5
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


def vocabulary_ready(client: VecserveClient) -> bool:
    """Whether the server's vocabulary is built (asked with a short deadline)."""
    try:
        client.get_vocabulary(timeout=READY_CHECK_SECONDS)
    except grpc.RpcError as error:
        if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED):
            return False
        raise
    return True


def background_seconds(metrics_address: str) -> float:
    """The model seconds a server's background batches have taken so far (its metric)."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vecserve_encoder_background_seconds_total":
                return sample.value
    raise RuntimeError("the server reports no background seconds")


def cpu_seconds(server: ServerProcess) -> float:
    """The CPU seconds a server process has used so far (all its threads)."""
    assert server.process is not None
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])  # utime and stime, in clock ticks
    return (user + system) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RoundFigures:
    texts_per_second: float
    # Live texts per CPU second of the server: its work, whatever else ran on the machine meanwhile.
    texts_per_cpu_second: float
    # The share of the round's time the background batches took (0 without the server's metrics).
    background_share: float


def warm_round(
    server: ServerProcess, client: VecserveClient, texts: list[str], metrics_address: str = ""
) -> RoundFigures:
    """One round after a call of warm-up (the same for both servers: the idle one's caches went cold)."""
    client.embed(texts[:BATCH])
    background_before = background_seconds(metrics_address) if metrics_address else 0.0
    cpu_before, began = cpu_seconds(server), time.perf_counter()
    rate = embed_round(client, texts)
    elapsed, cpu = time.perf_counter() - began, cpu_seconds(server) - cpu_before
    background = background_seconds(metrics_address) - background_before if metrics_address else 0.0
    return RoundFigures(rate, len(texts) / cpu, background / elapsed)


def built_vocabulary(data_dir: Path, env: dict[str, str]) -> None:
    """Builds the vocabulary in a data directory, with a server that is then stopped."""
    server = ServerProcess(data_dir, env=env).start()
    try:
        ReadyWatch(server.address, time.perf_counter()).wait()
    finally:
        server.stop()


def fresh_server_round(
    data_dir: Path, env: dict[str, str], texts: list[str], built: bool
) -> tuple[RoundFigures, bool]:
    """A round of a server started on `data_dir` (killed after it), once its vocabulary is loaded when
    `built`; and whether its vocabulary was still building at the end of the round."""
    metrics = f"127.0.0.1:{free_port()}"
    server = ServerProcess(data_dir, "--metrics-listen", metrics, env=env).start()
    try:
        if built:
            ReadyWatch(server.address, time.perf_counter()).wait()
        with VecserveClient(server.address, timeout=600) as client:
            return warm_round(server, client, texts, metrics), not vocabulary_ready(client)
    finally:
        server.kill()  # its data is of no further use
        shutil.rmtree(data_dir, ignore_errors=True)


def interleaved_servers(report: Report) -> None:
    """During / after the build from rounds taking turns between freshly started servers, one on a
    copy of a data directory whose vocabulary is built, the other on an empty one (building)."""
    vocabulary_size = {"tiny": 200, "quick": 30_000, "full": 30_000}[report.size]
    env = {"VECSERVE_VOCABULARY_SIZE": str(vocabulary_size)}
    texts = short_texts(CALLS * BATCH)
    during: list[RoundFigures] = []
    after: list[RoundFigures] = []
    rounds_building = 0
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(scratch) / "built"
        built_vocabulary(built, env)
        for pair in range(report.pick(tiny=1, quick=10, full=16)):
            # Every other pair the building server goes first: a drift of the load within a pair
            # favours neither.
            for building_turn in (False, True) if pair % 2 == 0 else (True, False):
                data_dir = Path(scratch) / f"{'building' if building_turn else 'built'}-{pair}"
                if not building_turn:
                    shutil.copytree(built, data_dir)
                figures, still_building = fresh_server_round(data_dir, env, texts, built=not building_turn)
                if building_turn:
                    during.append(figures)
                    if still_building:
                        rounds_building += 1
                else:
                    after.append(figures)
    pairs = list(zip(during, after, strict=True))
    ratios = [building.texts_per_second / ready.texts_per_second for building, ready in pairs]
    cpu_ratios = [building.texts_per_cpu_second / ready.texts_per_cpu_second for building, ready in pairs]
    section = "warm-up"
    calls = f"{CALLS} calls of {BATCH}"
    building_rate = median([figures.texts_per_second for figures in during])
    built_rate = median([figures.texts_per_second for figures in after])
    report.add(section, f"Embed {calls}, servers taking turns: building", building_rate, "texts/s")
    report.add(section, "  vocabulary built", built_rate, "texts/s")
    report.add(
        section,
        "  during / after the build, side by side",
        median(ratios),
        "ratio",
        f"median of {len(ratios)} pairs ({min(ratios):.2f} to {max(ratios):.2f}; "
        f"{rounds_building} ended with the build still running), aim >= 0.8",
    )
    report.add(
        section,
        "  the same in live texts per server CPU second",
        median(cpu_ratios),
        "ratio",
        f"{min(cpu_ratios):.2f} to {max(cpu_ratios):.2f}",
    )
    report.add(
        section,
        "  share of the building rounds the background batches took",
        median([figures.background_share for figures in during]),
        "fraction",  # of the time, not a ratio of rates: 0 when the build ended before the rounds
        f"setting {BatchingSettings().background_share:g}",
    )


def fresh_servers(report: Report) -> None:
    """The ready times, idle and under steady load, and the old during / after ratio (rounds minutes
    apart)."""
    vocabulary_size = {"tiny": 200, "quick": 10_000, "full": 30_000}[report.size]
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
    report.add(
        section,
        "during / after the build, rounds minutes apart",
        median(during) / median(after),
        "ratio",
        f"the {ROUNDS_AFTER} after at the end",
    )


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
    report.add(section, "  share of the time the background batches took", median(shares), "fraction")


def run(report: Report) -> None:
    interleaved_servers(report)
    fresh_servers(report)
    alternating_rounds(report)

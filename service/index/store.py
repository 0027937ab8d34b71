"""Named, durable vector indexes: SQLite is the record, FAISS a derived, snapshotted search structure.

Layout of the data directory::

    <data_dir>/.lock                 held (flock) by the one process serving the directory
    <data_dir>/<name>/documents.sqlite3 (+ -wal, -shm)
                                     the source of truth: index settings, documents, vectors, metadata
    <data_dir>/<name>/snapshot.json  names the current FAISS snapshot, its size and CRC-32s
    <data_dir>/<name>/snapshot-<generation>.faiss

Durability: every write is one SQLite transaction in WAL mode with synchronous=FULL, so it is on disk
(fsync'd) before the call returns. FAISS ids are the documents' SQLite row ids, assigned from a
counter that only grows, so a replaced document gets a new id. The FAISS structure is snapshotted
every `snapshot_every` changes and on close (written to a temporary file, fsync'd, renamed, and
only then named by the manifest). On open, the snapshot is loaded if its CRC matches and caught up
with the record by comparing id sets: ids in the snapshot but not in the record are removed (or
tombstoned), ids in the record but not in the snapshot are added from their stored vectors. A
missing, torn or corrupt snapshot is rebuilt from the record. Nothing is ever re-embedded.

Kinds that train (ivf_flat, ivf_pq, sq8) answer with exact search until `training_threshold`
vectors are stored, then train on all stored vectors and switch (see `training_threshold`). HNSW
cannot remove vectors, so deleted ones are tombstoned (excluded from every search) and the graph is
rebuilt at snapshot time once tombstones pass HNSW_COMPACT_FRACTION of it. Quantized kinds re-score
their best candidates with the stored vectors (RERANK_FACTOR).

Metadata filters run inside the search: an indexed (key, kind, value) table yields the FAISS ids that
pass, which FAISS gets as an IDSelector. At most EXACT_FILTER_LIMIT of them are searched exactly
instead, and an approximate search that finds fewer than k allowed hits is redone exactly over the
allowed set, so k hits come back whenever k documents match.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import itertools
import json
import logging
import os
import shutil
import sqlite3
import threading
import uuid
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from service.common.limits import check_k
from service.common.thread_share import ThreadShare
from service.common.validation import check_unicode
from service.embedding.protocol import TextEncoder
from service.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, TooLarge
from service.index.filters import Condition
from service.index.kinds import SearchTuning, check_params, kind_strategy, memory_bytes, structure_ids
from service.index.model import (
    DEFAULT_KIND,
    FORMAT_VERSION,
    MAX_DIMENSION,
    MAX_ID_CHARACTERS,
    NAME_PATTERN,
    Document,
    Hit,
    IndexInfo,
    IndexKind,
    IndexSpec,
    KindParams,
    Metric,
    PreparedDocument,
    Query,
    check_metadata,
    check_name,
    check_vector,
    normalize_rows,
)
from service.index.record import DATABASE_FILE, LOAD_CHUNK, Record, create_record, read_spec_json
from service.index.search_batching import SearchCoalescer

log = logging.getLogger(__name__)

# FAISS scans every vector once per query unless queries x dimension reaches this threshold (its
# default 128,000 is 333 queries of 384 dimensions); only its BLAS path shares a pass over the vectors
# among queries. Measured on 100,000 x 384 flat: 32 merged queries per call gave 50 q/s by scans and
# 300-490 q/s by BLAS; one query is faster by scan. From 4 queries of 384 dimensions on, BLAS.
FLAT_BLAS_THRESHOLD = 4 * 384
faiss.cvar.distance_compute_blas_threshold = FLAT_BLAS_THRESHOLD
# FAISS's OpenMP threads (one per core by default), shared among the searches running at once.
_SEARCH_THREADS = ThreadShare(faiss.omp_get_max_threads())

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# A filter matching at most this many documents is answered by exact search over them directly.
EXACT_FILTER_LIMIT = 2048
# When an approximate search returns fewer than k allowed hits, the candidates are searched exactly
# if there are at most this many (beyond it, the approximate hits are returned as they are).
EXACT_FALLBACK_LIMIT = 200_000
# Quantized kinds (ivf_pq, sq8) fetch max(k * RERANK_FACTOR, RERANK_MINIMUM) candidates and re-score
# them exactly with the stored vectors, so their scores are exact and their recall close to flat's.
RERANK_FACTOR = 4
RERANK_MINIMUM = 32
DEFAULT_SNAPSHOT_EVERY = 50_000
# Snapshots carry one CRC-32 per chunk of this size, so start-up verifies them in parallel.
CHECKSUM_CHUNK = 64 * 1024 * 1024

MANIFEST_FILE = "snapshot.json"
LOCK_FILE = ".lock"

# ---------------------------------------------------------------------------------------------
# FAISS structures


@contextlib.contextmanager
def _faiss_thread_share(queries: int) -> Iterator[None]:
    """Runs FAISS in this thread (its OpenMP setting is per calling thread) with an even share of the
    cores among the searches running now, and one thread per query at most (FAISS splits by query).

    A server's searches run side by side in many threads: an OpenMP team per call oversubscribes the
    cores and spins in sched_yield (32 concurrent one-query clients on 2 cores: 29 queries/s with a
    team each, 181 on one thread each). A search running alone, such as merged concurrent queries or
    one client's batch, gets every core: at 100 queries per call, 2.0x for HNSW and sq8 and 1.4x for
    exact search on 2 cores here.
    """
    with _SEARCH_THREADS.share(queries) as threads:
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(previous)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_durably(path: Path, data: bytes | memoryview) -> None:
    """Writes to a temporary file, fsyncs it, renames it over `path` and fsyncs the directory."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _file_checksums(path: Path) -> list[int]:
    """CRC-32 of each CHECKSUM_CHUNK of a file, computed on all cores (zlib releases the GIL)."""

    def checksum(offset: int) -> int:
        with open(path, "rb", buffering=0) as handle:
            handle.seek(offset)
            return zlib.crc32(handle.read(CHECKSUM_CHUNK))

    offsets = range(0, path.stat().st_size, CHECKSUM_CHUNK)
    with ThreadPoolExecutor(max_workers=min(len(offsets), os.cpu_count() or 1) or 1) as pool:
        return list(pool.map(checksum, offsets))


def _hit_bytes(hit: Hit) -> int:
    """About the serialized size of a hit, in bytes (characters stand in for UTF-8 bytes)."""
    metadata = sum(len(key) + len(str(value)) + 8 for key, value in hit.metadata.items())
    vector = 4 * len(hit.vector) if hit.vector is not None else 0
    return len(hit.id) + len(hit.text) + metadata + vector + 16


def _answer_bytes(results: list[list[Hit]]) -> int:
    """About the serialized size of a search answer; a document's size is computed once, however
    many queries it answers (many queries and a large k can repeat the same long texts)."""
    sizes: dict[str, int] = {}
    total = 0
    for hits in results:
        for hit in hits:
            if hit.id not in sizes:
                sizes[hit.id] = _hit_bytes(hit)
            total += sizes[hit.id]
    return total


def _check_answer_size(answer_bytes: int, limit: int) -> None:
    if answer_bytes > limit:
        raise TooLarge(
            f"the answer would hold about {answer_bytes:,} bytes, more than the limit of {limit:,} bytes "
            "per message (--max-message-bytes): lower k, send fewer queries at once, or leave out "
            "include_vectors"
        )


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers so writes are not starved."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._condition:
            self._writers_waiting += 1
            self._condition.wait_for(lambda: not self._writer and not self._readers)
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()


# ---------------------------------------------------------------------------------------------
# One index


# Numbers each opened index, so that a deleted and re-created index never looks like the old one.
_INDEX_SERIALS = itertools.count(1)


class _Index:
    """One open index: its record (SQLite), its search structure (FAISS) and their locks."""

    def __init__(self, path: Path, spec: IndexSpec, snapshot_every: int) -> None:
        self.serial = next(_INDEX_SERIALS)
        # Bumped by every write and delete (under the write lock): what readers' caches compare.
        self.version = 0
        self.path = path
        self.spec = spec
        self.snapshot_every = snapshot_every
        self.lock = ReadWriteLock()
        self.snapshot_lock = threading.Lock()
        self.closed = False
        self.snapshot_pending = False
        self.changes_since_snapshot = 0
        self.tombstones: set[int] = set()
        self.strategy = kind_strategy(spec)
        self.record = Record(path, spec.dimension)
        self.document_count = 0
        self.structure = self._load_structure()

    # -- the FAISS structure ---------------------------------------------------------------------

    def _load_structure(self) -> faiss.Index:
        live_ids = self.record.live_ids_for_build()
        self.document_count = len(live_ids)
        structure = self._read_snapshot()
        if structure is None:
            structure = self.strategy.empty_structure()
            self._add(structure, live_ids)
            self.changes_since_snapshot = len(live_ids)
        else:
            stored_ids = structure_ids(structure)
            stale = np.setdiff1d(stored_ids, live_ids, assume_unique=True)
            missing = np.setdiff1d(live_ids, stored_ids, assume_unique=True)
            # Tombstoning leaves the structure as it is, so only real removals call for a new snapshot.
            removed = self._remove(structure, stale)
            self._add(structure, missing)
            self.changes_since_snapshot = removed + len(missing)
            if self.changes_since_snapshot:
                log.info(
                    "index %s: caught up from the record (%d added, %d removed since the snapshot)",
                    self.spec.name,
                    len(missing),
                    len(stale),
                )
        return self._maybe_train(structure)

    def _add(self, structure: faiss.Index, faiss_ids: np.ndarray) -> None:
        for start in range(0, len(faiss_ids), LOAD_CHUNK):
            chunk = faiss_ids[start : start + LOAD_CHUNK]
            structure.add_with_ids(self.record.vectors_for_build(chunk), chunk)

    def _remove(self, structure: faiss.Index, faiss_ids: np.ndarray) -> int:
        """Takes the vectors out of every search; returns how many left the structure itself."""
        if not len(faiss_ids):
            return 0
        return self.strategy.remove(structure, faiss_ids, self.tombstones)

    def _maybe_train(self, structure: faiss.Index) -> faiss.Index:
        """Swaps the exact stand-in for the trained structure once training_threshold vectors exist."""
        trained = self.strategy.train_if_due(structure)
        if trained is None:
            return structure
        self.changes_since_snapshot += trained.ntotal
        return trained

    def _read_snapshot(self) -> faiss.Index | None:
        """The snapshot named by the manifest, if complete and intact; None otherwise."""
        manifest_path = self.path / MANIFEST_FILE
        if not manifest_path.exists():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            snapshot_path = self.path / manifest["file"]
            if snapshot_path.stat().st_size != manifest["bytes"]:
                raise ValueError("its size does not match the manifest")
            # Verified before FAISS reads a byte of it.
            if _file_checksums(snapshot_path) != manifest["crc32_chunks"]:
                raise ValueError("its CRC-32 does not match the manifest")
            structure = faiss.read_index(str(snapshot_path))
            if not self.strategy.matches(structure):
                raise ValueError("the structure does not match the index settings")
            return structure
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            log.warning("index %s: snapshot unusable (%s); rebuilding from the record", self.spec.name, error)
            return None

    def snapshot(self) -> None:
        """Writes the structure durably and points the manifest at it; old snapshots are removed.

        The structure is serialized under the read lock (writes wait, searches go on); the file is
        written after the lock is released.
        """
        with self.snapshot_lock:
            with self.lock.read():
                if self.closed:
                    return
                needs_compaction = self.strategy.needs_compaction(self.structure, len(self.tombstones))
            if needs_compaction:
                with self.lock.write():
                    self._compact()
            with self.lock.read():
                data = faiss.serialize_index(self.structure)
                changes, self.changes_since_snapshot = self.changes_since_snapshot, 0
            try:
                self._write_snapshot(data)
            except BaseException:
                self.changes_since_snapshot += changes
                raise

    def _compact(self) -> None:
        """Rebuilds an HNSW graph without its tombstoned vectors (HNSW cannot remove them)."""
        log.info(
            "index %s: rebuilding the graph without %d deleted vectors", self.spec.name, len(self.tombstones)
        )
        structure = self.strategy.empty_structure()
        self._add(structure, self.record.live_ids_for_build())
        self.structure = structure
        self.tombstones.clear()

    def _write_snapshot(self, data: np.ndarray) -> None:
        manifest_path = self.path / MANIFEST_FILE
        generation = 1
        if manifest_path.exists():
            with contextlib.suppress(OSError, ValueError, KeyError):
                generation = int(json.loads(manifest_path.read_text())["generation"]) + 1
        file_name = f"snapshot-{generation:08d}.faiss"
        _write_durably(self.path / file_name, memoryview(data))
        view = memoryview(data)
        manifest = {
            "format": FORMAT_VERSION,
            "generation": generation,
            "file": file_name,
            "bytes": len(data),
            "crc32_chunk_bytes": CHECKSUM_CHUNK,
            "crc32_chunks": [
                zlib.crc32(view[i : i + CHECKSUM_CHUNK]) for i in range(0, len(data), CHECKSUM_CHUNK)
            ],
        }
        _write_durably(manifest_path, json.dumps(manifest).encode())
        for old in self.path.glob("snapshot-*.faiss*"):
            if old.name != file_name:
                old.unlink(missing_ok=True)
        log.info("index %s: snapshot %s written (%d bytes)", self.spec.name, file_name, len(data))

    # -- writes (callers hold the write lock) ----------------------------------------------------

    def write(self, documents: Sequence[PreparedDocument]) -> None:
        """Stores the documents (replacing same ids) durably, then updates the search structure."""
        old_ids, new_ids = self.record.replace(documents)
        # Durable from here on; the structure follows.
        self._remove(self.structure, old_ids)
        self.structure.add_with_ids(np.stack([d.vector for d in documents]), new_ids)  # type: ignore[misc]
        self.document_count += len(documents) - len(old_ids)
        self.changes_since_snapshot += len(documents) + len(old_ids)
        self.version += 1
        self.structure = self._maybe_train(self.structure)

    def delete(self, ids: Sequence[str]) -> int:
        old_ids = self.record.delete(ids)
        self._remove(self.structure, old_ids)
        self.document_count -= len(old_ids)
        self.changes_since_snapshot += len(old_ids)
        self.version += 1
        return len(old_ids)

    # -- reads (callers hold the read lock) ------------------------------------------------------

    @property
    def trained(self) -> bool:
        return self.strategy.is_trained(self.structure)

    def memory_bytes(self) -> int:
        return memory_bytes(self.structure)

    def disk_bytes(self) -> int:
        total = 0
        for entry in self.path.iterdir():
            with contextlib.suppress(FileNotFoundError):  # a snapshot's temporary file may vanish
                total += entry.stat().st_size
        return total

    def search(
        self,
        queries: np.ndarray,
        k: int,
        conditions: Sequence[Condition],
        excluded: Sequence[int | None],
        tuning: SearchTuning = None,
    ) -> list[list[tuple[int, float]]]:
        """(faiss_id, score) pairs per query, best first; `excluded[i]` is left out of query i's hits."""
        wanted = k + (1 if any(faiss_id is not None for faiss_id in excluded) else 0)
        allowed: np.ndarray | None = None
        if conditions:
            allowed = self.record.ids_passing(conditions)
            if not len(allowed):
                return [[] for _ in range(len(queries))]
        candidate_count = len(allowed) if allowed is not None else self.document_count
        if allowed is not None and len(allowed) <= EXACT_FILTER_LIMIT:
            results = self._exact_search(queries, wanted, allowed)
        else:
            if self.strategy.reranks(self.structure):
                # Codes give approximate scores: fetch more candidates and re-score them exactly.
                fetch = max(wanted * RERANK_FACTOR, RERANK_MINIMUM)
                candidates = self._structure_search(queries, fetch, allowed, tuning)
                results = self._rerank(queries, candidates, wanted)
            else:
                results = self._structure_search(queries, wanted, allowed, tuning)
            # An approximate search may find fewer allowed hits than exist (a selective filter
            # starves HNSW's candidate list or IVF's probed lists): search those queries exactly.
            short = [
                position for position, hits in enumerate(results) if len(hits) < min(wanted, candidate_count)
            ]
            if short and candidate_count <= EXACT_FALLBACK_LIMIT:
                everyone = allowed if allowed is not None else self.record.live_ids()
                exact = self._exact_search(queries[short], wanted, everyone)
                for position, hits in zip(short, exact, strict=True):
                    results[position] = hits
        return [
            [hit for hit in hits if hit[0] != exclude][:k]
            for hits, exclude in zip(results, excluded, strict=True)
        ]

    def _structure_search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None, tuning: SearchTuning = None
    ) -> list[list[tuple[int, float]]]:
        selector: faiss.IDSelector | None = None
        excluded_selector: faiss.IDSelector | None = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed)
        elif self.tombstones:
            excluded_selector = faiss.IDSelectorBatch(np.fromiter(self.tombstones, dtype=np.int64))
            selector = faiss.IDSelectorNot(excluded_selector)
        # A fresh parameters object per call: FAISS's id map swaps its selector in place.
        params = self.strategy.search_parameters(self.structure, tuning, k)
        if selector is not None:
            if params is None:
                params = faiss.SearchParameters()
            params.sel = selector
        with _faiss_thread_share(len(queries)):
            scores, labels = self.structure.search(queries, k, params=params)
        del excluded_selector  # kept alive until the search is done
        return [
            [
                (int(label), float(score))
                for label, score in zip(row_labels, row_scores, strict=True)
                if label >= 0
            ]
            for row_labels, row_scores in zip(labels, scores, strict=True)
        ]

    def _exact_scores(self, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Scores of every query against every vector, ordered so that lower sorts first."""
        if self.spec.metric is Metric.L2:
            return np.maximum(
                (queries**2).sum(axis=1)[:, None]
                - 2 * queries @ vectors.T
                + (vectors**2).sum(axis=1)[None, :],
                0.0,
            )
        return queries @ vectors.T

    def _best(self, scores: np.ndarray, candidates: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The k best (id, score) pairs of one query's scores, best first."""
        ordering = scores if self.spec.metric is Metric.L2 else -scores
        k = min(k, len(candidates))
        top = np.argpartition(ordering, k - 1)[:k] if k < len(candidates) else np.arange(len(candidates))
        top = top[np.argsort(ordering[top], kind="stable")]
        return [(int(candidates[i]), float(scores[i])) for i in top]

    def _exact_search(
        self, queries: np.ndarray, k: int, candidates: np.ndarray
    ) -> list[list[tuple[int, float]]]:
        """Exact search of the queries over the stored vectors of the candidates."""
        scores = self._exact_scores(queries, self.record.vectors(candidates))
        return [self._best(row, candidates, k) for row in scores]

    def _rerank(
        self,
        queries: np.ndarray,
        candidates: list[list[tuple[int, float]]],
        k: int,
    ) -> list[list[tuple[int, float]]]:
        """Each query's candidates re-scored exactly with their stored vectors; the k best kept."""
        unique = np.array(sorted({faiss_id for hits in candidates for faiss_id, _ in hits}), dtype=np.int64)
        if not len(unique):
            return [[] for _ in candidates]
        vectors = self.record.vectors(unique)
        row_of = {int(faiss_id): row for row, faiss_id in enumerate(unique)}
        results = []
        for query, hits in zip(queries, candidates, strict=True):
            ids = np.array([faiss_id for faiss_id, _ in hits], dtype=np.int64)
            if not len(ids):
                results.append([])
                continue
            rows = [row_of[int(faiss_id)] for faiss_id in ids]
            results.append(self._best(self._exact_scores(query[None, :], vectors[rows])[0], ids, k))
        return results

    def close(self) -> None:
        self.closed = True
        self.record.close()


# ---------------------------------------------------------------------------------------------
# The store


class IndexStore:
    """Named indexes under one data directory; thread-safe. Raises domain errors, never transport ones.

    Text is embedded through `encoder.encode(texts, normalize=...)`: normalized for cosine indexes,
    the model's raw output for inner-product and L2 indexes.
    """

    def __init__(
        self,
        data_dir: Path | str,
        encoder: TextEncoder | None = None,
        *,
        max_documents_per_request: int = 1024,
        max_queries_per_request: int = 1024,
        max_text_characters: int = 100_000,
        max_texts_per_encode: int = 1024,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        search_batching: bool = True,
        max_response_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.data_dir = Path(data_dir)
        # Largest search answer, about as serialized: the transports' message limit.
        self.max_response_bytes = max_response_bytes
        # Concurrent searches of one index with the same k and filter share one FAISS call.
        self._coalescer = SearchCoalescer() if search_batching else None
        # The encoder takes at most this many texts per call (its batching queue is sized for it).
        self.max_texts_per_encode = max_texts_per_encode
        self._encoder = encoder
        self.max_documents_per_request = max_documents_per_request
        self.max_queries_per_request = max_queries_per_request
        self.max_text_characters = max_text_characters
        self._snapshot_every = snapshot_every
        self._lock = threading.Lock()
        self._indexes: dict[str, _Index] = {}
        self._closed = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.data_dir / LOCK_FILE, "a+b")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise FailedPrecondition(
                f"data directory {self.data_dir} is in use by another vecserve process"
            ) from None
        self._snapshots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        try:
            self._open_all()
        except BaseException:
            self.close()
            raise

    def _open_all(self) -> None:
        for entry in sorted(self.data_dir.iterdir()):
            if entry.name.startswith((".creating-", ".deleting-")):
                # Left by a crash halfway through creating or deleting an index.
                shutil.rmtree(entry, ignore_errors=True)
            elif NAME_PATTERN.fullmatch(entry.name) and (entry / DATABASE_FILE).is_file():
                for leftover in entry.glob("*.tmp"):
                    leftover.unlink()
                try:
                    index = self._open(entry)
                except (sqlite3.Error, ValueError, KeyError, TypeError):
                    # Left on disk untouched for inspection; the other indexes are still served.
                    log.exception("index %s cannot be opened and is not served", entry.name)
                    continue
                self._indexes[entry.name] = index
                if index.changes_since_snapshot:
                    self._schedule_snapshot(index)

    def _open(self, path: Path) -> _Index:
        spec = IndexSpec.from_json(path.name, read_spec_json(path))
        return _Index(path, spec, self._snapshot_every)

    # -- index management ------------------------------------------------------------------------

    def create_index(
        self,
        name: str,
        dimension: int = 0,
        metric: Metric = Metric.COSINE,
        kind: IndexKind = DEFAULT_KIND,
        params: KindParams | None = None,
    ) -> IndexInfo:
        check_name(name)
        if dimension == 0:
            if self._encoder is None:
                raise InvalidArgument("dimension is required: there is no model to take it from", "dimension")
            dimension = self._encoder.dimension
        if not 1 <= dimension <= MAX_DIMENSION:
            raise InvalidArgument(
                f"dimension must be between 1 and {MAX_DIMENSION}, got {dimension}", "dimension"
            )
        try:
            metric, kind = Metric(metric), IndexKind(kind)
        except ValueError as error:
            raise InvalidArgument(str(error), "metric" if "Metric" in str(error) else "kind") from None
        spec = IndexSpec(name, dimension, metric, kind, check_params(kind, params, dimension))
        with self._lock:
            self._check_open()
            target = self.data_dir / name
            if name in self._indexes or target.exists():
                raise AlreadyExists(f"index {name!r} already exists")
            # Built aside and renamed into place, so a crash never leaves a half-created index.
            staging = self.data_dir / f".creating-{name}-{uuid.uuid4().hex}"
            staging.mkdir()
            create_record(staging, spec.to_json())
            _fsync_directory(staging)
            os.rename(staging, target)
            _fsync_directory(self.data_dir)
            index = _Index(target, spec, self._snapshot_every)
            self._indexes[name] = index
        return self._info(index)

    def get_index(self, name: str) -> IndexInfo:
        return self._info(self._get(name, "name"))

    def list_indexes(self, page_size: int = 0, page_token: str = "") -> tuple[list[IndexInfo], str]:
        """One page of indexes in name order and the token of the next page ("" on the last)."""
        page_size = page_size or DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}", "page_size")
        after = ""
        if page_token:
            try:
                after = base64.urlsafe_b64decode(page_token.encode()).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                after = ""
            if not NAME_PATTERN.fullmatch(after):
                raise InvalidArgument("page_token is not one this server issued", "page_token")
        with self._lock:
            names = sorted(name for name in self._indexes if name > after)
            indexes = [self._indexes[name] for name in names[:page_size]]
        infos = []
        for index in indexes:
            with contextlib.suppress(NotFound):  # deleted meanwhile
                infos.append(self._info(index))
        next_token = ""
        if len(names) > page_size:
            next_token = base64.urlsafe_b64encode(names[page_size - 1].encode()).decode()
        return infos, next_token

    def delete_index(self, name: str) -> None:
        index = self._get(name, "name")
        with self._lock:
            if self._indexes.get(name) is not index:
                raise NotFound(f"index {name!r} does not exist")
            del self._indexes[name]
        # The snapshot lock first, so no snapshot is being written into the directory as it moves.
        with index.snapshot_lock, index.lock.write():
            index.close()
        trash = self.data_dir / f".deleting-{name}-{uuid.uuid4().hex}"
        os.rename(index.path, trash)
        _fsync_directory(self.data_dir)
        shutil.rmtree(trash, ignore_errors=True)

    def dimension(self, name: str) -> int:
        return self._get(name).spec.dimension

    def metric(self, name: str) -> Metric:
        return self._get(name).spec.metric

    # -- documents -------------------------------------------------------------------------------

    def upsert(self, name: str, documents: Sequence[Document]) -> list[str]:
        """Inserts or replaces documents; returns their ids (assigned ones included) in request order.

        Returns only once the documents are durable. Within a batch, a repeated id keeps its last
        version.
        """
        index = self._get(name)
        self._check_count(len(documents), self.max_documents_per_request, "documents")
        prepared = [
            self._prepare(index.spec, document, position) for position, document in enumerate(documents)
        ]
        self._fill_vectors(index.spec, prepared)
        latest = {document.id: document for document in prepared}
        with index.lock.write():
            self._check_alive(index)
            index.write(list(latest.values()))
        self._snapshot_if_due(index)
        return [document.id for document in prepared]

    def get_document(self, name: str, document_id: str) -> Document:
        index = self._get(name)
        check_unicode(document_id, "id")
        with index.lock.read():
            self._check_alive(index)
            document = index.record.document(document_id)
        if document is None:
            raise NotFound(f"index {name!r} has no document {document_id!r}")
        return document

    def delete_documents(self, name: str, ids: Sequence[str]) -> int:
        """Deletes documents by id (unknown ids are ignored); returns how many existed."""
        index = self._get(name)
        self._check_count(len(ids), self.max_documents_per_request, "ids")
        for position, document_id in enumerate(ids):
            check_unicode(document_id, f"ids[{position}]")
        with index.lock.write():
            self._check_alive(index)
            deleted = index.delete(list(ids))
        self._snapshot_if_due(index)
        return deleted

    def search(
        self,
        name: str,
        queries: Sequence[Query],
        k: int = 0,
        conditions: Sequence[Condition] = (),
        include_vectors: bool = False,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[Hit]]:
        """The k closest documents passing every condition, per query, best first.

        ef_search (hnsw) and nprobe (ivf_flat, ivf_pq) override the index's setting for this call;
        InvalidArgument when out of range or when the index's kind has no such setting.
        """
        index = self._get(name)
        spec = index.spec
        k = check_k(k)
        tuning = index.strategy.check_search_settings(ef_search, nprobe)
        self._check_count(len(queries), self.max_queries_per_request, "queries")
        if include_vectors and not conditions:
            # Refused before any search work when the vectors alone would overflow the answer.
            hits_per_query = min(k, max(index.document_count - 1, 0))
            _check_answer_size(len(queries) * hits_per_query * 4 * spec.dimension, self.max_response_bytes)
        query_vectors = np.zeros((len(queries), spec.dimension), dtype=np.float32)
        texts: dict[int, str] = {}
        by_document: dict[int, str] = {}
        given_vectors: list[int] = []
        for position, query in enumerate(queries):
            where = f"queries[{position}]"
            given = [query.text is not None, query.vector is not None, query.document_id is not None]
            if sum(given) != 1:
                raise InvalidArgument(f"{where} needs exactly one of text, vector or document_id", where)
            if query.text is not None:
                check_unicode(query.text, f"{where}.text")
                self._check_text(query.text, f"{where}.text", required=True)
                texts[position] = query.text
            elif query.vector is not None:
                query_vectors[position] = check_vector(
                    query.vector, spec.dimension, spec.metric, f"{where}.vector"
                )
                given_vectors.append(position)
            else:
                check_unicode(query.document_id, f"{where}.document_id")  # type: ignore[arg-type]
                by_document[position] = query.document_id  # type: ignore[assignment]
        if given_vectors and spec.metric is Metric.COSINE:  # all at once: per row, numpy's cost dominates
            query_vectors[given_vectors] = normalize_rows(
                query_vectors[given_vectors], [f"queries[{position}].vector" for position in given_vectors]
            )
        if texts:
            query_vectors[list(texts)] = self._embed(spec, list(texts.values()), "queries")
        excluded: list[int | None] = [None] * len(queries)
        with index.lock.read():
            self._check_alive(index)
            for position, document_id in by_document.items():
                found = index.record.faiss_id_and_vector(document_id)
                if found is None:
                    raise NotFound(
                        f"queries[{position}].document_id: index {name!r} has no document {document_id!r}"
                    )
                excluded[position], query_vectors[position] = found
            if self._coalescer is None:
                ranked = index.search(query_vectors, k, conditions, excluded, tuning)
            else:
                ranked = self._coalescer.search(
                    (id(index), k, repr(conditions), tuning),
                    query_vectors,
                    excluded,
                    lambda batch, batch_excluded: index.search(batch, k, conditions, batch_excluded, tuning),
                )
            documents = index.record.documents_by_faiss_id(
                sorted({faiss_id for hits in ranked for faiss_id, _ in hits}), include_vectors
            )
        results = [
            [
                Hit(
                    id=documents[faiss_id][0],
                    score=score,
                    text=documents[faiss_id][1],
                    metadata=documents[faiss_id][2],
                    vector=documents[faiss_id][3],
                )
                for faiss_id, score in hits
            ]
            for hits in ranked
        ]
        _check_answer_size(_answer_bytes(results), self.max_response_bytes)
        return results

    def generation(self, name: str) -> tuple[int, int]:
        """Changes whenever the index's documents may have changed (a write, a delete, or the index
        deleted and created again): lets callers cache what they derive from its contents."""
        index = self._get(name)
        return index.serial, index.version

    def texts_and_vectors(self, name: str) -> tuple[list[str], np.ndarray]:
        """Every document that has text: the texts and their stored float32 vectors, in insertion order."""
        index = self._get(name)
        with index.lock.read():
            self._check_alive(index)
            return index.record.texts_and_vectors()

    # -- snapshots and shutdown ------------------------------------------------------------------

    def snapshot(self, name: str) -> None:
        """Writes the index's search structure to disk now (normally done every snapshot_every changes)."""
        self._get(name).snapshot()

    def close(self) -> None:
        """Waits for pending snapshots, snapshots every index with unsaved changes, and closes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            indexes = list(self._indexes.values())
        self._snapshots.shutdown(wait=True)
        for index in indexes:
            if index.changes_since_snapshot:
                try:
                    index.snapshot()
                except Exception:
                    # The record is intact; the next start catches up from it.
                    log.exception("index %s: final snapshot failed", index.spec.name)
            with index.lock.write():
                index.close()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()

    # -- helpers ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("the index store is closed")

    def _get(self, name: str, field_name: str = "index_name") -> _Index:
        check_name(name, field_name)
        with self._lock:
            self._check_open()
            index = self._indexes.get(name)
        if index is None:
            raise NotFound(f"index {name!r} does not exist")
        return index

    @staticmethod
    def _check_alive(index: _Index) -> None:
        if index.closed:
            raise NotFound(f"index {index.spec.name!r} does not exist")

    @staticmethod
    def _check_count(count: int, limit: int, field_name: str) -> None:
        if not 1 <= count <= limit:
            raise InvalidArgument(
                f"{field_name} has {count} entries; send between 1 and {limit} per request", field_name
            )

    def _check_text(self, text: str, field_name: str, required: bool) -> None:
        if len(text) > self.max_text_characters:
            raise InvalidArgument(
                f"{field_name} has {len(text)} characters, more than the limit of {self.max_text_characters}",
                field_name,
            )
        if required and not text.strip():
            raise InvalidArgument(
                f"{field_name} is empty or only whitespace: there is nothing to embed", field_name
            )

    def _prepare(self, spec: IndexSpec, document: Document, position: int) -> PreparedDocument:
        where = f"documents[{position}]"
        document_id = document.id or uuid.uuid4().hex
        if len(document_id) > MAX_ID_CHARACTERS:
            raise InvalidArgument(f"{where}.id is longer than {MAX_ID_CHARACTERS} characters", f"{where}.id")
        check_unicode(document_id, f"{where}.id")
        check_unicode(document.text, f"{where}.text")
        self._check_text(document.text, f"{where}.text", required=document.vector is None)
        vector = None
        if document.vector is not None:
            vector = check_vector(document.vector, spec.dimension, spec.metric, f"{where}.vector")
        metadata = check_metadata(document.metadata, f"{where}.metadata")
        return PreparedDocument(document_id, document.text, metadata, vector)

    def _fill_vectors(self, spec: IndexSpec, documents: list[PreparedDocument]) -> None:
        """Embeds the documents without vectors and normalizes every vector of a cosine index."""
        to_embed = [position for position, document in enumerate(documents) if document.vector is None]
        if to_embed:
            vectors = self._embed(spec, [documents[position].text for position in to_embed], "documents")
            for position, vector in zip(to_embed, vectors, strict=True):
                documents[position].vector = vector
        if spec.metric is Metric.COSINE:
            normalized = normalize_rows(
                np.stack([d.vector for d in documents]),  # type: ignore[misc]
                [f"documents[{position}].vector" for position in range(len(documents))],
            )
            for document, vector in zip(documents, normalized, strict=True):
                document.vector = vector

    def _embed(self, spec: IndexSpec, texts: list[str], field_name: str) -> np.ndarray:
        if self._encoder is None:
            raise FailedPrecondition(f"{field_name}: this store has no model to embed text; send vectors")
        if self._encoder.dimension != spec.dimension:
            raise FailedPrecondition(
                f"index {spec.name!r} has dimension {spec.dimension} but the model produces "
                f"{self._encoder.dimension}; send vectors instead of text"
            )
        step = self.max_texts_per_encode
        return np.concatenate(
            [
                self._encoder.encode(texts[start : start + step], normalize=spec.metric is Metric.COSINE)
                for start in range(0, len(texts), step)
            ]
        )

    def _snapshot_if_due(self, index: _Index) -> None:
        if index.changes_since_snapshot >= index.snapshot_every:
            self._schedule_snapshot(index)

    def _schedule_snapshot(self, index: _Index) -> None:
        with self._lock:
            if self._closed or index.snapshot_pending:
                return
            index.snapshot_pending = True

        def run() -> None:
            try:
                index.snapshot()
            except Exception:
                log.exception("index %s: snapshot failed; the record is intact", index.spec.name)
            finally:
                index.snapshot_pending = False

        self._snapshots.submit(run)

    def _info(self, index: _Index) -> IndexInfo:
        with index.lock.read():
            self._check_alive(index)
            return IndexInfo(
                spec=index.spec,
                document_count=index.document_count,
                trained=index.trained,
                memory_bytes=index.memory_bytes(),
                disk_bytes=index.disk_bytes(),
            )

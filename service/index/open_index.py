"""One open index: its SQLite record, its FAISS structure kept in step with it, their locks, and search."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np

from service.common.read_write_lock import ReadWriteLock
from service.common.thread_share import ThreadShare
from service.index.builds import BuildQueue, ChangeLog, run_at_low_priority
from service.index.exact import Ranking, candidates_to_rerank, exact_search, rerank
from service.index.filters import Condition
from service.index.kinds import SearchTuning, kind_strategy, memory_bytes, structure_ids
from service.index.model import IndexSpec, PreparedDocument
from service.index.record import LOAD_CHUNK, FrozenRecord, Record
from service.index.snapshots import copy_structure, read_snapshot, write_snapshot

log = logging.getLogger(__name__)

# A filter matching at most this many documents is answered by exact search over them directly.
EXACT_FILTER_LIMIT = 2048
# When an approximate search returns fewer than k allowed hits, the candidates are searched exactly
# if there are at most this many (beyond it, the approximate hits are returned as they are).
EXACT_FALLBACK_LIMIT = 200_000

# A build adds the changes written meanwhile to its structure in rounds outside the write lock while
# a round brings more than this many; the last few are added under the write lock, at the swap.
SWAP_CHANGES = 2_000
CATCH_UP_ROUNDS = 8

# A failed build is tried again once this many changes (documents written or deleted) were made
# since, twice as many after each further failure, up to 2**MAX_RETRY_DOUBLINGS times as many.
BUILD_RETRY_CHANGES = 1_000
MAX_RETRY_DOUBLINGS = 6

# Numbers each opened index, so that a deleted and re-created index never looks like the old one.
_INDEX_SERIALS = itertools.count(1)


class OpenIndex:
    """One open index: its record (SQLite), its search structure (FAISS) and their locks."""

    def __init__(
        self,
        path: Path,
        spec: IndexSpec,
        snapshot_every: int,
        search_threads: ThreadShare,
        builds: BuildQueue,
    ) -> None:
        self.serial = next(_INDEX_SERIALS)
        # Bumped by every write and delete (under the write lock): what readers' caches compare.
        self.version = 0
        self.path = path
        self.spec = spec
        self.snapshot_every = snapshot_every
        self._search_threads = search_threads
        self.lock = ReadWriteLock()
        # One snapshot of the index at a time, so that generations follow each other.
        self._snapshot_turn = threading.Lock()
        self.closed = False
        self.snapshot_pending = False
        self.changes_since_snapshot = 0
        # The structure as loaded or last copied for a snapshot is on disk (or being written there).
        self._snapshot_on_disk = False
        self.tombstones: set[int] = set()
        self.strategy = kind_strategy(spec)
        self.record = Record(path, spec.dimension)
        self.document_count = 0
        self._builds = builds
        # A build is queued or running (set under the write lock or while opening, cleared by the build).
        self.build_requested = False
        self._build_ended = threading.Condition()
        # Builds failed in a row; after a failure the structure in place keeps serving, and the build
        # is tried again once this many more changes were made (counted down by writes).
        self._build_failures = 0
        self._changes_before_retry = 0
        # While a build runs: what was written since it took its copy of the record.
        self._build_log: ChangeLog | None = None
        self.structure = self._load_structure()
        self._request_build_if_due()

    # -- the FAISS structure ---------------------------------------------------------------------

    def _load_structure(self) -> faiss.Index:
        live_ids = self.record.live_ids_for_build()
        self.document_count = len(live_ids)
        structure = read_snapshot(self.path, self.strategy.matches, self.spec.name)
        if structure is None:
            structure = self.strategy.empty_structure()
            self._add(structure, live_ids)
            self.changes_since_snapshot = len(live_ids)
        else:
            self._snapshot_on_disk = True
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
        return structure

    def _add(self, structure: faiss.Index, faiss_ids: np.ndarray) -> None:
        for start in range(0, len(faiss_ids), LOAD_CHUNK):
            chunk = faiss_ids[start : start + LOAD_CHUNK]
            structure.add_with_ids(self.record.vectors_for_build(chunk), chunk)

    def _remove(self, structure: faiss.Index, faiss_ids: np.ndarray) -> int:
        """Takes the vectors out of every search; returns how many left the structure itself."""
        if not len(faiss_ids):
            return 0
        return self.strategy.remove(structure, faiss_ids, self.tombstones)

    def snapshot(self) -> None:
        """Writes the structure durably and points the manifest at it; old snapshots are removed.

        Writes wait only while the structure is copied in memory under the read lock (searches go on).
        The copy is serialized, checksummed, written and fsync'd outside every lock, at low CPU
        priority; the record holds every write meanwhile, and start-up adds what the snapshot lacks.
        Nothing is written when nothing changed since the last snapshot, or once the index is closed.
        """
        with self._snapshot_turn:
            with self.lock.read():
                if self.closed or (self._snapshot_on_disk and not self.changes_since_snapshot):
                    return
                copy = copy_structure(self.structure)
                # Opened while the index is known to be here: a deletion meanwhile renames it aside.
                directory = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
                changes, self.changes_since_snapshot = self.changes_since_snapshot, 0
                self._snapshot_on_disk = True
            written = False
            try:
                written = run_at_low_priority(
                    lambda: write_snapshot(directory, copy, self.spec.name, lambda: self.closed)
                )
            finally:
                os.close(directory)
                if not written:
                    with self.lock.read():  # writers, who count changes, are held back
                        self.changes_since_snapshot += changes

    # -- background builds -------------------------------------------------------------------------

    def _request_build_if_due(self) -> None:
        """Queues a build when the kind calls for one (callers hold the write lock or are opening)."""
        if self.build_requested or self._changes_before_retry > 0 or self.closed:
            return
        if not self.strategy.rebuild_due(self.structure, len(self.tombstones)):
            return
        self.build_requested = True
        try:
            self._builds.submit(self._build)
        except RuntimeError:  # the store is closing: the next start asks again
            self.build_requested = False

    def _build(self) -> None:
        """Builds the kind's structure aside from a consistent copy of the record while writes and
        searches go on with the structure in place, then swaps it in under a short write lock.

        Nothing here writes the record: a crash at any point leaves the record and the last snapshot as
        they were, and the next start asks for the build again.
        """
        built: tuple[faiss.Index, set[int], ChangeLog] | None = None
        retry_after = 0
        try:
            built = self._build_aside()
        except Exception as error:
            retry_after = self._note_build_failure(error)
        with self.lock.write():
            self._changes_before_retry = retry_after
            if built is not None and not self.closed:
                structure, tombstones, change_log = built
                self._catch_up(structure, tombstones, change_log.take())
                self.structure, self.tombstones = structure, tombstones
                self.changes_since_snapshot += structure.ntotal
                self._build_failures = 0
                log.info("index %s: the new structure serves (%d vectors)", self.spec.name, structure.ntotal)
            self._build_log = None
        try:
            if built is not None:
                # Durably now, so that a restart need not build it again.
                self._builds.snapshot_after_build(self.snapshot)
        except Exception:
            log.exception("index %s: snapshot after the build failed; the record is intact", self.spec.name)
        finally:
            with self.lock.write():
                with self._build_ended:
                    self.build_requested = False
                    self._build_ended.notify_all()
                self._request_build_if_due()

    def _note_build_failure(self, error: Exception) -> int:
        """Logs a failed build (with its traceback the first time in a row) and returns after how many
        changes it is tried again: builds are costly, and one failing again at once would hold the
        cores in a loop."""
        self._build_failures += 1
        retry_after = BUILD_RETRY_CHANGES * 2 ** min(self._build_failures - 1, MAX_RETRY_DOUBLINGS)
        message = (
            "index %s: background build failed (%s: %s); the current structure serves, and the build "
            "is tried again after %d more changes (failure %d in a row)"
        )
        arguments = (self.spec.name, type(error).__name__, error, retry_after, self._build_failures)
        if self._build_failures == 1:
            log.exception(message, *arguments)
        else:
            log.warning(message, *arguments)
        return retry_after

    def _build_aside(self) -> tuple[faiss.Index, set[int], ChangeLog] | None:
        """The new structure and its tombstones, holding every change written up to a recent moment,
        and the log of the changes since; None when the index closed or the build is no longer due."""
        with self.lock.read():
            # Writers are held back: the copy of the record and the start of the change log match.
            if self.closed or not self.strategy.rebuild_due(self.structure, len(self.tombstones)):
                return None
            frozen = self.record.frozen()
            change_log = self._build_log = ChangeLog()
        try:
            structure = self._build_structure(frozen)
        finally:
            frozen.close()
        tombstones: set[int] = set()
        for _ in range(CATCH_UP_ROUNDS):
            with self.lock.read():  # writers, the only ones to log changes, are held back
                changes = change_log.take()
            self._catch_up(structure, tombstones, changes)
            if len(changes) <= SWAP_CHANGES:
                break
        return structure, tombstones, change_log

    def _build_structure(self, frozen: FrozenRecord) -> faiss.Index:
        """The kind's structure holding the frozen record's vectors: trained on all of them for kinds
        that train, a graph without tombstones for HNSW."""
        with self._build_threads():
            if self.strategy.trains:
                vectors = frozen.vectors(frozen.ids)
                # Closed before training, so that the record's WAL can be checkpointed meanwhile.
                frozen.close()
                structure = self.strategy.trained_structure(vectors)
                structure.add_with_ids(vectors, frozen.ids)
                return structure
            log.info("index %s: rebuilding the graph without its deleted vectors", self.spec.name)
            structure = self.strategy.empty_structure()
            for start in range(0, len(frozen.ids), LOAD_CHUNK):
                chunk = frozen.ids[start : start + LOAD_CHUNK]
                structure.add_with_ids(frozen.vectors(chunk), chunk)
            return structure

    def _catch_up(self, structure: faiss.Index, tombstones: set[int], changes: ChangeLog) -> None:
        """Applies changes logged during a build to its structure (ids removed are all in it: an id
        added during the build and removed again never reaches it)."""
        if changes.removed:
            self.strategy.remove(structure, np.fromiter(changes.removed, dtype=np.int64), tombstones)
        if changes.added:
            structure.add_with_ids(
                np.stack(list(changes.added.values())), np.fromiter(changes.added, dtype=np.int64)
            )

    @contextlib.contextmanager
    def _build_threads(self) -> Iterator[None]:
        """FAISS threads of the build queue's thread (OpenMP's setting is per calling thread)."""
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self._builds.threads)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(previous)

    def wait_for_builds(self) -> None:
        """Returns once no build is queued or running (or the index is closed)."""
        with self._build_ended:
            self._build_ended.wait_for(lambda: not self.build_requested or self.closed)

    # -- writes (callers hold the write lock) ----------------------------------------------------

    def write(self, documents: Sequence[PreparedDocument]) -> None:
        """Stores the documents (replacing same ids) durably, then updates the search structure."""
        old_ids, new_ids = self.record.replace(documents)
        # Durable from here on; the structure follows.
        vectors = np.stack([d.vector for d in documents])  # type: ignore[misc]
        self._remove(self.structure, old_ids)
        self.structure.add_with_ids(vectors, new_ids)
        if self._build_log is not None:
            self._build_log.record_removed(old_ids)
            self._build_log.record_added(new_ids, vectors)
        self.document_count += len(documents) - len(old_ids)
        self.changes_since_snapshot += len(documents) + len(old_ids)
        self._changes_before_retry -= len(documents) + len(old_ids)
        self.version += 1
        self._request_build_if_due()

    def delete(self, ids: Sequence[str]) -> int:
        old_ids = self.record.delete(ids)
        self._remove(self.structure, old_ids)
        if self._build_log is not None:
            self._build_log.record_removed(old_ids)
        self.document_count -= len(old_ids)
        self.changes_since_snapshot += len(old_ids)
        self._changes_before_retry -= len(old_ids)
        self.version += 1
        self._request_build_if_due()
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
    ) -> Ranking:
        """(faiss_id, score) pairs per query, best first; `excluded[i]` is left out of query i's hits."""
        wanted = k + (1 if any(faiss_id is not None for faiss_id in excluded) else 0)
        allowed: np.ndarray | None = None
        if conditions:
            allowed = self.record.ids_passing(conditions)
            if not len(allowed):
                return [[] for _ in range(len(queries))]
        candidate_count = len(allowed) if allowed is not None else self.document_count
        if allowed is not None and len(allowed) <= EXACT_FILTER_LIMIT:
            results = self._exact_search(queries, allowed, wanted)
        else:
            if self.strategy.reranks(self.structure):
                # Codes give approximate scores: fetch more candidates and re-score them exactly.
                candidates = self._structure_search(queries, candidates_to_rerank(wanted), allowed, tuning)
                results = rerank(self.spec.metric, queries, candidates, wanted, self.record.vectors)
            else:
                results = self._structure_search(queries, wanted, allowed, tuning)
            # An approximate search may find fewer allowed hits than exist (a selective filter
            # starves HNSW's candidate list or IVF's probed lists): search those queries exactly.
            short = [
                position for position, hits in enumerate(results) if len(hits) < min(wanted, candidate_count)
            ]
            if short and candidate_count <= EXACT_FALLBACK_LIMIT:
                everyone = allowed if allowed is not None else self.record.live_ids()
                exact = self._exact_search(queries[short], everyone, wanted)
                for position, hits in zip(short, exact, strict=True):
                    results[position] = hits
        return [
            [hit for hit in hits if hit[0] != exclude][:k]
            for hits, exclude in zip(results, excluded, strict=True)
        ]

    def _structure_search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None, tuning: SearchTuning = None
    ) -> Ranking:
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
        scores, labels = self._faiss_search(queries, k, params)
        del excluded_selector  # kept alive until the search is done
        # tolist() converts the whole arrays to Python ints and floats at once, not one value at a time.
        return [
            [(label, score) for label, score in zip(row_labels, row_scores, strict=True) if label >= 0]
            for row_labels, row_scores in zip(labels.tolist(), scores.tolist(), strict=True)
        ]

    def _exact_search(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> Ranking:
        return exact_search(self.spec.metric, queries, self.record.vectors(candidates), candidates, k)

    def _faiss_search(
        self, queries: np.ndarray, k: int, params: faiss.SearchParameters | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The structure's scores and labels, FAISS run in this thread (its OpenMP setting is per calling
        thread) with an even share of the cores among the searches running now, and one thread per
        query at most (FAISS splits by query).

        A server's searches run side by side in many threads: an OpenMP team per call oversubscribes the
        cores and spins in sched_yield (32 concurrent one-query clients on 2 cores: 29 queries/s with a
        team each, 181 on one thread each). A search running alone, such as merged concurrent queries or
        one client's batch, gets every core: at 100 queries per call, 2.0x for HNSW and sq8 and 1.4x for
        exact search on 2 cores here.
        """
        with self._search_threads.share(len(queries)) as threads:
            previous = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(threads)
            try:
                return self.structure.search(queries, k, params=params)
            finally:
                faiss.omp_set_num_threads(previous)

    def close(self) -> None:
        """Closes the record (callers hold the write lock); a build still queued finds the index closed."""
        with self._build_ended:
            self.closed = True
            self._build_ended.notify_all()
        self.record.close()

"""IndexStore, the facade: named, durable vector indexes (SQLite the record, FAISS a derived structure).

Layout of the data directory::

    <data_dir>/.lock                 held (flock) by the one process serving the directory
    <data_dir>/<name>/documents.sqlite3 (+ -wal, -shm)
                                     the source of truth: index settings, documents, vectors, metadata
    <data_dir>/<name>/snapshot.json  names the current FAISS snapshot, its size and CRC-32s
    <data_dir>/<name>/snapshot-<generation>.faiss

Durability: every write is one SQLite transaction in WAL mode with synchronous=FULL, so it is on disk
(fsync'd) before the call returns (record.py). FAISS ids are the documents' SQLite row ids, assigned
from a counter that only grows, so a replaced document gets a new id. The FAISS structure is
snapshotted every `snapshot_every` changes and on close (written to a temporary file, fsync'd,
renamed, and only then named by the manifest: snapshots.py). On open, the snapshot is loaded if its
CRC matches and caught up with the record by comparing id sets: ids in the snapshot but not in the
record are removed (or tombstoned), ids in the record but not in the snapshot are added from their
stored vectors. A missing, torn or corrupt snapshot is rebuilt from the record. Nothing is ever
re-embedded. An index is created in a staging directory and renamed into place, and deleted by
renaming it aside first, so a crash never leaves half of one (the leftovers are removed on the next
start).

Kinds that train (ivf_flat, ivf_pq, sq8) answer with exact search until `training_threshold` vectors
are stored, then train on all stored vectors and switch (see `training_threshold`; each kind's
behaviour is its strategy in kinds.py). HNSW cannot remove vectors, so deleted ones are tombstoned
(excluded from every search) and the graph is rebuilt once tombstones pass HNSW_COMPACT_FRACTION of it.
Training and rebuilding run in the background (builds.py, OpenIndex._build): from a consistent copy of
the record, one build at a time, at low CPU priority, while writes and searches go on with the
structure in place; the changes written meanwhile are logged and added before the new structure is
swapped in under a short write lock, then snapshotted. Quantized kinds re-score their best candidates
with the stored vectors (RERANK_FACTOR, exact.py).

Metadata filters run inside the search (filters.py, open_index.py): an indexed (key, kind, value)
table yields the FAISS ids that pass, which FAISS gets as an IDSelector. At most EXACT_FILTER_LIMIT of
them are searched exactly instead, and an approximate search that finds fewer than k allowed hits is
redone exactly over the allowed set, so k hits come back whenever k documents match.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from service.common.durable import fsync_directory
from service.common.limits import check_k
from service.common.thread_share import ThreadShare
from service.common.validation import check_unicode
from service.embedding.protocol import TextEncoder
from service.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TooLarge,
)
from service.index.builds import BuildQueue
from service.index.exact import Ranking
from service.index.filters import Condition
from service.index.kinds import check_params
from service.index.model import (
    DEFAULT_KIND,
    MAX_DIMENSION,
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
    check_count,
    check_ids_only,
    check_name,
    normalize_rows,
    plain_query_vector,
    prepare_document,
    sort_queries,
)
from service.index.open_index import OpenIndex
from service.index.record import DATABASE_FILE, StoredFields, create_record, read_spec_json
from service.index.search_batching import SearchCoalescer

log = logging.getLogger(__name__)

# FAISS scans every vector once per query unless queries x dimension reaches this threshold (its
# default 128,000 is 333 queries of 384 dimensions); only its BLAS path shares a pass over the vectors
# among queries. Measured on 100,000 x 384 flat: 32 merged queries per call gave 50 q/s by scans and
# 300-490 q/s by BLAS; one query is faster by scan. From 4 queries of 384 dimensions on, BLAS.
FLAT_BLAS_THRESHOLD = 4 * 384

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DEFAULT_SNAPSHOT_EVERY = 50_000
LOCK_FILE = ".lock"


def _stored_bytes(fields: StoredFields) -> int:
    """About the serialized size of a hit of this document, in bytes (characters stand in for UTF-8
    bytes)."""
    document_id, text, metadata, vector = fields
    metadata_bytes = sum(len(key) + len(str(value)) + 8 for key, value in metadata.items()) if metadata else 0
    vector_bytes = 4 * len(vector) if vector is not None else 0
    return len(document_id) + len(text) + metadata_bytes + vector_bytes + 16


def _check_answer_size(answer_bytes: int, limit: int) -> None:
    if answer_bytes > limit:
        raise TooLarge(
            f"the answer would hold about {answer_bytes:,} bytes, more than the limit of {limit:,} bytes "
            "per message (--max-message-bytes): lower k, send fewer queries at once, or leave out "
            "include_vectors"
        )


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
        # A process-wide FAISS setting, made by the store that relies on it (see FLAT_BLAS_THRESHOLD).
        faiss.cvar.distance_compute_blas_threshold = FLAT_BLAS_THRESHOLD
        # FAISS's OpenMP threads (one per core by default), shared among the searches running at once.
        self._search_threads = ThreadShare(faiss.omp_get_max_threads())
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
        self._indexes: dict[str, OpenIndex] = {}
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
        self._builds = BuildQueue(self._search_threads.threads)
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

    def _open(self, path: Path) -> OpenIndex:
        spec = IndexSpec.from_json(path.name, read_spec_json(path))
        return OpenIndex(path, spec, self._snapshot_every, self._search_threads, self._builds)

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
            fsync_directory(staging)
            os.rename(staging, target)
            fsync_directory(self.data_dir)
            index = OpenIndex(target, spec, self._snapshot_every, self._search_threads, self._builds)
            self._indexes[name] = index
        return self._info(index)

    def get_index(self, name: str) -> IndexInfo:
        return self._info(self._get(name))

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
        index = self._get(name)
        with self._lock:
            if self._indexes.get(name) is not index:
                raise NotFound(f"index {name!r} does not exist")
            del self._indexes[name]
        # A snapshot being written meanwhile stops, and writes only into the directory renamed aside.
        with index.lock.write():
            index.close()
        trash = self.data_dir / f".deleting-{name}-{uuid.uuid4().hex}"
        os.rename(index.path, trash)
        fsync_directory(self.data_dir)
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
        check_count(len(documents), self.max_documents_per_request, "documents")
        prepared = [
            prepare_document(index.spec, document, position, self.max_text_characters)
            for position, document in enumerate(documents)
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
        check_count(len(ids), self.max_documents_per_request, "ids")
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
        ids_only: bool = False,
    ) -> list[list[Hit]]:
        """The k closest documents passing every condition, per query, best first.

        ef_search (hnsw) and nprobe (ivf_flat, ivf_pq) override the index's setting for this call;
        InvalidArgument when out of range or when the index's kind has no such setting. With ids_only,
        hits carry ids and scores alone (empty text and metadata): only the ids are looked up.
        """
        index = self._get(name)
        spec = index.spec
        k = check_k(k)
        check_ids_only(ids_only, include_vectors)
        tuning = index.strategy.check_search_settings(ef_search, nprobe)
        check_count(len(queries), self.max_queries_per_request, "queries")
        if include_vectors and not conditions:
            # Refused before any search work when the vectors alone would overflow the answer.
            hits_per_query = min(k, max(index.document_count - 1, 0))
            _check_answer_size(len(queries) * hits_per_query * 4 * spec.dimension, self.max_response_bytes)
        # A lone vector query, the commonest call, is checked without the general path's matrix and loops.
        plain = len(queries) == 1 and queries[0].text is None and queries[0].document_id is None
        lone_vector = plain_query_vector(queries[0].vector, spec.dimension, spec.metric) if plain else None
        if lone_vector is not None:
            query_vectors, by_document = lone_vector, {}
        else:
            query_vectors, by_document = self._query_vectors(spec, queries)
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
            found_ids = sorted({faiss_id for hits in ranked for faiss_id, _ in hits})
            if ids_only:
                document_ids = index.record.document_ids_by_faiss_id(found_ids)
            else:
                documents = index.record.documents_by_faiss_id(found_ids, include_vectors)
        if ids_only:
            return self._id_hits(ranked, document_ids)
        # A document's size is computed once, however many queries it answers (many queries and a
        # large k can repeat the same long texts); the answer's total is summed as the hits are made.
        sizes = {faiss_id: _stored_bytes(fields) for faiss_id, fields in documents.items()}
        answer_bytes = 0
        results = []
        for hits in ranked:
            query_hits = []
            for faiss_id, score in hits:
                document_id, text, metadata, vector = documents[faiss_id]
                answer_bytes += sizes[faiss_id]
                query_hits.append(Hit(document_id, score, text, metadata, vector))
            results.append(query_hits)
        _check_answer_size(answer_bytes, self.max_response_bytes)
        return results

    def _id_hits(self, ranked: Ranking, document_ids: dict[int, str]) -> list[list[Hit]]:
        """Hits of ids and scores alone; each is about its id and 16 bytes as serialized."""
        results = [
            [Hit(document_ids[faiss_id], score, "", {}) for faiss_id, score in hits] for hits in ranked
        ]
        _check_answer_size(sum(len(hit.id) + 16 for hits in results for hit in hits), self.max_response_bytes)
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

    def wait_for_builds(self, name: str) -> None:
        """Returns once the index has no background build (training, HNSW compaction) queued or running."""
        self._get(name).wait_for_builds()

    def close(self) -> None:
        """Lets a running build finish (queued ones are asked for again at the next start), waits for
        pending snapshots, snapshots every index with unsaved changes, and closes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            indexes = list(self._indexes.values())
        self._builds.close()
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

    def _get(self, name: str, field_name: str = "index_name") -> OpenIndex:
        check_name(name, field_name)
        with self._lock:
            self._check_open()
            index = self._indexes.get(name)
        if index is None:
            raise NotFound(f"index {name!r} does not exist")
        return index

    @staticmethod
    def _check_alive(index: OpenIndex) -> None:
        if index.closed:
            raise NotFound(f"index {index.spec.name!r} does not exist")

    def _query_vectors(self, spec: IndexSpec, queries: Sequence[Query]) -> tuple[np.ndarray, dict[int, str]]:
        """The queries' vectors, checked (normalized for cosine, embedded from text), as one matrix whose
        rows of document_id queries are filled in later; and those queries' document ids by position."""
        checked = sort_queries(spec, queries, self.max_text_characters)
        query_vectors, positions = checked.vectors, checked.given_vectors
        if positions and spec.metric is Metric.COSINE:  # all at once: per row, numpy's cost dominates
            query_vectors[positions] = normalize_rows(
                query_vectors[positions], [f"queries[{position}].vector" for position in positions]
            )
        if checked.texts:
            query_vectors[list(checked.texts)] = self._embed(spec, list(checked.texts.values()), "queries")
        return query_vectors, checked.by_document

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

    def _snapshot_if_due(self, index: OpenIndex) -> None:
        if index.changes_since_snapshot >= index.snapshot_every:
            self._schedule_snapshot(index)

    def _schedule_snapshot(self, index: OpenIndex) -> None:
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

    def _info(self, index: OpenIndex) -> IndexInfo:
        with index.lock.read():
            self._check_alive(index)
            return IndexInfo(
                spec=index.spec,
                document_count=index.document_count,
                trained=index.trained,
                memory_bytes=index.memory_bytes(),
                disk_bytes=index.disk_bytes(),
            )

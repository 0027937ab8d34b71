"""An index's record in SQLite, its source of truth: schema, connections, transactions and every query."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from service.index.filters import Condition, filter_query, typed_value
from service.index.model import Document, MetadataScalar, PreparedDocument

log = logging.getLogger(__name__)

DATABASE_FILE = "documents.sqlite3"
# Deletes bind at most this many ids as parameters per statement (SQLite allows 32,766).
INLINE_ID_LIMIT = 500
# Hit lookups of at most this many ids bind them as parameters, beyond it through json_each: bound
# directly, 1,000 ids of a million documents were found in 11 instead of 17 ms (a loaded machine).
HIT_INLINE_ID_LIMIT = 4096
# Address space each read connection maps the database file into (the part beyond the file is unused).
READER_MMAP_BYTES = 1 << 30
# Rows read from SQLite at a time when (re)building a structure.
LOAD_CHUNK = 50_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    faiss_id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS metadata (
    faiss_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    value,
    PRIMARY KEY (faiss_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metadata_by_value ON metadata (key, kind, value);
"""
# What a search hit shows of a document, by FAISS id, apart from the rows' vectors: a hit lookup reads
# this small b-tree instead of rows of 1.5 KiB spread over the whole file (a million documents of 384
# dimensions: 23 MiB against 2 GiB, whose random pages cost several microseconds each). It repeats
# ids, texts and metadata; created on open for records made before it.
_HIT_FIELDS_INDEX = "CREATE INDEX IF NOT EXISTS hit_fields ON documents (faiss_id, doc_id, text, metadata)"

# A stored document's id, text, metadata and (when asked for) vector.
StoredFields = tuple[str, str, dict[str, MetadataScalar], np.ndarray | None]


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsync'd at every commit, so a committed write survives a crash or power loss.
    connection.execute("PRAGMA synchronous=FULL")
    return connection


def create_record(directory: Path, spec_json: str) -> None:
    """Creates the record of a new index in `directory`, holding its settings and no documents."""
    connection = _connect(directory / DATABASE_FILE)
    try:
        connection.executescript(_SCHEMA)
        connection.execute(_HIT_FIELDS_INDEX)
        connection.execute("INSERT INTO settings (key, value) VALUES ('spec', ?)", (spec_json,))
    finally:
        connection.close()


def read_spec_json(directory: Path) -> str:
    """The settings an index was created with, as its record holds them."""
    connection = _connect(directory / DATABASE_FILE)
    try:
        (spec_json,) = connection.execute("SELECT value FROM settings WHERE key = 'spec'").fetchone()
    finally:
        connection.close()
    return spec_json


def vectors_from_blobs(blobs: Sequence[bytes], dimension: int) -> np.ndarray:
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dimension)


class Record:
    """One index's documents. Writes go through its one writer connection (callers hold the index's
    write lock); searches and lookups through a read connection per thread, which WAL lets run beside
    the writer. FAISS ids are the documents' row ids, from a counter that only grows."""

    def __init__(self, directory: Path, dimension: int) -> None:
        self._path = directory / DATABASE_FILE
        self._dimension = dimension
        self._writer = _connect(self._path)
        if not self._writer.execute("SELECT 1 FROM sqlite_master WHERE name = 'hit_fields'").fetchone():
            log.info("%s: indexing the hit fields of a record made before hit_fields", self._path)
            self._writer.execute(_HIT_FIELDS_INDEX)
        self._readers: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._readers_lock = threading.Lock()
        row = self._writer.execute("SELECT seq FROM sqlite_sequence WHERE name = 'documents'").fetchone()
        self._next_faiss_id = (row[0] if row else 0) + 1

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = _connect(self._path)
            connection.execute("PRAGMA query_only=ON")
            # Pages read through a shared memory map instead of a read() per page into each thread's
            # own cache: hit lookups of 10 random documents took 35 instead of 55 us.
            connection.execute(f"PRAGMA mmap_size={READER_MMAP_BYTES}")
            self._local.connection = connection
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            yield self._writer
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise
        self._writer.execute("COMMIT")

    # -- writes (callers hold the write lock) ----------------------------------------------------

    def replace(self, documents: Sequence[PreparedDocument]) -> tuple[np.ndarray, np.ndarray]:
        """Stores the documents (replacing same ids) in one transaction, durable when it returns.

        Returns the FAISS ids of the documents replaced and the new FAISS ids of `documents`, in order.
        """
        new_ids = np.arange(self._next_faiss_id, self._next_faiss_id + len(documents), dtype=np.int64)
        self._next_faiss_id += len(documents)
        with self._transaction() as connection:
            old_ids = self._delete_rows(connection, [document.id for document in documents])
            connection.executemany(
                "INSERT INTO documents (faiss_id, doc_id, text, metadata, vector) VALUES (?, ?, ?, ?, ?)",
                [
                    (int(faiss_id), d.id, d.text, json.dumps(d.metadata), d.vector.tobytes())  # type: ignore[union-attr]
                    for faiss_id, d in zip(new_ids, documents, strict=True)
                ],
            )
            connection.executemany(
                "INSERT INTO metadata (faiss_id, key, kind, value) VALUES (?, ?, ?, ?)",
                [
                    (int(faiss_id), key, *typed_value(value))
                    for faiss_id, d in zip(new_ids, documents, strict=True)
                    for key, value in d.metadata.items()
                ],
            )
        return old_ids, new_ids

    def delete(self, ids: Sequence[str]) -> np.ndarray:
        """Deletes the documents of these ids (unknown ones are ignored); returns their FAISS ids."""
        with self._transaction() as connection:
            return self._delete_rows(connection, ids)

    @staticmethod
    def _delete_rows(connection: sqlite3.Connection, ids: Sequence[str]) -> np.ndarray:
        # Bound as parameters, never through json_each(), which cuts a string at U+0000.
        rows: list[tuple[int]] = []
        for start in range(0, len(ids), INLINE_ID_LIMIT):
            chunk = list(ids[start : start + INLINE_ID_LIMIT])
            rows += connection.execute(
                f"SELECT faiss_id FROM documents WHERE doc_id IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
        old_ids = np.array([row[0] for row in rows], dtype=np.int64)
        if len(old_ids):
            faiss_id_list = json.dumps(old_ids.tolist())
            connection.execute(
                "DELETE FROM metadata WHERE faiss_id IN (SELECT value FROM json_each(?))", (faiss_id_list,)
            )
            connection.execute(
                "DELETE FROM documents WHERE faiss_id IN (SELECT value FROM json_each(?))", (faiss_id_list,)
            )
        return old_ids

    # -- reads for (re)building a structure: through the writer, by callers opening the index or
    # holding its write lock ------------------------------------------------------------------

    def live_ids_for_build(self) -> np.ndarray:
        """Every stored FAISS id, in order."""
        return np.sort(self._live_ids(self._writer))

    def vectors_for_build(self, faiss_ids: np.ndarray) -> np.ndarray:
        """Stored vectors of the given ids, in the given order."""
        return self._vectors(self._writer, faiss_ids)

    # -- reads (callers hold the read lock) ------------------------------------------------------

    def live_ids(self) -> np.ndarray:
        """Every stored FAISS id, in no particular order."""
        return self._live_ids(self._reader())

    def vectors(self, faiss_ids: np.ndarray) -> np.ndarray:
        """Stored vectors of the given ids, in the given order."""
        return self._vectors(self._reader(), faiss_ids)

    def ids_passing(self, conditions: Sequence[Condition]) -> np.ndarray:
        """FAISS ids of the documents that pass every condition, through the indexed metadata table."""
        sql, parameters = filter_query(conditions)
        rows = self._reader().execute(sql, parameters).fetchall()
        return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))

    def documents_by_faiss_id(
        self, faiss_ids: Sequence[int], include_vectors: bool
    ) -> dict[int, StoredFields]:
        # Vectors are only in the rows; everything else comes from the hit_fields index alone.
        source = "documents" if include_vectors else "documents INDEXED BY hit_fields"
        columns = "faiss_id, doc_id, text, metadata" + (", vector" if include_vectors else "")
        rows = self._rows_of_faiss_ids(columns, source, faiss_ids)
        return {
            row[0]: (
                row[1],
                row[2],
                json.loads(row[3]) if row[3] != "{}" else {},
                np.frombuffer(row[4], dtype=np.float32).copy() if include_vectors else None,
            )
            for row in rows
        }

    def document_ids_by_faiss_id(self, faiss_ids: Sequence[int]) -> dict[int, str]:
        """The document ids of these FAISS ids (missing ones left out), from the hit_fields index alone:
        for hits of ids and scores only, nothing else is decoded."""
        return dict(self._rows_of_faiss_ids("faiss_id, doc_id", "documents INDEXED BY hit_fields", faiss_ids))

    def _rows_of_faiss_ids(self, columns: str, source: str, faiss_ids: Sequence[int]) -> sqlite3.Cursor:
        """SELECT columns FROM source for these FAISS ids, bound as parameters up to HIT_INLINE_ID_LIMIT
        of them and as one JSON array beyond."""
        if len(faiss_ids) <= HIT_INLINE_ID_LIMIT:
            return self._reader().execute(
                f"SELECT {columns} FROM {source} WHERE faiss_id IN ({','.join('?' * len(faiss_ids))})",
                list(faiss_ids),
            )
        return self._reader().execute(
            f"SELECT {columns} FROM {source} WHERE faiss_id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(faiss_ids)),),
        )

    def document(self, document_id: str) -> Document | None:
        row = (
            self._reader()
            .execute("SELECT doc_id, text, metadata, vector FROM documents WHERE doc_id = ?", (document_id,))
            .fetchone()
        )
        if row is None:
            return None
        return Document(row[0], row[1], json.loads(row[2]), np.frombuffer(row[3], dtype=np.float32).copy())

    def faiss_id_and_vector(self, document_id: str) -> tuple[int, np.ndarray] | None:
        row = (
            self._reader()
            .execute("SELECT faiss_id, vector FROM documents WHERE doc_id = ?", (document_id,))
            .fetchone()
        )
        if row is None:
            return None
        return row[0], np.frombuffer(row[1], dtype=np.float32)

    def texts_and_vectors(self) -> tuple[list[str], np.ndarray]:
        """Every document that has text: the texts and their stored vectors, in insertion order."""
        rows = (
            self._reader()
            .execute("SELECT text, vector FROM documents WHERE text != '' ORDER BY faiss_id")
            .fetchall()
        )
        return [row[0] for row in rows], vectors_from_blobs([row[1] for row in rows], self._dimension)

    def close(self) -> None:
        self._writer.close()
        with self._readers_lock:
            for connection in self._readers:
                connection.close()
            self._readers.clear()

    # -- queries on either connection --------------------------------------------------------------

    @staticmethod
    def _live_ids(connection: sqlite3.Connection) -> np.ndarray:
        rows = connection.execute("SELECT faiss_id FROM documents").fetchall()
        return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))

    def _vectors(self, connection: sqlite3.Connection, faiss_ids: np.ndarray) -> np.ndarray:
        return _read_vectors(connection, faiss_ids, self._dimension)

    def frozen(self) -> FrozenRecord:
        """The record as it is now, for building a structure aside while writes go on; callers hold the
        read or write lock while it is made, and close it when done."""
        return FrozenRecord(self._path, self._dimension)


class FrozenRecord:
    """The record as it was when this was made: a read transaction on a connection of its own, which
    WAL keeps unchanged by later commits. It holds back checkpoints while open, so builds close it as
    soon as they have read what they need."""

    def __init__(self, path: Path, dimension: int) -> None:
        self._dimension = dimension
        self._connection = _connect(path)
        self._connection.execute("PRAGMA query_only=ON")
        self._connection.execute("BEGIN")
        self._open = True
        # The transaction's first read fixes the state every later read of it sees.
        self.ids = np.sort(Record._live_ids(self._connection))

    def vectors(self, faiss_ids: np.ndarray) -> np.ndarray:
        """Stored vectors of the given ids, in the given order."""
        return _read_vectors(self._connection, faiss_ids, self._dimension)

    def close(self) -> None:
        """Ends the read transaction; closing again does nothing."""
        if self._open:
            self._open = False
            self._connection.execute("ROLLBACK")
            self._connection.close()


def _read_vectors(connection: sqlite3.Connection, faiss_ids: np.ndarray, dimension: int) -> np.ndarray:
    vectors = np.empty((len(faiss_ids), dimension), dtype=np.float32)
    for start in range(0, len(faiss_ids), LOAD_CHUNK):
        chunk = faiss_ids[start : start + LOAD_CHUNK]
        rows = connection.execute(
            "SELECT faiss_id, vector FROM documents WHERE faiss_id IN (SELECT value FROM json_each(?))",
            (json.dumps(chunk.tolist()),),
        ).fetchall()
        by_id = {faiss_id: blob for faiss_id, blob in rows}
        vectors[start : start + len(chunk)] = vectors_from_blobs([by_id[int(i)] for i in chunk], dimension)
    return vectors

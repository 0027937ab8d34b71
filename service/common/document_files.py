"""Documents read from JSON Lines, CSV, plain-text and Parquet files, each bad record named by file and line.

`vecserve add` and `vecserve cluster index` read their inputs here, so the same file gives the same
documents (and the same content-derived ids) whichever way it is loaded.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("auto", "jsonl", "csv", "text", "parquet")
JSONL_KEYS = {"id", "text", "metadata", "vector"}
_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")
FORMAT_HELP = """\
formats (by extension unless --format is given):
  .jsonl/.ndjson  one object per line: {"id": ..., "text": ..., "metadata": {...}, "vector": [...]}
                  (text or vector required; the rest optional)
  .csv            a header row; columns id and text (see --text-column), an optional "metadata"
                  column holding a JSON object; every other column becomes metadata (numbers and
                  true/false are converted, empty cells skipped)
  .parquet        columns as in JSON Lines (metadata a struct, a map or a JSON string); needs pyarrow
  anything else   plain text, one document per non-blank line
documents without an id get one derived from their content (a SHA-256 prefix), so re-running
stores the same documents again instead of duplicating them."""
# Parquet rows are read in batches of this many (a row group can hold millions).
PARQUET_BATCH_ROWS = 4096

MetadataScalar = str | float | int | bool


class InputError(ValueError):
    """A problem in an input file, reported with its file and line."""


@dataclass(frozen=True)
class SourceDocument:
    """One document as read from a file; `where` is its file and line, for error messages."""

    id: str
    text: str
    metadata: dict[str, MetadataScalar] = field(default_factory=dict)
    vector: list[float] | None = None
    where: str = ""


@dataclass(frozen=True)
class ReadOptions:
    """How records are read: the format (by extension unless given) and the CSV columns."""

    file_format: str = "auto"
    text_column: str = "text"
    id_column: str = "id"


def format_of(path: Path, requested: str) -> str:
    if requested != "auto":
        return requested
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    return "text"


def content_id(text: str, vector: list[float] | None) -> str:
    """The id of a document that has none: a SHA-256 prefix of its content, so re-loading a file stores
    the same documents again instead of duplicating them."""
    digest = hashlib.sha256(text.encode())
    if vector is not None:
        digest.update(json.dumps(vector).encode())
    return digest.hexdigest()[:32]


def cell_value(cell: str) -> str | float | bool:
    """A CSV cell (or a filter value) as a number, a boolean or the string itself."""
    if _NUMBER.fullmatch(cell):
        return float(cell)
    if cell.lower() in ("true", "false"):
        return cell.lower() == "true"
    return cell


def document_record(record: dict[str, Any], where: str) -> SourceDocument:
    """Checks one record's fields (text or vector required); InputError says what is wrong, and where."""
    text = record.get("text") or ""
    vector = record.get("vector")
    metadata = record.get("metadata") or {}
    if not isinstance(text, str):
        raise InputError(f"{where}: text must be a string")
    if vector is not None and (
        not isinstance(vector, list) or not all(isinstance(v, int | float) for v in vector)
    ):
        raise InputError(f"{where}: vector must be a list of numbers")
    if not text.strip() and not vector:
        raise InputError(f"{where}: a document needs a text or a vector")
    if not isinstance(metadata, dict):
        raise InputError(f"{where}: metadata must be an object")
    for key, value in metadata.items():
        if not isinstance(value, str | int | float | bool):
            raise InputError(f"{where}: metadata {key!r} must be a string, a number or a boolean")
    document_id = record.get("id")
    if document_id is None or document_id == "":
        document_id = content_id(text, vector)
    elif not isinstance(document_id, str | int):
        raise InputError(f"{where}: id must be a string or an integer")
    return SourceDocument(
        id=str(document_id), text=text, metadata=dict(metadata), vector=vector or None, where=where
    )


def read_records(path: Path, options: ReadOptions) -> Iterator[SourceDocument | InputError]:
    """The documents of one file in order, a bad record yielded as its InputError so a caller can go
    on past it. A file that cannot be read at all (missing, no CSV text column) yields one error."""
    file_format = format_of(path, options.file_format)
    try:
        if file_format == "parquet":
            yield from _parquet_records(path)
            return
        with path.open(newline="" if file_format == "csv" else None, encoding="utf-8") as handle:
            if file_format == "text":
                for line_number, line in enumerate(handle, 1):
                    if line.strip():
                        yield _checked({"text": line.rstrip("\r\n")}, f"{path}:{line_number}")
            elif file_format == "jsonl":
                for line_number, line in enumerate(handle, 1):
                    if line.strip():
                        yield _jsonl_record(line, f"{path}:{line_number}")
            else:
                yield from _csv_records(handle, path, options)
    except (OSError, UnicodeDecodeError) as error:
        yield InputError(f"{path}: {error}")


def read_documents(path: Path, options: ReadOptions) -> Iterator[SourceDocument]:
    """The documents of one file, in order; raises the InputError of the first bad record."""
    for item in read_records(path, options):
        if isinstance(item, InputError):
            raise item
        yield item


def _checked(record: dict[str, Any], where: str) -> SourceDocument | InputError:
    try:
        return document_record(record, where)
    except InputError as error:
        return error


def _jsonl_record(line: str, where: str) -> SourceDocument | InputError:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return InputError(f"{where}: not valid JSON ({error.msg})")
    if not isinstance(record, dict):
        return InputError(f"{where}: each line must be a JSON object")
    unknown = set(record) - JSONL_KEYS
    if unknown:
        return InputError(f"{where}: unknown keys {sorted(unknown)}; use {sorted(JSONL_KEYS)}")
    return _checked(record, where)


def _csv_records(handle: Any, path: Path, options: ReadOptions) -> Iterator[SourceDocument | InputError]:
    reader = csv.DictReader(handle)
    if reader.fieldnames is None or options.text_column not in reader.fieldnames:
        yield InputError(f"{path}: the CSV header has no {options.text_column!r} column")
        return
    for row in reader:
        where = f"{path}:{reader.line_num}"
        metadata: dict[str, Any] = {}
        if row.get("metadata"):
            try:
                metadata.update(json.loads(row["metadata"]))
            except (json.JSONDecodeError, TypeError, ValueError):
                yield InputError(f"{where}: the metadata column must hold a JSON object")
                continue
        for column, cell in row.items():
            if column not in (options.text_column, options.id_column, "metadata") and cell:
                metadata[column] = cell_value(cell)
        yield _checked(
            {"id": row.get(options.id_column), "text": row[options.text_column] or "", "metadata": metadata},
            where,
        )


def _parquet_records(path: Path) -> Iterator[SourceDocument | InputError]:
    """Columns id, text, metadata (a struct, a map or a JSON string) and vector (a list of numbers),
    as in JSON Lines; rows are numbered from 1."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        yield InputError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)")
        return
    try:
        table = parquet.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid for files that are not Parquet
        yield InputError(f"{path}: not a readable Parquet file ({error})")
        return
    unknown = set(table.schema_arrow.names) - JSONL_KEYS
    if unknown:
        yield InputError(f"{path}: unknown columns {sorted(unknown)}; use {sorted(JSONL_KEYS)}")
        return
    row_number = 0
    for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            row_number += 1
            where = f"{path}:row {row_number}"
            metadata = record.get("metadata")
            if isinstance(metadata, str):
                try:
                    record["metadata"] = json.loads(metadata)
                except json.JSONDecodeError:
                    yield InputError(f"{where}: the metadata column must hold a JSON object")
                    continue
            elif isinstance(metadata, list):  # an Arrow map arrives as (key, value) pairs
                record["metadata"] = dict(metadata)
            if isinstance(metadata, dict):  # a struct column gives every row every key: unset ones None
                record["metadata"] = {key: value for key, value in metadata.items() if value is not None}
            yield _checked(record, where)

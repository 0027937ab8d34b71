"""Batch indexing on Ray Data: files read on this node, embedded by a pool of encoder actors across the
cluster, then stored shard by shard (or streamed into a running server by the caller).

The pipeline, after Ray's batch inference guide::

    input files ──read_records (tasks on this node)──> rows {id, text, metadata, vector, where, error}
        ──map_batches(EncoderActor, A actors, num_gpus=G, batch_size=B)──> rows with vectors
        ──(this process) ShardedStore.upsert: shard crc32(id) % N──> <out>/shard-<k>

Documents that carry a vector are not embedded again. Bad records travel as rows with an error (their
file and line) so the job can go on past them; the order of the input is kept, so when an id repeats
the later record wins, as with `vecserve add`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from service.cluster.manifest import ClusterManifest
from service.cluster.routing import shard_name
from service.cluster.sharded_store import LocalShard, ShardedStore
from service.common.document_files import InputError, ReadOptions, read_records
from service.errors import AlreadyExists, InvalidArgument, InvalidSettings
from service.index.model import DEFAULT_KIND, Document, IndexKind, KindParams, Metric
from service.index.store import IndexStore

# Rows per batch leaving a read task, and read tasks at once (one file each).
READ_BATCH_ROWS = 1024
READ_TASKS = 4
# Documents per upsert into the shards (IndexStore's default per-request limit).
UPSERT_DOCUMENTS = 1024
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("metadata", pa.string()),  # JSON: Arrow would give every row every key of every other row
        ("vector", pa.list_(pa.float32())),
        ("where", pa.string()),
        ("error", pa.string()),  # "" for a document
    ]
)
_REJECTED_FIELD = re.compile(r"documents\[(\d+)\]")


@dataclass(frozen=True)
class EncoderOptions:
    """The model each encoder actor loads, as `vecserve serve` takes it."""

    model_name_or_path: str
    device: str = "auto"
    backend: str = "torch"
    cache_dir: Path | None = None


@dataclass(frozen=True)
class PoolOptions:
    """The actor pool: how many encoders, what each reserves, and the rows per model call."""

    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 256


@dataclass(frozen=True)
class IndexRequest:
    """The index to store into, created on every shard unless it exists (0 dimension: the model's)."""

    name: str
    dimension: int = 0
    metric: Metric = Metric.COSINE
    kind: IndexKind = DEFAULT_KIND
    params: KindParams | None = None


@dataclass
class EmbeddedBatch:
    """Documents with their vectors and sources, and the bad records met on the way."""

    documents: list[Document] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class TooManyErrors(Exception):
    """More bad records than --max-errors allows; the job stops."""


class ErrorBudget:
    """Counts bad records, reporting each, and stops the job once there are more than allowed."""

    def __init__(self, max_errors: int, report: Callable[[str], None]) -> None:
        self.max_errors = max_errors
        self.count = 0
        self._report = report

    def add(self, message: str) -> None:
        self.count += 1
        self._report(message)
        if self.count > self.max_errors:
            raise TooManyErrors(f"more than {self.max_errors} bad records (--max-errors): stopped")


# ---------------------------------------------------------------------------------------------
# The pipeline


def _rows(items: Sequence[Any]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in ROW_SCHEMA.names}
    for item in items:
        if isinstance(item, InputError):
            values = ["", "", "{}", None, "", str(item)]
        else:
            values = [item.id, item.text, json.dumps(item.metadata), item.vector, item.where, ""]
        for name, value in zip(ROW_SCHEMA.names, values, strict=True):
            columns[name].append(value)
    return pa.table(columns, schema=ROW_SCHEMA)


def read_files(batch: dict[str, np.ndarray], options: ReadOptions) -> Iterator[pa.Table]:
    """A read task: the records of its files, READ_BATCH_ROWS at a time, bad ones as error rows."""
    for path in batch["path"]:
        pending: list[Any] = []
        for item in read_records(Path(path), options):
            pending.append(item)
            if len(pending) == READ_BATCH_ROWS:
                yield _rows(pending)
                pending = []
        if pending:
            yield _rows(pending)


class EncoderActor:
    """One encoder of the pool: the project's Encoder, embedding the rows that have no vector."""

    def __init__(self, options: EncoderOptions, normalize: bool) -> None:
        from service.embedding.encoder import Encoder

        self._encoder = Encoder(
            options.model_name_or_path, options.device, backend=options.backend, cache_dir=options.cache_dir
        )
        self._normalize = normalize

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = list(batch.column("vector").to_numpy(zero_copy_only=False))
        errors = batch.column("error").to_pylist()
        texts = batch.column("text").to_pylist()
        to_embed = [row for row, vector in enumerate(vectors) if vector is None and not errors[row]]
        if to_embed:
            embedded = self._encoder.encode([texts[row] for row in to_embed], normalize=self._normalize)
            for row, vector in zip(to_embed, embedded, strict=True):
                vectors[row] = vector
        position = batch.schema.get_field_index("vector")
        return batch.set_column(position, "vector", pa.array(vectors, type=pa.list_(pa.float32())))


def embedded_batches(
    inputs: Sequence[Path],
    read_options: ReadOptions,
    encoder: EncoderOptions,
    pool: PoolOptions,
    normalize: bool,
) -> Iterator[EmbeddedBatch]:
    """Runs the pipeline on the connected Ray cluster, yielding its output in input order.

    The files are read by tasks on this node (they are this machine's files, as for `vecserve add`);
    the encoder actors run wherever the cluster has room for them.
    """
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the caller shows documents stored, which is what counts
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    files = ray.data.from_items(
        [{"path": str(path.resolve())} for path in inputs], override_num_blocks=len(inputs)
    )
    records = files.map_batches(
        read_files,
        fn_kwargs={"options": read_options},
        batch_size=1,
        batch_format="numpy",
        # Reading is light next to embedding; no CPU is reserved, so the actors cannot starve it.
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=min(len(inputs), READ_TASKS)),
        label_selector={"ray.io/node-id": ray.get_runtime_context().get_node_id()},
    )
    # A file is one block as read; cut into blocks of one batch, the actors share its work, and
    # batches come back (and are stored) as they are done.
    batches = records.repartition(target_num_rows_per_block=pool.batch_size)
    embedded = batches.map_batches(
        EncoderActor,
        fn_constructor_kwargs={"options": encoder, "normalize": normalize},
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor or None,
        batch_size=pool.batch_size,
        batch_format="pyarrow",
    )
    for table in embedded.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield _embedded(table)


def _embedded(table: pa.Table) -> EmbeddedBatch:
    batch = EmbeddedBatch()
    columns = {name: table.column(name).to_pylist() for name in ("id", "text", "metadata", "where", "error")}
    vectors = table.column("vector").to_numpy(zero_copy_only=False)
    for row, error in enumerate(columns["error"]):
        if error:
            batch.errors.append(error)
            continue
        batch.documents.append(
            Document(
                id=columns["id"][row],
                text=columns["text"][row],
                metadata=json.loads(columns["metadata"][row]),
                vector=np.asarray(vectors[row], dtype=np.float32),
            )
        )
        batch.wheres.append(columns["where"][row])
    return batch


# ---------------------------------------------------------------------------------------------
# Storing into shards


class ShardWriter:
    """Stores embedded batches into <out>/shard-<k>, each an IndexStore opened here (and locked).

    The index is created on the first batch, when the model's dimension is known, and the manifest
    records both; re-running upserts by id. Documents a shard refuses (a vector of the wrong dimension,
    say) are reported with their file and line, counted against the budget, and the rest stored.
    """

    def __init__(
        self, out_dir: Path, manifest: ClusterManifest, index: IndexRequest, model_name: str
    ) -> None:
        self.out_dir = out_dir
        self.manifest = manifest
        self.index = index
        self.model_name = model_name
        self._created = False
        shards = []
        try:
            for shard in range(manifest.shard_count):
                shards.append(LocalShard(IndexStore(out_dir / shard_name(shard)), shard_name(shard)))
        except BaseException:
            for opened in shards:
                opened.close()
            raise
        self.store = ShardedStore(shards, max_documents_per_request=UPSERT_DOCUMENTS)

    def write(self, batch: EmbeddedBatch, budget: ErrorBudget) -> int:
        """Stores the batch's documents durably; returns how many were stored."""
        if not batch.documents:
            return 0
        if not self._created:
            self._create_index(model_dimension=len(batch.documents[0].vector))  # type: ignore[arg-type]
        stored = 0
        for start in range(0, len(batch.documents), UPSERT_DOCUMENTS):
            stored += self._upsert(
                batch.documents[start : start + UPSERT_DOCUMENTS],
                batch.wheres[start : start + UPSERT_DOCUMENTS],
                budget,
            )
        return stored

    def _create_index(self, model_dimension: int) -> None:
        index = self.index
        manifest = self.manifest.with_model(self.model_name, model_dimension)
        try:
            info = self.store.create_index(
                index.name, index.dimension or model_dimension, index.metric, index.kind, index.params
            )
        except AlreadyExists:
            info = self.store.get_index(index.name)
            spec = info.spec
            if (spec.metric, spec.kind) != (index.metric, index.kind) or (
                index.dimension and index.dimension != spec.dimension
            ):
                raise InvalidSettings(
                    f"index {index.name!r} exists with metric {spec.metric}, kind {spec.kind} and dimension "
                    f"{spec.dimension}: give the same options, or another index name"
                ) from None
        self.manifest = manifest.with_index(info.spec)
        self.manifest.save(self.out_dir)
        self._created = True

    def _upsert(self, documents: list[Document], wheres: list[str], budget: ErrorBudget) -> int:
        while documents:
            try:
                self.store.upsert(self.index.name, documents)
                return len(documents)
            except InvalidArgument as error:
                found = _REJECTED_FIELD.match(error.field or "")
                if found is None:
                    raise
                position = int(found[1])
                budget.add(f"{wheres[position]}: {str(error).removeprefix(found[0]).lstrip('.')}")
                del documents[position], wheres[position]
        return 0

    def close(self) -> None:
        """Closes the shards (each writes its search structure's snapshot)."""
        self.store.close()

"""ShardedStore: IndexStore's methods over N shards, each an IndexStore of its own, wherever it runs.

Writes go to the shard of each document's id (routing.shard_of); index management goes to every
shard, and GetIndex reports the totals; a search goes to every shard at once, each asked for k with
the filter applied inside its own search, and the answers are merged (routing.merge_hits). A shard
that fails to answer fails the whole call with Unavailable naming it: never a partial answer.

The shards are reached through the small `Shard` protocol: `LocalShard` wraps an IndexStore in this
process (batch indexing, tests), service/cluster/remote.py a Ray Serve deployment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from service.cluster.routing import merge_hits, shard_of
from service.common.limits import check_k
from service.common.validation import check_unicode
from service.embedding.protocol import TextEncoder
from service.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TooLarge,
    Unavailable,
    VecserveError,
)
from service.index.filters import Condition
from service.index.model import (
    DEFAULT_KIND,
    Document,
    Hit,
    IndexInfo,
    IndexKind,
    IndexSpec,
    KindParams,
    Metric,
    Query,
    check_count,
    check_ids_only,
    normalize_rows,
    prepare_document,
    sort_queries,
)
from service.index.search_batching import SearchCoalescer
from service.index.store import IndexStore

log = logging.getLogger(__name__)

# Calls a LocalShard runs at once: one request's fan-out plus a few concurrent requests.
LOCAL_SHARD_THREADS = 4


class ShardCall(Protocol):
    def result(self) -> Any:
        """The method's return value; raises its domain error, or Unavailable naming the shard."""
        ...


class Shard(Protocol):
    """One shard: an IndexStore reached in this process or elsewhere."""

    @property
    def name(self) -> str: ...

    def call(self, method: str, *args: Any, **kwargs: Any) -> ShardCall:
        """Starts `IndexStore.<method>(*args, **kwargs)` on the shard without waiting for it."""
        ...

    def close(self) -> None: ...


class LocalShard:
    """A shard in this process: an IndexStore (owned: closed with the shard) and threads to call it."""

    def __init__(self, store: IndexStore, name: str) -> None:
        self.store = store
        self.name = name
        self._threads = ThreadPoolExecutor(LOCAL_SHARD_THREADS, thread_name_prefix=name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._threads.submit(getattr(self.store, method), *args, **kwargs)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self.store.close()


def combined_info(infos: Sequence[IndexInfo]) -> IndexInfo:
    """One index's info over its shards: the counts and sizes summed, trained once every shard is."""
    return IndexInfo(
        spec=infos[0].spec,
        document_count=sum(info.document_count for info in infos),
        trained=all(info.trained for info in infos),
        memory_bytes=sum(info.memory_bytes for info in infos),
        disk_bytes=sum(info.disk_bytes for info in infos),
    )


class ShardedStore:
    """IndexStore's methods over shards; thread-safe. Raises domain errors, never transport ones.

    Text is embedded here, once per call, by `encoder` (the shards get vectors), and the input is
    checked here before any shard is called, so a request is refused whole, with the field paths
    of the request, rather than stored on some shards only.
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        encoder: TextEncoder | None = None,
        *,
        max_documents_per_request: int = 1024,
        max_queries_per_request: int = 1024,
        max_text_characters: int = 100_000,
        max_texts_per_encode: int = 1024,
        search_batching: bool = True,
    ) -> None:
        if not shards:
            raise ValueError("a sharded store needs at least one shard")
        self.shards = list(shards)
        self._encoder = encoder
        self.max_documents_per_request = max_documents_per_request
        self.max_queries_per_request = max_queries_per_request
        self.max_text_characters = max_text_characters
        self.max_texts_per_encode = max_texts_per_encode
        # Concurrent searches sharing index, k, filter and settings share one call per shard: each
        # call through Ray costs milliseconds, far more than merging the queries.
        self._coalescer = SearchCoalescer(max_queries_per_request) if search_batching else None
        # Index settings never change after creation: kept here to check input without a shard call,
        # and forgotten when this store deletes the index or a shard no longer knows it.
        self._specs: dict[str, IndexSpec] = {}
        self._specs_lock = threading.Lock()

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    # -- calling shards --------------------------------------------------------------------------

    def _outcomes(self, calls: dict[int, tuple[str, tuple[Any, ...]]]) -> dict[int, Any]:
        """Starts every call at once and waits for all of them: shard -> its value or domain error.

        Waiting for all, even after a failure, keeps a call from running on after its answer was given.
        """
        started = {shard: self.shards[shard].call(method, *args) for shard, (method, args) in calls.items()}
        outcomes: dict[int, Any] = {}
        for shard, pending in started.items():
            try:
                outcomes[shard] = pending.result()
            except VecserveError as error:
                outcomes[shard] = error
        return outcomes

    def _values(self, calls: dict[int, tuple[str, tuple[Any, ...]]]) -> dict[int, Any]:
        """As _outcomes, raising the first shard's error (a NotFound after the others: it is the least
        telling, when another shard is down)."""
        outcomes = self._outcomes(calls)
        errors = [outcome for outcome in outcomes.values() if isinstance(outcome, VecserveError)]
        if errors:
            raise min(errors, key=lambda error: isinstance(error, NotFound))
        return outcomes

    def _on_every_shard(self, method: str, *args: Any) -> list[Any]:
        outcomes = self._values({shard: (method, args) for shard in range(self.shard_count)})
        return [outcomes[shard] for shard in range(self.shard_count)]

    def _spec(self, name: str) -> IndexSpec:
        """The index's settings, from the first shard that answers."""
        with self._specs_lock:
            spec = self._specs.get(name)
        if spec is not None:
            return spec
        unavailable: Unavailable | None = None
        for shard in self.shards:
            try:
                spec = shard.call("get_index", name).result().spec
            except Unavailable as error:
                unavailable = unavailable or error
                continue
            with self._specs_lock:
                self._specs[name] = spec
            return spec
        assert unavailable is not None
        raise unavailable

    def _forget(self, name: str) -> None:
        with self._specs_lock:
            self._specs.pop(name, None)

    def _forgetting_on_not_found(self, name: str, run: Callable[[], Any]) -> Any:
        try:
            return run()
        except NotFound:
            self._forget(name)  # deleted (and perhaps created again with other settings) meanwhile
            raise

    # -- index management ------------------------------------------------------------------------

    def create_index(
        self,
        name: str,
        dimension: int = 0,
        metric: Metric = Metric.COSINE,
        kind: IndexKind = DEFAULT_KIND,
        params: KindParams | None = None,
    ) -> IndexInfo:
        """Creates the index on every shard. A shard that already has it with the same settings counts
        as created, so calling again after a partial failure (a shard was down) completes it."""
        if dimension == 0:
            if self._encoder is None:
                raise InvalidArgument("dimension is required: there is no model to take it from", "dimension")
            dimension = self._encoder.dimension
        self._forget(name)
        outcomes = self._outcomes(
            {
                shard: ("create_index", (name, dimension, metric, kind, params))
                for shard in range(self.shard_count)
            }
        )
        failures = [
            outcome
            for outcome in outcomes.values()
            if isinstance(outcome, VecserveError) and not isinstance(outcome, AlreadyExists)
        ]
        if failures:
            raise failures[0]
        existed = [shard for shard, outcome in outcomes.items() if isinstance(outcome, AlreadyExists)]
        if len(existed) == self.shard_count:
            raise outcomes[0]
        if existed:
            created_spec = next(info.spec for info in outcomes.values() if isinstance(info, IndexInfo))
            for shard in existed:
                found = self.shards[shard].call("get_index", name).result()
                if found.spec != created_spec:
                    raise FailedPrecondition(
                        f"index {name!r} exists on {self.shards[shard].name} with other settings than "
                        "on the other shards: delete it and create it again"
                    )
                outcomes[shard] = found
            log.info("index %s: completed on %s", name, ", ".join(self.shards[s].name for s in existed))
        return combined_info([outcomes[shard] for shard in range(self.shard_count)])

    def get_index(self, name: str) -> IndexInfo:
        outcomes = self._outcomes({shard: ("get_index", (name,)) for shard in range(self.shard_count)})
        return combined_info(self._on_all_or_none(name, outcomes))

    def _on_all_or_none(self, name: str, outcomes: dict[int, Any]) -> list[IndexInfo]:
        """The shards' infos of an index every shard has; NotFound when none has it."""
        missing = [shard for shard, outcome in outcomes.items() if isinstance(outcome, NotFound)]
        failures = [
            o for o in outcomes.values() if isinstance(o, VecserveError) and not isinstance(o, NotFound)
        ]
        if failures:
            raise failures[0]
        if len(missing) == self.shard_count:
            self._forget(name)
            raise outcomes[0]
        if missing:
            raise self._partial(name, missing)
        return [outcomes[shard] for shard in range(self.shard_count)]

    def _partial(self, name: str, missing: Sequence[int]) -> FailedPrecondition:
        where = ", ".join(self.shards[shard].name for shard in missing)
        return FailedPrecondition(
            f"index {name!r} is missing on {where} (a create or delete did not reach every shard): "
            "create it again to complete it, or delete it"
        )

    def list_indexes(self, page_size: int = 0, page_token: str = "") -> tuple[list[IndexInfo], str]:
        """One page of indexes in name order (the shards' pages, which list the same names)."""
        pages = self._on_every_shard("list_indexes", page_size, page_token)
        by_shard = [{info.name: info for info in infos} for infos, _ in pages]
        names = sorted(set().union(*by_shard))
        for name in names:
            missing = [shard for shard, infos in enumerate(by_shard) if name not in infos]
            if missing:
                raise self._partial(name, missing)
        infos = [combined_info([infos[name] for infos in by_shard]) for name in names]
        return infos, pages[0][1]

    def delete_index(self, name: str) -> None:
        """Deletes the index from every shard; shards that lack it already are skipped, so calling
        again after a partial failure completes the delete."""
        self._forget(name)
        outcomes = self._outcomes({shard: ("delete_index", (name,)) for shard in range(self.shard_count)})
        failures = [
            o for o in outcomes.values() if isinstance(o, VecserveError) and not isinstance(o, NotFound)
        ]
        if failures:
            raise failures[0]
        if all(isinstance(outcome, NotFound) for outcome in outcomes.values()):
            raise outcomes[0]

    def dimension(self, name: str) -> int:
        return self._spec(name).dimension

    def metric(self, name: str) -> Metric:
        return self._spec(name).metric

    # -- documents -------------------------------------------------------------------------------

    def upsert(self, name: str, documents: Sequence[Document]) -> list[str]:
        """Inserts or replaces documents, each on the shard of its id; returns their ids (assigned ones
        included) in request order once every shard has stored its part durably."""
        check_count(len(documents), self.max_documents_per_request, "documents")
        spec = self._spec(name)
        # Checked as its shard will check it, and sent with the id it will be stored under.
        checked = (
            prepare_document(spec, document, position, self.max_text_characters)
            for position, document in enumerate(documents)
        )
        prepared = [Document(item.id, item.text, item.metadata, item.vector) for item in checked]
        prepared = self._with_vectors(spec, prepared)
        parts: dict[int, list[Document]] = {}
        for document in prepared:
            parts.setdefault(shard_of(document.id, self.shard_count), []).append(document)
        self._forgetting_on_not_found(
            name, lambda: self._values({shard: ("upsert", (name, part)) for shard, part in parts.items()})
        )
        return [document.id for document in prepared]

    def get_document(self, name: str, document_id: str) -> Document:
        check_unicode(document_id, "id")
        shard = self.shards[shard_of(document_id, self.shard_count)]
        return shard.call("get_document", name, document_id).result()

    def delete_documents(self, name: str, ids: Sequence[str]) -> int:
        """Deletes documents by id (unknown ids are ignored); returns how many existed."""
        check_count(len(ids), self.max_documents_per_request, "ids")
        parts: dict[int, list[str]] = {}
        for position, document_id in enumerate(ids):
            check_unicode(document_id, f"ids[{position}]")
            parts.setdefault(shard_of(document_id, self.shard_count), []).append(document_id)
        counts = self._forgetting_on_not_found(
            name,
            lambda: self._values(
                {shard: ("delete_documents", (name, part)) for shard, part in parts.items()}
            ),
        )
        return sum(counts.values())

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
        """The k closest documents passing every condition, per query, best first, over all shards.

        Texts are embedded here once; a query by document id searches with that document's vector,
        and the shard holding it leaves it out of the hits, as one index does. Every query is checked
        here, so that concurrent searches of the same index, k, filter and settings can share one
        call per shard (search batching) without one caller's mistake failing the others.
        """
        k = check_k(k)
        check_ids_only(ids_only, include_vectors)
        check_count(len(queries), self.max_queries_per_request, "queries")
        spec = self._spec(name)
        checked = sort_queries(spec, queries, self.max_text_characters)
        rows, by_document = checked.vectors, checked.by_document
        if checked.given_vectors and spec.metric is Metric.COSINE:
            # The shards normalize; this only refuses zero vectors, naming the query.
            positions = checked.given_vectors
            normalize_rows(rows[positions], [f"queries[{position}].vector" for position in positions])
        if checked.texts:
            rows[list(checked.texts)] = self._embed(spec, list(checked.texts.values()), "queries")
        for position, vector in self._document_vectors(name, by_document).items():
            rows[position] = vector
        excluded = [by_document.get(position) for position in range(len(queries))]

        def fan_out(batch: np.ndarray, batch_excluded: list[str | None]) -> list[list[Hit]]:
            return self._fan_out(
                name,
                spec.metric,
                batch,
                batch_excluded,
                k,
                conditions,
                include_vectors,
                ef_search,
                nprobe,
                ids_only,
            )

        if self._coalescer is None or include_vectors:
            # Answers with vectors are sized per request: batched, they could pass the size limit.
            return fan_out(rows, excluded)
        key = (name, k, repr(conditions), ef_search, nprobe, ids_only)
        try:
            return self._coalescer.search(key, rows, excluded, fan_out)  # type: ignore[arg-type]
        except TooLarge:
            return fan_out(rows, excluded)  # the batch's answer was too large, perhaps not this one's

    def _fan_out(
        self,
        name: str,
        metric: Metric,
        rows: np.ndarray,
        excluded: list[str | None],
        k: int,
        conditions: Sequence[Condition],
        include_vectors: bool,
        ef_search: int | None,
        nprobe: int | None,
        ids_only: bool,
    ) -> list[list[Hit]]:
        """One search call per shard, all at once, and the merge. A row searching with a document's
        vector goes to the shard holding it as that document's id, so that it leaves it out."""

        def shard_queries(shard: int) -> list[Query]:
            return [
                Query(document_id=document_id)
                if document_id is not None and shard_of(document_id, self.shard_count) == shard
                else Query(vector=row)
                for row, document_id in zip(rows, excluded, strict=True)
            ]

        settings = (k, conditions, include_vectors, ef_search, nprobe, ids_only)
        answers = self._forgetting_on_not_found(
            name,
            lambda: self._values(
                {
                    shard: ("search", (name, shard_queries(shard), *settings))
                    for shard in range(self.shard_count)
                }
            ),
        )
        return [
            merge_hits([answers[shard][row] for shard in range(self.shard_count)], k, metric)
            for row in range(len(rows))
        ]

    def _document_vectors(self, name: str, by_document: dict[int, str]) -> dict[int, np.ndarray]:
        """The stored vectors of the documents queried by id, each from its shard."""
        started = {
            position: self.shards[shard_of(document_id, self.shard_count)].call(
                "get_document", name, document_id
            )
            for position, document_id in by_document.items()
        }
        vectors: dict[int, np.ndarray] = {}
        for position, pending in started.items():
            try:
                vectors[position] = pending.result().vector
            except NotFound:
                document_id = by_document[position]
                if self._exists(name):
                    raise NotFound(
                        f"queries[{position}].document_id: index {name!r} has no document {document_id!r}"
                    ) from None
                raise
        return vectors

    def _exists(self, name: str) -> bool:
        try:
            self.shards[0].call("get_index", name).result()
        except NotFound:
            self._forget(name)
            return False
        return True

    def generation(self, name: str) -> tuple[Any, ...]:
        """Changes whenever the index's documents may have changed on any shard."""
        return tuple(self._on_every_shard("generation", name))

    def texts_and_vectors(self, name: str) -> tuple[list[str], np.ndarray]:
        """Every document that has text, shard by shard (in insertion order within each)."""
        answers = self._on_every_shard("texts_and_vectors", name)
        texts = [text for shard_texts, _ in answers for text in shard_texts]
        return texts, np.concatenate([vectors for _, vectors in answers])

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def _with_vectors(self, spec: IndexSpec, documents: list[Document]) -> list[Document]:
        """The documents without vectors embedded; for cosine, zero vectors refused with their field."""
        to_embed = [position for position, document in enumerate(documents) if document.vector is None]
        if to_embed:
            embedded = self._embed(spec, [documents[position].text for position in to_embed], "documents")
            for position, vector in zip(to_embed, embedded, strict=True):
                document = documents[position]
                documents[position] = Document(document.id, document.text, document.metadata, vector)
        if spec.metric is Metric.COSINE:
            # The shards normalize; this only refuses zero vectors before any shard stores anything.
            normalize_rows(
                np.stack([document.vector for document in documents]),  # type: ignore[misc]
                [f"documents[{position}].vector" for position in range(len(documents))],
            )
        return documents

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

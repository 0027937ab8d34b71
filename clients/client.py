"""A typed Python client over the generated vecserve.v1 stubs, with a deadline on every call."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vecserve.packed_floats import packed_floats_header
from vecserve.v1 import (
    analogy_pb2,
    analogy_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    index_pb2,
    index_pb2_grpc,
)

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT_SECONDS = 60.0
_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# The repeated float fields that vectors travel in, written from their packed bytes.
VECTOR_VALUES_FIELD = index_pb2.Vector.DESCRIPTOR.fields_by_name["values"].number
DOCUMENT_VECTOR_FIELD = index_pb2.Document.DESCRIPTOR.fields_by_name["vector"].number


class VecserveClient:
    """Talks to one vecserve server. Use as a context manager, or call close().

    Every call takes an optional `timeout` (seconds) that overrides the client's default deadline;
    failures raise grpc.RpcError with the server's status code and message.

    `token` is sent as `authorization: Bearer <token>` with every call. The connection uses TLS
    when `tls` is set or a certificate file is given: `ca_file` holds the CA certificates that
    signed the server's certificate (default: the system's), `client_cert` and `client_key` a
    client certificate for servers that require one (mutual TLS).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        *,
        token: str | None = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ]
        if tls or ca_file or client_cert or client_key:
            credentials = tls_credentials(ca_file, client_cert, client_key)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        channel = self._channel
        if token:
            channel = grpc.intercept_channel(channel, _BearerToken(token))
        self.embedding = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        self.indexes = index_pb2_grpc.IndexServiceStub(channel)
        self.analogies = analogy_pb2_grpc.AnalogyServiceStub(channel)
        self.health_checks = health_pb2_grpc.HealthStub(channel)

    def __enter__(self) -> VecserveClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Blocks until the channel connects, or raises grpc.FutureTimeoutError."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The standard grpc.health.v1 status of `service` ("" asks about the whole server): "SERVING",
        or "NOT_SERVING" while the server shuts down. An unknown service raises NOT_FOUND."""
        response = self.health_checks.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self._deadline(timeout)
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    # EmbeddingService

    def embed(
        self,
        texts: Sequence[str],
        normalize: bool = True,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> embedding_pb2.EmbedResponse:
        request = embedding_pb2.EmbedRequest(texts=list(texts), normalize=normalize, truncate=truncate)
        return self.embedding.Embed(request, timeout=self._deadline(timeout))

    def embed_array(
        self, texts: Sequence[str], normalize: bool = True, timeout: float | None = None
    ) -> np.ndarray:
        """Embeddings as a (len(texts), dimension) float32 array."""
        response = self.embed(texts, normalize=normalize, timeout=timeout)
        return np.array([e.values for e in response.embeddings], dtype=np.float32).reshape(
            len(response.embeddings), response.dimension
        )

    def tokenize(
        self, texts: Sequence[str], add_special_tokens: bool = True, timeout: float | None = None
    ) -> embedding_pb2.TokenizeResponse:
        request = embedding_pb2.TokenizeRequest(texts=list(texts), add_special_tokens=add_special_tokens)
        return self.embedding.Tokenize(request, timeout=self._deadline(timeout))

    def compare(self, left: Iterable[str], right: Iterable[str], timeout: float | None = None) -> np.ndarray:
        """Cosine similarity matrix, one row per left text."""
        request = embedding_pb2.CompareTextsRequest(left_texts=list(left), right_texts=list(right))
        response = self.embedding.CompareTexts(request, timeout=self._deadline(timeout))
        return np.array([list(row.scores) for row in response.rows], dtype=np.float32)

    def model_info(self, timeout: float | None = None) -> embedding_pb2.GetModelInfoResponse:
        return self.embedding.GetModelInfo(
            embedding_pb2.GetModelInfoRequest(), timeout=self._deadline(timeout)
        )

    # IndexService

    def create_index(
        self,
        name: str,
        *,
        dimension: int = 0,
        metric: str | int = 0,
        kind: str | int = 0,
        params: IndexParams | None = None,
        timeout: float | None = None,
    ) -> index_pb2.Index:
        """Creates an index. metric: "cosine", "inner_product" or "l2"; kind: "flat", "hnsw",
        "ivf_flat", "ivf_pq" or "sq8" (or the enum numbers); 0/omitted means the server default."""
        request = index_pb2.CreateIndexRequest(
            name=name,
            dimension=dimension,
            metric=_enum_number(index_pb2.Metric, "METRIC_", metric),
            kind=_enum_number(index_pb2.IndexKind, "INDEX_KIND_", kind),
        )
        if params is not None:
            getattr(request, _PARAMS_FIELDS[type(params)]).CopyFrom(params)
        return self.indexes.CreateIndex(request, timeout=self._deadline(timeout)).index

    def get_index(self, name: str, timeout: float | None = None) -> index_pb2.Index:
        request = index_pb2.GetIndexRequest(index_name=name)
        return self.indexes.GetIndex(request, timeout=self._deadline(timeout)).index

    def list_indexes(
        self, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> index_pb2.ListIndexesResponse:
        """One page; see all_indexes() for every index."""
        request = index_pb2.ListIndexesRequest(page_size=page_size, page_token=page_token)
        return self.indexes.ListIndexes(request, timeout=self._deadline(timeout))

    def all_indexes(self, timeout: float | None = None) -> list[index_pb2.Index]:
        indexes: list[index_pb2.Index] = []
        token = ""
        while True:
            page = self.list_indexes(page_token=token, timeout=timeout)
            indexes.extend(page.indexes)
            token = page.next_page_token
            if not token:
                return indexes

    def delete_index(self, name: str, timeout: float | None = None) -> None:
        request = index_pb2.DeleteIndexRequest(index_name=name)
        self.indexes.DeleteIndex(request, timeout=self._deadline(timeout))

    def upsert(
        self,
        index_name: str,
        documents: Iterable[index_pb2.Document | Mapping[str, Any]],
        timeout: float | None = None,
    ) -> list[str]:
        """Inserts or replaces documents (dicts as for make_document); returns their ids once durable."""
        request = index_pb2.UpsertDocumentsRequest(
            index_name=index_name, documents=[_as_document(d) for d in documents]
        )
        return list(self.indexes.UpsertDocuments(request, timeout=self._deadline(timeout)).ids)

    def stream_upsert(
        self,
        index_name: str,
        batches: Iterable[Sequence[index_pb2.Document | Mapping[str, Any]]],
        timeout: float | None = None,
    ) -> index_pb2.StreamUpsertDocumentsResponse:
        """Streams batches (one message each); every batch is durable as the server receives it.

        The timeout covers the whole stream; None means no deadline.
        """
        messages = (
            index_pb2.StreamUpsertDocumentsRequest(
                index_name=index_name, documents=[_as_document(d) for d in batch]
            )
            for batch in batches
        )
        return self.indexes.StreamUpsertDocuments(messages, timeout=timeout)

    def get_document(
        self, index_name: str, document_id: str, timeout: float | None = None
    ) -> index_pb2.Document:
        request = index_pb2.GetDocumentRequest(index_name=index_name, id=document_id)
        return self.indexes.GetDocument(request, timeout=self._deadline(timeout)).document

    def delete_documents(self, index_name: str, ids: Sequence[str], timeout: float | None = None) -> int:
        """Deletes documents by id; returns how many existed."""
        request = index_pb2.DeleteDocumentsRequest(index_name=index_name, ids=list(ids))
        return self.indexes.DeleteDocuments(request, timeout=self._deadline(timeout)).deleted_count

    def search(
        self,
        index_name: str,
        queries: Sequence[str | Sequence[float] | np.ndarray | index_pb2.Query],
        k: int = 10,
        filter: Mapping[str, Any] | index_pb2.Filter | None = None,
        include_vectors: bool = False,
        timeout: float | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
        *,
        ids_only: bool = False,
    ) -> list[list[index_pb2.SearchHit]]:
        """Hits per query, best first. A str query is text, a float sequence a vector; pass
        index_pb2.Query(document_id=...) to search with a stored document. See build_filter.
        ef_search (hnsw) and nprobe (ivf_flat, ivf_pq) override the index's setting for this call.
        ids_only: hits carry ids and scores alone (no text or metadata is looked up or sent), which
        makes large batched searches cheaper."""
        if isinstance(filter, Mapping):
            filter = build_filter(filter)
        request = index_pb2.SearchRequest(
            index_name=index_name,
            queries=[_as_query(q) for q in queries],
            k=k,
            filter=filter,
            include_vectors=include_vectors,
            ef_search=ef_search,
            nprobe=nprobe,
            ids_only=ids_only,
        )
        response = self.indexes.Search(request, timeout=self._deadline(timeout))
        return [list(result.hits) for result in response.results]

    # AnalogyService

    def solve_analogy(
        self,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        method: str | int = "cosmul",
        k: int = 10,
        vocabulary_index: str = "",
        timeout: float | None = None,
        space: str = "",
    ) -> list[analogy_pb2.ScoredWord]:
        """Vocabulary words near the positives and far from the negatives, best first.
        For a:b :: c:?, positive=[b, c] and negative=[a]. method: "cosmul" or "cosadd". space: an
        index of word vectors to answer in (see import_word_vectors) instead of the model's space."""
        request = analogy_pb2.SolveAnalogyRequest(
            positive=list(positive),
            negative=list(negative),
            method=_method_number(method),
            k=k,
            index_name=vocabulary_index,
            space=space,
        )
        return list(self.analogies.SolveAnalogy(request, timeout=self._deadline(timeout)).answers)

    def compare_relations(
        self,
        reference: tuple[str, str],
        candidates: Sequence[tuple[str, str]],
        timeout: float | None = None,
        method: str | int = "cosmul",
        vocabulary_index: str = "",
        space: str = "",
    ) -> analogy_pb2.CompareRelationsResponse:
        """How alike each candidate relation (c, d) is to the reference relation (a, b): offset and
        pair similarities, the offset's percentile among random vocabulary pairs, and d's rank among
        the answers to a:b :: c:? (with `method`)."""
        request = analogy_pb2.CompareRelationsRequest(
            reference=analogy_pb2.WordPair(first=reference[0], second=reference[1]),
            candidates=[analogy_pb2.WordPair(first=first, second=second) for first, second in candidates],
            method=_method_number(method),
            index_name=vocabulary_index,
            space=space,
        )
        return self.analogies.CompareRelations(request, timeout=self._deadline(timeout))

    def find_related_pairs(
        self,
        reference: tuple[str, str],
        k: int = 10,
        *,
        first_words: Sequence[str] = (),
        first_word_count: int = 0,
        neighbour_count: int = 0,
        vocabulary_index: str = "",
        space: str = "",
        timeout: float | None = None,
    ) -> analogy_pb2.FindRelatedPairsResponse:
        """The k vocabulary pairs (c, d) whose offset d - c is most like reference's, c among
        first_words or the vocabulary's first first_word_count words (server default 1,000), d among
        c's neighbour_count nearest words (server default 50)."""
        request = analogy_pb2.FindRelatedPairsRequest(
            reference=analogy_pb2.WordPair(first=reference[0], second=reference[1]),
            k=k,
            first_words=list(first_words),
            first_word_count=first_word_count,
            neighbour_count=neighbour_count,
            index_name=vocabulary_index,
            space=space,
        )
        return self.analogies.FindRelatedPairs(request, timeout=self._deadline(timeout))

    def find_similar_words(
        self,
        queries: Sequence[str],
        k: int = 10,
        vocabulary_index: str = "",
        timeout: float | None = None,
        space: str = "",
    ) -> list[list[analogy_pb2.ScoredWord]]:
        """For each word or phrase, the nearest vocabulary words, closest first."""
        request = analogy_pb2.FindSimilarWordsRequest(
            queries=list(queries), k=k, index_name=vocabulary_index, space=space
        )
        response = self.analogies.FindSimilarWords(request, timeout=self._deadline(timeout))
        return [list(result.words) for result in response.results]

    def get_vocabulary(
        self,
        words: Sequence[str] = (),
        vocabulary_index: str = "",
        timeout: float | None = None,
        space: str = "",
    ) -> analogy_pb2.GetVocabularyResponse:
        """The vocabulary's size and, per word, whether it holds it (only those can be answers)."""
        request = analogy_pb2.GetVocabularyRequest(
            words=list(words), index_name=vocabulary_index, space=space
        )
        return self.analogies.GetVocabulary(request, timeout=self._deadline(timeout))

    def word_vectors(
        self, words: Sequence[str], vocabulary_index: str = "", space: str = "", timeout: float | None = None
    ) -> np.ndarray:
        """(len(words), dimension) vectors of words in a vocabulary's space: the vectors its analogies
        and relations are computed from (embedded by the model, or looked up in a space)."""
        request = analogy_pb2.GetVocabularyRequest(
            words=list(words), index_name=vocabulary_index, space=space, include_vectors=True
        )
        response = self.analogies.GetVocabulary(request, timeout=self._deadline(timeout))
        return np.array([list(vector.values) for vector in response.vectors], dtype=np.float32)

    def import_word_vectors(
        self,
        name: str,
        words: Sequence[str],
        vectors: np.ndarray,
        batch_size: int = 0,
        progress: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> int:
        """Creates index `name` holding one document per word (id and text the word, its vector as
        given: an inner-product index keeps vectors unchanged), for use as a `space`; returns the count.

        The index is created only when the upload starts and deleted again if the upload fails, so a
        failed import leaves no index behind. `progress` is called with the words stored so far.
        batch_size 0: as many as the server's message limits allow, at most 256 per message.
        """
        if len(words) != len(vectors) or not len(words):
            raise ValueError(
                f"{len(words)} words and {len(vectors)} vectors: give one vector per word, and some"
            )
        dimension = int(vectors.shape[1])
        info = self.model_info(timeout=timeout)
        # About 5 bytes per float on the wire, plus the word twice (id and text).
        per_document = 5 * dimension + 2 * max(len(word.encode()) for word in words) + 32
        fitting = max(1, info.max_message_bytes // 2 // per_document) if info.max_message_bytes else 256
        limit = min(fitting, info.max_documents_per_request or 256)
        batch_size = min(batch_size or 256, limit)
        self.create_index(name, dimension=dimension, metric="inner_product", kind="flat", timeout=timeout)

        def batches() -> Iterator[list[index_pb2.Document]]:
            for start in range(0, len(words), batch_size):
                chunk = zip(
                    words[start : start + batch_size], vectors[start : start + batch_size], strict=True
                )
                yield [make_document(id=word, text=word, vector=vector) for word, vector in chunk]
                if progress is not None:
                    progress(min(start + batch_size, len(words)))

        try:
            stored = self.stream_upsert(name, batches(), timeout=None).upserted_count
        except BaseException:
            self.delete_index(name, timeout=timeout)
            raise
        return int(stored)


def tls_credentials(
    ca_file: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """Channel credentials from PEM files (a CA file None trusts the system's CA certificates)."""
    if (client_cert is None) != (client_key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file else None,
        private_key=Path(client_key).read_bytes() if client_key else None,
        certificate_chain=Path(client_cert).read_bytes() if client_cert else None,
    )


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"]
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to the metadata of every call."""

    def __init__(self, token: str) -> None:
        token = token.strip()
        if not token.isascii() or not token.isprintable() or " " in token:
            raise ValueError("a token is printable ASCII without spaces")
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._entry],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def _intercept(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    intercept_unary_unary = _intercept
    intercept_unary_stream = _intercept
    intercept_stream_unary = _intercept
    intercept_stream_stream = _intercept


IndexParams = index_pb2.HnswParams | index_pb2.IvfParams | index_pb2.IvfPqParams | index_pb2.Sq8Params
_PARAMS_FIELDS: dict[type, str] = {
    index_pb2.HnswParams: "hnsw",
    index_pb2.IvfParams: "ivf_flat",
    index_pb2.IvfPqParams: "ivf_pq",
    index_pb2.Sq8Params: "sq8",
}
_RANGE_BOUNDS = ("gt", "gte", "lt", "lte")


def _method_number(method: str | int) -> int:
    return _enum_number(analogy_pb2.AnalogyMethod, "ANALOGY_METHOD_", method)


def _enum_number(enum: Any, prefix: str, value: str | int) -> int:
    if isinstance(value, int):
        return value
    try:
        return enum.Value(prefix + value.upper())
    except ValueError:
        names = ", ".join(name.removeprefix(prefix).lower() for name in enum.keys()[1:])
        raise ValueError(f"unknown {prefix.rstrip('_').lower()} {value!r}: use one of {names}") from None


def metadata_value(value: str | float | bool) -> index_pb2.MetadataValue:
    if isinstance(value, bool):
        return index_pb2.MetadataValue(bool_value=value)
    if isinstance(value, str):
        return index_pb2.MetadataValue(string_value=value)
    return index_pb2.MetadataValue(number_value=float(value))


def python_value(value: index_pb2.MetadataValue) -> str | float | bool | None:
    """The Python value of a MetadataValue (None when unset)."""
    which = value.WhichOneof("kind")
    return getattr(value, which) if which else None


def make_document(
    id: str = "",
    text: str = "",
    metadata: Mapping[str, str | float | bool] | None = None,
    vector: Sequence[float] | np.ndarray | None = None,
) -> index_pb2.Document:
    """A Document message; an empty id lets the server assign one, no vector lets it embed the text."""
    document = index_pb2.Document(
        id=id, text=text, metadata={key: metadata_value(value) for key, value in (metadata or {}).items()}
    )
    if vector is not None:
        # Merged in from its packed wire form, as vector_message does for queries.
        document.MergeFromString(_packed_floats(vector, DOCUMENT_VECTOR_FIELD))
    return document


def build_filter(spec: Mapping[str, Any]) -> index_pb2.Filter:
    """A Filter from {key: test}, all ANDed: a scalar tests equality, a list or tuple any_of, and a
    dict of gt/gte/lt/lte bounds a numeric range. Example: {"lang": ["en", "fr"], "year": {"gte": 2000}}."""
    conditions = []
    for key, test in spec.items():
        if isinstance(test, Mapping):
            unknown = set(test) - set(_RANGE_BOUNDS)
            if unknown:
                raise ValueError(f"range bounds must be among {_RANGE_BOUNDS}, got {sorted(unknown)}")
            conditions.append(index_pb2.Condition(key=key, range=index_pb2.NumericRange(**test)))
        elif isinstance(test, list | tuple):
            values = index_pb2.MetadataValueList(values=[metadata_value(v) for v in test])
            conditions.append(index_pb2.Condition(key=key, any_of=values))
        else:
            conditions.append(index_pb2.Condition(key=key, equals=metadata_value(test)))
    return index_pb2.Filter(conditions=conditions)


def _as_document(document: index_pb2.Document | Mapping[str, Any]) -> index_pb2.Document:
    return document if isinstance(document, index_pb2.Document) else make_document(**document)


def _as_query(query: str | Sequence[float] | np.ndarray | index_pb2.Query) -> index_pb2.Query:
    if isinstance(query, index_pb2.Query):
        return query
    if isinstance(query, str):
        return index_pb2.Query(text=query)
    return index_pb2.Query(vector=vector_message(query))


def vector_message(values: Sequence[float] | np.ndarray) -> index_pb2.Vector:
    """A Vector parsed from its packed wire form, the floats' bytes as they are: 6x faster than
    Vector(values=...tolist()), which makes a Python float of each value (100 queries of 384
    dimensions: 0.46 instead of 2.8 ms)."""
    return index_pb2.Vector.FromString(_packed_floats(values, VECTOR_VALUES_FIELD))


def _packed_floats(values: Sequence[float] | np.ndarray, field_number: int) -> bytes:
    """The repeated float field `field_number` holding `values` (rounded to float32), serialized."""
    packed = np.asarray(values, dtype="<f4")
    if packed.ndim != 1:
        raise TypeError(f"a vector must be one list of numbers, not an array of shape {packed.shape}")
    return packed_floats_header(packed.size, field_number) + packed.tobytes()

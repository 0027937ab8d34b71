"""The index store's data types and limits, and the checks of the names, vectors and metadata it is sent."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np

from service.common.validation import check_unicode
from service.errors import InvalidArgument

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_DIMENSION = 8192
# Longest vector of an L2 or inner-product index: its squared distances (at most (2 * 1e18)^2) and
# inner products stay finite in float32, whose largest value is 3.4e38.
MAX_VECTOR_NORM = 1e18
MAX_ID_CHARACTERS = 256
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_CHARACTERS = 128
MAX_METADATA_STRING_CHARACTERS = 4096
# FAISS wants at least this many training vectors per centroid (it warns below); the training
# thresholds of the IVF kinds follow from it.
TRAINING_POINTS_PER_CENTROID = 39
SQ8_TRAINING_THRESHOLD = 1000
# Version of the on-disk formats: the settings record of an index and its snapshot manifest.
FORMAT_VERSION = 1

MetadataScalar = str | float | bool


class Metric(StrEnum):
    COSINE = "cosine"
    INNER_PRODUCT = "inner_product"
    L2 = "l2"


class IndexKind(StrEnum):
    FLAT = "flat"
    HNSW = "hnsw"
    IVF_FLAT = "ivf_flat"
    IVF_PQ = "ivf_pq"
    SQ8 = "sq8"


DEFAULT_KIND = IndexKind.FLAT


# Each kind's parameters know how many stored vectors the kind needs before it trains (0: it does
# not train); everything else a kind does is its strategy's, in kinds.py.


@dataclass(frozen=True)
class HnswParams:
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64

    @property
    def training_threshold(self) -> int:
        return 0


@dataclass(frozen=True)
class IvfParams:
    nlist: int = 1024
    # 0 means min(DEFAULT_NPROBE, nlist) (resolved when the index is created).
    nprobe: int = 0

    @property
    def training_threshold(self) -> int:
        """k-means for the coarse lists."""
        return TRAINING_POINTS_PER_CENTROID * self.nlist


@dataclass(frozen=True)
class IvfPqParams:
    nlist: int = 1024
    # 0 means min(DEFAULT_NPROBE, nlist) (resolved when the index is created).
    nprobe: int = 0
    # Sub-quantizers; 0 means dimension / 8 (resolved when the index is created).
    m: int = 0
    nbits: int = 8

    @property
    def training_threshold(self) -> int:
        """k-means for the coarse lists and for each sub-quantizer's codebook of 2**nbits codes."""
        return TRAINING_POINTS_PER_CENTROID * max(self.nlist, 2**self.nbits)


@dataclass(frozen=True)
class Sq8Params:
    @property
    def training_threshold(self) -> int:
        """Enough vectors for the per-dimension ranges."""
        return SQ8_TRAINING_THRESHOLD


KindParams = HnswParams | IvfParams | IvfPqParams | Sq8Params
PARAMS_OF_KIND: dict[IndexKind, type[KindParams] | None] = {
    IndexKind.FLAT: None,
    IndexKind.HNSW: HnswParams,
    IndexKind.IVF_FLAT: IvfParams,
    IndexKind.IVF_PQ: IvfPqParams,
    IndexKind.SQ8: Sq8Params,
}


@dataclass(frozen=True)
class IndexSpec:
    """What an index is: fixed at creation."""

    name: str
    dimension: int
    metric: Metric
    kind: IndexKind
    params: KindParams | None

    @property
    def training_threshold(self) -> int:
        """Stored vectors needed before a kind that trains trains (0 for kinds that do not).

        ivf_flat: 39 * nlist; ivf_pq: 39 * max(nlist, 2**nbits); sq8: 1000.
        """
        return self.params.training_threshold if self.params is not None else 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "dimension": self.dimension,
                "metric": self.metric.value,
                "kind": self.kind.value,
                "params": asdict(self.params) if self.params is not None else None,
            }
        )

    @staticmethod
    def from_json(name: str, text: str) -> IndexSpec:
        raw = json.loads(text)
        kind = IndexKind(raw["kind"])
        params_type = PARAMS_OF_KIND[kind]
        return IndexSpec(
            name=name,
            dimension=int(raw["dimension"]),
            metric=Metric(raw["metric"]),
            kind=kind,
            params=params_type(**raw["params"]) if params_type is not None else None,
        )


@dataclass(frozen=True)
class IndexInfo:
    spec: IndexSpec
    document_count: int
    trained: bool
    memory_bytes: int
    disk_bytes: int

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Document:
    """A stored document; on upsert, an empty id asks the server for one and vector may be None."""

    id: str = ""
    text: str = ""
    metadata: Mapping[str, MetadataScalar] = field(default_factory=dict)
    vector: np.ndarray | None = None


@dataclass
class PreparedDocument:
    """A document checked for storing; its vector is filled in (embedded, normalized) before it is."""

    id: str
    text: str
    metadata: dict[str, MetadataScalar]
    vector: np.ndarray | None


@dataclass(frozen=True)
class Query:
    """Exactly one of text, vector or document_id."""

    text: str | None = None
    vector: np.ndarray | None = None
    document_id: str | None = None


# Slots and not frozen: a batched search makes thousands of them, and a frozen dataclass sets each
# field through object.__setattr__ (1,000 hits: 1.2-1.6 ms of CPU frozen, 0.4 ms not).
@dataclass(slots=True)
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, MetadataScalar]
    vector: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# Validation


def check_name(name: str, field_name: str = "name") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f"{field_name} {name!r} is not a valid index name: use 1 to 64 letters, digits, '-' or '_'",
            field=field_name,
        )
    return name


def check_vector(
    values: np.ndarray | Sequence[float], dimension: int, metric: Metric, field_name: str
) -> np.ndarray:
    try:
        vector = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as error:  # strings, ragged nesting, objects
        raise InvalidArgument(f"{field_name} must be a list of numbers ({error})", field=field_name) from None
    if vector.ndim != 1 or vector.shape[0] != dimension:
        raise InvalidArgument(
            f"{field_name} has {vector.size} values but the index has dimension {dimension}",
            field=field_name,
        )
    if not np.isfinite(vector).all():
        raise InvalidArgument(
            f"{field_name} contains NaN or infinite values (or values beyond float32's range, ±3.4e38)",
            field=field_name,
        )
    if metric is not Metric.COSINE:
        norm = float(np.linalg.norm(vector.astype(np.float64)))
        if norm > MAX_VECTOR_NORM:
            raise InvalidArgument(
                f"{field_name} has length {norm:.3g}, more than the limit of {MAX_VECTOR_NORM:.0e} for "
                f"{metric.value} indexes: its scores would overflow float32; scale the vectors down",
                field=field_name,
            )
    return vector


def plain_query_vector(values: object, dimension: int, metric: Metric) -> np.ndarray | None:
    """One query's vector as a (1, dimension) float32 matrix when it passes check_vector, normalized
    for cosine to the same bits as normalize_rows (the same float64 sum, in the same order); None for
    anything else, which the general checks then report.

    One vector through check_vector and normalize_rows costs about 20 us of numpy calls; this about 5.
    """
    try:
        vector = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError):
        return None
    if vector.shape != (dimension,):
        return None
    wide = vector.astype(np.float64)
    # NaN or infinity in any value makes the sum so; squares of float32 values never overflow float64.
    squared = float(np.add.reduce(wide * wide))
    if not math.isfinite(squared):
        return None
    if metric is Metric.COSINE:
        return None if squared == 0 else (wide / math.sqrt(squared)).astype(np.float32)[None, :]
    # With checked_query_vectors' margin, so that both refuse alike.
    return vector[None, :] if math.sqrt(squared) <= MAX_VECTOR_NORM * 0.999 else None


def checked_query_vectors(spec: IndexSpec, queries: Sequence[Query], positions: list[int]) -> np.ndarray:
    """The vectors of the queries at `positions` as one float32 matrix, checked as check_vector checks
    each (a hundred checks one by one cost about as much as the search of a small index)."""
    try:
        matrix = np.asarray([queries[position].vector for position in positions], dtype=np.float32)
    except (ValueError, TypeError):  # vectors of unequal lengths, or values that are not numbers
        matrix = None
    if (
        matrix is None
        or matrix.shape != (len(positions), spec.dimension)
        or not np.isfinite(matrix).all()
        # With a margin, so that rounding never lets through a vector check_vector would refuse.
        or (
            spec.metric is not Metric.COSINE
            and np.linalg.norm(matrix.astype(np.float64), axis=1).max() > MAX_VECTOR_NORM * 0.999
        )
    ):
        check_vectors_one_by_one(spec, queries, positions)
    return matrix  # type: ignore[return-value] - whenever it is None, the check above raised


def check_vectors_one_by_one(spec: IndexSpec, queries: Sequence[Query], positions: list[int]) -> None:
    """Raises check_vector's error for the first invalid vector among the queries at `positions`."""
    for position in positions:
        check_vector(queries[position].vector, spec.dimension, spec.metric, f"queries[{position}].vector")


def check_ids_only(ids_only: bool, include_vectors: bool) -> None:
    """ids_only answers ids and scores alone, so asking for the vectors as well is a contradiction."""
    if ids_only and include_vectors:
        raise InvalidArgument(
            "ids_only and include_vectors cannot both be set: ids_only answers ids and scores alone",
            "ids_only",
        )


@dataclass(slots=True)
class SortedQueries:
    """A request's queries, checked and sorted by what each searches with."""

    vectors: np.ndarray  # one float32 row per query: given vectors as sent (not normalized), others zero
    given_vectors: list[int]  # positions of the queries by vector
    texts: dict[int, str]  # position -> text to embed
    by_document: dict[int, str]  # position -> id of the document whose vector to search with


def sort_queries(spec: IndexSpec, queries: Sequence[Query], max_text_characters: int) -> SortedQueries:
    """Checks every query (exactly one input each, texts and ids valid, vectors as check_vector checks
    them); the first invalid query is the one reported, even when it is a vector."""
    texts: dict[int, str] = {}
    by_document: dict[int, str] = {}
    given_vectors: list[int] = []
    try:
        for position, query in enumerate(queries):
            if query.vector is not None and query.text is None and query.document_id is None:
                given_vectors.append(position)  # checked below, all at once
                continue
            where = f"queries[{position}]"
            given = [query.text is not None, query.vector is not None, query.document_id is not None]
            if sum(given) != 1:
                raise InvalidArgument(f"{where} needs exactly one of text, vector or document_id", where)
            if query.text is not None:
                check_unicode(query.text, f"{where}.text")
                check_text(query.text, f"{where}.text", True, max_text_characters)
                texts[position] = query.text
            else:
                check_unicode(query.document_id, f"{where}.document_id")  # type: ignore[arg-type]
                by_document[position] = query.document_id  # type: ignore[assignment]
    except InvalidArgument:
        check_vectors_one_by_one(spec, queries, given_vectors)
        raise
    vectors = np.zeros((len(queries), spec.dimension), dtype=np.float32)
    if given_vectors:
        vectors[given_vectors] = checked_query_vectors(spec, queries, given_vectors)
    return SortedQueries(vectors, given_vectors, texts, by_document)


def normalize_rows(vectors: np.ndarray, field_names: Sequence[str]) -> np.ndarray:
    # In float64, a float32 vector's squared length neither overflows (3e38) nor underflows (1e-30).
    wide = vectors.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1)
    for position in np.flatnonzero(norms == 0):
        name = field_names[position]
        raise InvalidArgument(f"{name} is a zero vector, which has no direction for cosine", field=name)
    return np.ascontiguousarray(wide / norms[:, None], dtype=np.float32)


def check_metadata(metadata: Mapping[str, MetadataScalar], field_name: str) -> dict[str, MetadataScalar]:
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidArgument(
            f"{field_name} has {len(metadata)} keys, more than the limit of {MAX_METADATA_KEYS}",
            field=field_name,
        )
    checked: dict[str, MetadataScalar] = {}
    for key, value in metadata.items():
        where = f"{field_name}[{key!r}]"
        if not key or len(key) > MAX_METADATA_KEY_CHARACTERS:
            raise InvalidArgument(
                f"metadata keys must have 1 to {MAX_METADATA_KEY_CHARACTERS} characters; {where} does not",
                field=field_name,
            )
        check_unicode(key, field_name)
        checked[key] = check_metadata_value(value, where)
    return checked


def check_metadata_value(value: object, where: str) -> MetadataScalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{where} is not a finite number", field=where)
        return float(value)
    if isinstance(value, str):
        if len(value) > MAX_METADATA_STRING_CHARACTERS:
            raise InvalidArgument(
                f"{where} has {len(value)} characters, more than {MAX_METADATA_STRING_CHARACTERS}",
                field=where,
            )
        check_unicode(value, where)
        return value
    raise InvalidArgument(f"{where} must be a string, a number or a boolean", field=where)


def check_count(count: int, limit: int, field_name: str) -> None:
    """A request's list (documents, ids, queries) must hold 1 to limit entries."""
    if not 1 <= count <= limit:
        raise InvalidArgument(
            f"{field_name} has {count} entries; send between 1 and {limit} per request", field_name
        )


def check_text(text: str, field_name: str, required: bool, max_characters: int) -> None:
    if len(text) > max_characters:
        raise InvalidArgument(
            f"{field_name} has {len(text)} characters, more than the limit of {max_characters}", field_name
        )
    if required and not text.strip():
        raise InvalidArgument(
            f"{field_name} is empty or only whitespace: there is nothing to embed", field_name
        )


def prepare_document(
    spec: IndexSpec, document: Document, position: int, max_text_characters: int
) -> PreparedDocument:
    """The document checked for storing, with the id it will be stored under (one made when empty)."""
    where = f"documents[{position}]"
    document_id = document.id or uuid.uuid4().hex
    if len(document_id) > MAX_ID_CHARACTERS:
        raise InvalidArgument(f"{where}.id is longer than {MAX_ID_CHARACTERS} characters", f"{where}.id")
    check_unicode(document_id, f"{where}.id")
    check_unicode(document.text, f"{where}.text")
    check_text(document.text, f"{where}.text", document.vector is None, max_text_characters)
    vector = None
    if document.vector is not None:
        vector = check_vector(document.vector, spec.dimension, spec.metric, f"{where}.vector")
    metadata = check_metadata(document.metadata, f"{where}.metadata")
    return PreparedDocument(document_id, document.text, metadata, vector)

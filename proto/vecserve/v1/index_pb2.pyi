from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_COSINE: _ClassVar[Metric]
    METRIC_INNER_PRODUCT: _ClassVar[Metric]
    METRIC_L2: _ClassVar[Metric]

class IndexKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_KIND_UNSPECIFIED: _ClassVar[IndexKind]
    INDEX_KIND_FLAT: _ClassVar[IndexKind]
    INDEX_KIND_HNSW: _ClassVar[IndexKind]
    INDEX_KIND_IVF_FLAT: _ClassVar[IndexKind]
    INDEX_KIND_IVF_PQ: _ClassVar[IndexKind]
    INDEX_KIND_SQ8: _ClassVar[IndexKind]
METRIC_UNSPECIFIED: Metric
METRIC_COSINE: Metric
METRIC_INNER_PRODUCT: Metric
METRIC_L2: Metric
INDEX_KIND_UNSPECIFIED: IndexKind
INDEX_KIND_FLAT: IndexKind
INDEX_KIND_HNSW: IndexKind
INDEX_KIND_IVF_FLAT: IndexKind
INDEX_KIND_IVF_PQ: IndexKind
INDEX_KIND_SQ8: IndexKind

class HnswParams(_message.Message):
    __slots__ = ("m", "ef_construction", "ef_search")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construction: int
    ef_search: int
    def __init__(self, m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ...) -> None: ...

class IvfParams(_message.Message):
    __slots__ = ("nlist", "nprobe")
    NLIST_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    nlist: int
    nprobe: int
    def __init__(self, nlist: _Optional[int] = ..., nprobe: _Optional[int] = ...) -> None: ...

class IvfPqParams(_message.Message):
    __slots__ = ("ivf", "m", "nbits")
    IVF_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    NBITS_FIELD_NUMBER: _ClassVar[int]
    ivf: IvfParams
    m: int
    nbits: int
    def __init__(self, ivf: _Optional[_Union[IvfParams, _Mapping]] = ..., m: _Optional[int] = ..., nbits: _Optional[int] = ...) -> None: ...

class Sq8Params(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Index(_message.Message):
    __slots__ = ("name", "dimension", "metric", "kind", "hnsw", "ivf_flat", "ivf_pq", "sq8", "document_count", "trained", "training_threshold", "memory_bytes", "disk_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    IVF_FLAT_FIELD_NUMBER: _ClassVar[int]
    IVF_PQ_FIELD_NUMBER: _ClassVar[int]
    SQ8_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    TRAINING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dimension: int
    metric: Metric
    kind: IndexKind
    hnsw: HnswParams
    ivf_flat: IvfParams
    ivf_pq: IvfPqParams
    sq8: Sq8Params
    document_count: int
    trained: bool
    training_threshold: int
    memory_bytes: int
    disk_bytes: int
    def __init__(self, name: _Optional[str] = ..., dimension: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., kind: _Optional[_Union[IndexKind, str]] = ..., hnsw: _Optional[_Union[HnswParams, _Mapping]] = ..., ivf_flat: _Optional[_Union[IvfParams, _Mapping]] = ..., ivf_pq: _Optional[_Union[IvfPqParams, _Mapping]] = ..., sq8: _Optional[_Union[Sq8Params, _Mapping]] = ..., document_count: _Optional[int] = ..., trained: _Optional[bool] = ..., training_threshold: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ...) -> None: ...

class CreateIndexRequest(_message.Message):
    __slots__ = ("name", "dimension", "metric", "kind", "hnsw", "ivf_flat", "ivf_pq", "sq8")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    IVF_FLAT_FIELD_NUMBER: _ClassVar[int]
    IVF_PQ_FIELD_NUMBER: _ClassVar[int]
    SQ8_FIELD_NUMBER: _ClassVar[int]
    name: str
    dimension: int
    metric: Metric
    kind: IndexKind
    hnsw: HnswParams
    ivf_flat: IvfParams
    ivf_pq: IvfPqParams
    sq8: Sq8Params
    def __init__(self, name: _Optional[str] = ..., dimension: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., kind: _Optional[_Union[IndexKind, str]] = ..., hnsw: _Optional[_Union[HnswParams, _Mapping]] = ..., ivf_flat: _Optional[_Union[IvfParams, _Mapping]] = ..., ivf_pq: _Optional[_Union[IvfPqParams, _Mapping]] = ..., sq8: _Optional[_Union[Sq8Params, _Mapping]] = ...) -> None: ...

class CreateIndexResponse(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: Index
    def __init__(self, index: _Optional[_Union[Index, _Mapping]] = ...) -> None: ...

class GetIndexRequest(_message.Message):
    __slots__ = ("index_name",)
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    def __init__(self, index_name: _Optional[str] = ...) -> None: ...

class GetIndexResponse(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: Index
    def __init__(self, index: _Optional[_Union[Index, _Mapping]] = ...) -> None: ...

class ListIndexesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListIndexesResponse(_message.Message):
    __slots__ = ("indexes", "next_page_token")
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[Index]
    next_page_token: str
    def __init__(self, indexes: _Optional[_Iterable[_Union[Index, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteIndexRequest(_message.Message):
    __slots__ = ("index_name",)
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    def __init__(self, index_name: _Optional[str] = ...) -> None: ...

class DeleteIndexResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MetadataValue(_message.Message):
    __slots__ = ("string_value", "number_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    number_value: float
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., number_value: _Optional[float] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "metadata", "vector")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata: _containers.MessageMap[str, MetadataValue]
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Mapping[str, MetadataValue]] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class UpsertDocumentsRequest(_message.Message):
    __slots__ = ("index_name", "documents")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, index_name: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class UpsertDocumentsResponse(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamUpsertDocumentsRequest(_message.Message):
    __slots__ = ("index_name", "documents")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, index_name: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class StreamUpsertDocumentsResponse(_message.Message):
    __slots__ = ("upserted_count", "message_count")
    UPSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    upserted_count: int
    message_count: int
    def __init__(self, upserted_count: _Optional[int] = ..., message_count: _Optional[int] = ...) -> None: ...

class GetDocumentRequest(_message.Message):
    __slots__ = ("index_name", "id")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    id: str
    def __init__(self, index_name: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class GetDocumentResponse(_message.Message):
    __slots__ = ("document",)
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    document: Document
    def __init__(self, document: _Optional[_Union[Document, _Mapping]] = ...) -> None: ...

class DeleteDocumentsRequest(_message.Message):
    __slots__ = ("index_name", "ids")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index_name: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteDocumentsResponse(_message.Message):
    __slots__ = ("deleted_count",)
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    def __init__(self, deleted_count: _Optional[int] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("text", "vector", "document_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    vector: Vector
    document_id: str
    def __init__(self, text: _Optional[str] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., document_id: _Optional[str] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class MetadataValueList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[MetadataValue]
    def __init__(self, values: _Optional[_Iterable[_Union[MetadataValue, _Mapping]]] = ...) -> None: ...

class NumericRange(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("key", "equals", "any_of", "range")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EQUALS_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    equals: MetadataValue
    any_of: MetadataValueList
    range: NumericRange
    def __init__(self, key: _Optional[str] = ..., equals: _Optional[_Union[MetadataValue, _Mapping]] = ..., any_of: _Optional[_Union[MetadataValueList, _Mapping]] = ..., range: _Optional[_Union[NumericRange, _Mapping]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("index_name", "queries", "k", "filter", "include_vectors", "ef_search", "nprobe", "ids_only")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    IDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    queries: _containers.RepeatedCompositeFieldContainer[Query]
    k: int
    filter: Filter
    include_vectors: bool
    ef_search: int
    nprobe: int
    ids_only: bool
    def __init__(self, index_name: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[Query, _Mapping]]] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., include_vectors: _Optional[bool] = ..., ef_search: _Optional[int] = ..., nprobe: _Optional[int] = ..., ids_only: _Optional[bool] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("id", "score", "text", "metadata", "vector")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    text: str
    metadata: _containers.MessageMap[str, MetadataValue]
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., metadata: _Optional[_Mapping[str, MetadataValue]] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[QueryResult]
    def __init__(self, results: _Optional[_Iterable[_Union[QueryResult, _Mapping]]] = ...) -> None: ...

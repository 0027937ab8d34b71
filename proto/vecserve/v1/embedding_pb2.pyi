from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "normalize", "truncate")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    truncate: bool
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ..., truncate: _Optional[bool] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "token_count", "truncated")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    token_count: int
    truncated: bool
    def __init__(self, values: _Optional[_Iterable[float]] = ..., token_count: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "dimension")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    dimension: int
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dimension: _Optional[int] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("texts", "add_special_tokens")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    add_special_tokens: bool
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., add_special_tokens: _Optional[bool] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("text", "id", "start", "end", "special")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_FIELD_NUMBER: _ClassVar[int]
    text: str
    id: int
    start: int
    end: int
    special: bool
    def __init__(self, text: _Optional[str] = ..., id: _Optional[int] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., special: _Optional[bool] = ...) -> None: ...

class TokenizedText(_message.Message):
    __slots__ = ("tokens", "exceeds_max_length")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXCEEDS_MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    exceeds_max_length: bool
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ..., exceeds_max_length: _Optional[bool] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TokenizedText]
    def __init__(self, results: _Optional[_Iterable[_Union[TokenizedText, _Mapping]]] = ...) -> None: ...

class CompareTextsRequest(_message.Message):
    __slots__ = ("left_texts", "right_texts")
    LEFT_TEXTS_FIELD_NUMBER: _ClassVar[int]
    RIGHT_TEXTS_FIELD_NUMBER: _ClassVar[int]
    left_texts: _containers.RepeatedScalarFieldContainer[str]
    right_texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, left_texts: _Optional[_Iterable[str]] = ..., right_texts: _Optional[_Iterable[str]] = ...) -> None: ...

class SimilarityRow(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, scores: _Optional[_Iterable[float]] = ...) -> None: ...

class CompareTextsResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[SimilarityRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[SimilarityRow, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_name", "dimension", "max_sequence_length", "vocabulary_size", "device", "dtype", "server_version", "max_texts_per_request", "max_text_characters", "max_message_bytes", "max_documents_per_request", "backend")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    dimension: int
    max_sequence_length: int
    vocabulary_size: int
    device: str
    dtype: str
    server_version: str
    max_texts_per_request: int
    max_text_characters: int
    max_message_bytes: int
    max_documents_per_request: int
    backend: str
    def __init__(self, model_name: _Optional[str] = ..., dimension: _Optional[int] = ..., max_sequence_length: _Optional[int] = ..., vocabulary_size: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., server_version: _Optional[str] = ..., max_texts_per_request: _Optional[int] = ..., max_text_characters: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_documents_per_request: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

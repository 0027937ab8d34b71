from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnalogyMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANALOGY_METHOD_UNSPECIFIED: _ClassVar[AnalogyMethod]
    ANALOGY_METHOD_COSADD: _ClassVar[AnalogyMethod]
    ANALOGY_METHOD_COSMUL: _ClassVar[AnalogyMethod]
ANALOGY_METHOD_UNSPECIFIED: AnalogyMethod
ANALOGY_METHOD_COSADD: AnalogyMethod
ANALOGY_METHOD_COSMUL: AnalogyMethod

class ScoredWord(_message.Message):
    __slots__ = ("word", "score", "ranking_score")
    WORD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANKING_SCORE_FIELD_NUMBER: _ClassVar[int]
    word: str
    score: float
    ranking_score: float
    def __init__(self, word: _Optional[str] = ..., score: _Optional[float] = ..., ranking_score: _Optional[float] = ...) -> None: ...

class SolveAnalogyRequest(_message.Message):
    __slots__ = ("positive", "negative", "method", "k", "index_name", "space")
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    positive: _containers.RepeatedScalarFieldContainer[str]
    negative: _containers.RepeatedScalarFieldContainer[str]
    method: AnalogyMethod
    k: int
    index_name: str
    space: str
    def __init__(self, positive: _Optional[_Iterable[str]] = ..., negative: _Optional[_Iterable[str]] = ..., method: _Optional[_Union[AnalogyMethod, str]] = ..., k: _Optional[int] = ..., index_name: _Optional[str] = ..., space: _Optional[str] = ...) -> None: ...

class SolveAnalogyResponse(_message.Message):
    __slots__ = ("answers", "method")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[ScoredWord]
    method: AnalogyMethod
    def __init__(self, answers: _Optional[_Iterable[_Union[ScoredWord, _Mapping]]] = ..., method: _Optional[_Union[AnalogyMethod, str]] = ...) -> None: ...

class WordPair(_message.Message):
    __slots__ = ("first", "second")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    SECOND_FIELD_NUMBER: _ClassVar[int]
    first: str
    second: str
    def __init__(self, first: _Optional[str] = ..., second: _Optional[str] = ...) -> None: ...

class CompareRelationsRequest(_message.Message):
    __slots__ = ("reference", "candidates", "method", "index_name", "space")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    reference: WordPair
    candidates: _containers.RepeatedCompositeFieldContainer[WordPair]
    method: AnalogyMethod
    index_name: str
    space: str
    def __init__(self, reference: _Optional[_Union[WordPair, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[WordPair, _Mapping]]] = ..., method: _Optional[_Union[AnalogyMethod, str]] = ..., index_name: _Optional[str] = ..., space: _Optional[str] = ...) -> None: ...

class RelationComparison(_message.Message):
    __slots__ = ("candidate", "offset_similarity", "pair_similarity", "offset_percentile", "answer_rank", "answer_in_vocabulary")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PAIR_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_RANK_FIELD_NUMBER: _ClassVar[int]
    ANSWER_IN_VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    candidate: WordPair
    offset_similarity: float
    pair_similarity: float
    offset_percentile: float
    answer_rank: int
    answer_in_vocabulary: bool
    def __init__(self, candidate: _Optional[_Union[WordPair, _Mapping]] = ..., offset_similarity: _Optional[float] = ..., pair_similarity: _Optional[float] = ..., offset_percentile: _Optional[float] = ..., answer_rank: _Optional[int] = ..., answer_in_vocabulary: _Optional[bool] = ...) -> None: ...

class CompareRelationsResponse(_message.Message):
    __slots__ = ("reference_pair_similarity", "comparisons", "null_pair_count", "vocabulary_word_count")
    REFERENCE_PAIR_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    NULL_PAIR_COUNT_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    reference_pair_similarity: float
    comparisons: _containers.RepeatedCompositeFieldContainer[RelationComparison]
    null_pair_count: int
    vocabulary_word_count: int
    def __init__(self, reference_pair_similarity: _Optional[float] = ..., comparisons: _Optional[_Iterable[_Union[RelationComparison, _Mapping]]] = ..., null_pair_count: _Optional[int] = ..., vocabulary_word_count: _Optional[int] = ...) -> None: ...

class FindRelatedPairsRequest(_message.Message):
    __slots__ = ("reference", "k", "first_words", "first_word_count", "neighbour_count", "index_name", "space")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FIRST_WORDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOUR_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    reference: WordPair
    k: int
    first_words: _containers.RepeatedScalarFieldContainer[str]
    first_word_count: int
    neighbour_count: int
    index_name: str
    space: str
    def __init__(self, reference: _Optional[_Union[WordPair, _Mapping]] = ..., k: _Optional[int] = ..., first_words: _Optional[_Iterable[str]] = ..., first_word_count: _Optional[int] = ..., neighbour_count: _Optional[int] = ..., index_name: _Optional[str] = ..., space: _Optional[str] = ...) -> None: ...

class RelatedPair(_message.Message):
    __slots__ = ("pair", "offset_similarity", "pair_similarity")
    PAIR_FIELD_NUMBER: _ClassVar[int]
    OFFSET_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PAIR_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    pair: WordPair
    offset_similarity: float
    pair_similarity: float
    def __init__(self, pair: _Optional[_Union[WordPair, _Mapping]] = ..., offset_similarity: _Optional[float] = ..., pair_similarity: _Optional[float] = ...) -> None: ...

class FindRelatedPairsResponse(_message.Message):
    __slots__ = ("pairs", "compared_pair_count")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    COMPARED_PAIR_COUNT_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[RelatedPair]
    compared_pair_count: int
    def __init__(self, pairs: _Optional[_Iterable[_Union[RelatedPair, _Mapping]]] = ..., compared_pair_count: _Optional[int] = ...) -> None: ...

class FindSimilarWordsRequest(_message.Message):
    __slots__ = ("queries", "k", "index_name", "space")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedScalarFieldContainer[str]
    k: int
    index_name: str
    space: str
    def __init__(self, queries: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., index_name: _Optional[str] = ..., space: _Optional[str] = ...) -> None: ...

class SimilarWords(_message.Message):
    __slots__ = ("query", "words")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    query: str
    words: _containers.RepeatedCompositeFieldContainer[ScoredWord]
    def __init__(self, query: _Optional[str] = ..., words: _Optional[_Iterable[_Union[ScoredWord, _Mapping]]] = ...) -> None: ...

class FindSimilarWordsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SimilarWords]
    def __init__(self, results: _Optional[_Iterable[_Union[SimilarWords, _Mapping]]] = ...) -> None: ...

class GetVocabularyRequest(_message.Message):
    __slots__ = ("index_name", "words", "space", "include_vectors")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    words: _containers.RepeatedScalarFieldContainer[str]
    space: str
    include_vectors: bool
    def __init__(self, index_name: _Optional[str] = ..., words: _Optional[_Iterable[str]] = ..., space: _Optional[str] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class WordVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class GetVocabularyResponse(_message.Message):
    __slots__ = ("word_count", "contains", "word_template", "vectors")
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTAINS_FIELD_NUMBER: _ClassVar[int]
    WORD_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    word_count: int
    contains: _containers.RepeatedScalarFieldContainer[bool]
    word_template: str
    vectors: _containers.RepeatedCompositeFieldContainer[WordVector]
    def __init__(self, word_count: _Optional[int] = ..., contains: _Optional[_Iterable[bool]] = ..., word_template: _Optional[str] = ..., vectors: _Optional[_Iterable[_Union[WordVector, _Mapping]]] = ...) -> None: ...

"""vecserve.v1.AnalogyService over the AnalogyEngine: messages to engine calls and back."""

from __future__ import annotations

from vecserve.v1 import analogy_pb2 as pb

from service.analogy.engine import AnalogyEngine, ScoredWord
from service.analogy.scoring import AnalogyMethod
from service.api.call import CallContext
from service.errors import InvalidArgument

_METHODS = {
    pb.ANALOGY_METHOD_UNSPECIFIED: AnalogyMethod.COSMUL,
    pb.ANALOGY_METHOD_COSADD: AnalogyMethod.COSADD,
    pb.ANALOGY_METHOD_COSMUL: AnalogyMethod.COSMUL,
}
_METHOD_MESSAGES = {
    AnalogyMethod.COSADD: pb.ANALOGY_METHOD_COSADD,
    AnalogyMethod.COSMUL: pb.ANALOGY_METHOD_COSMUL,
}
# Left for the reply once the vocabulary wait ends, so a slow build reports its progress in time.
_REPLY_MARGIN_SECONDS = 0.5


def _wait_budget(call: CallContext) -> float | None:
    """How long a call may wait for the vocabulary: its deadline less a margin (None: no deadline)."""
    remaining = call.time_remaining()
    if remaining is None:
        return None
    return max(0.0, remaining - _REPLY_MARGIN_SECONDS)


def _method(request: pb.SolveAnalogyRequest | pb.CompareRelationsRequest) -> AnalogyMethod:
    if request.method not in _METHODS:
        raise InvalidArgument(f"method {request.method} is not a known AnalogyMethod", "method")
    return _METHODS[request.method]


def _reference(request: pb.CompareRelationsRequest | pb.FindRelatedPairsRequest) -> tuple[str, str]:
    if not request.HasField("reference"):
        raise InvalidArgument("reference is missing: give the pair to compare against", "reference")
    return request.reference.first, request.reference.second


def _scored(words: list[ScoredWord]) -> list[pb.ScoredWord]:
    return [
        pb.ScoredWord(word=item.word, score=item.score, ranking_score=item.ranking_score) for item in words
    ]


class AnalogyCalls:
    """Each method answers the RPC of its name; domain errors are raised for the transport to map."""

    def __init__(self, engine: AnalogyEngine) -> None:
        self._engine = engine

    def SolveAnalogy(self, request: pb.SolveAnalogyRequest, call: CallContext) -> pb.SolveAnalogyResponse:
        method = _method(request)
        answers = self._engine.solve_analogy(
            list(request.positive),
            list(request.negative),
            method=method,
            k=request.k,
            vocabulary_index=request.index_name,
            timeout=_wait_budget(call),
            space=request.space,
        )
        return pb.SolveAnalogyResponse(answers=_scored(answers), method=_METHOD_MESSAGES[method])

    def CompareRelations(
        self, request: pb.CompareRelationsRequest, call: CallContext
    ) -> pb.CompareRelationsResponse:
        report = self._engine.compare_relations(
            _reference(request),
            [(pair.first, pair.second) for pair in request.candidates],
            method=_method(request),
            vocabulary_index=request.index_name,
            timeout=_wait_budget(call),
            space=request.space,
        )
        return pb.CompareRelationsResponse(
            reference_pair_similarity=report.reference_pair_similarity,
            comparisons=[
                pb.RelationComparison(
                    candidate=pb.WordPair(first=item.first, second=item.second),
                    offset_similarity=item.offset_similarity,
                    pair_similarity=item.pair_similarity,
                    offset_percentile=item.offset_percentile,
                    answer_rank=item.answer_rank,
                    answer_in_vocabulary=item.answer_in_vocabulary,
                )
                for item in report.comparisons
            ],
            null_pair_count=report.null_pair_count,
            vocabulary_word_count=report.vocabulary_word_count,
        )

    def FindRelatedPairs(
        self, request: pb.FindRelatedPairsRequest, call: CallContext
    ) -> pb.FindRelatedPairsResponse:
        report = self._engine.find_related_pairs(
            _reference(request),
            k=request.k,
            first_words=list(request.first_words),
            first_word_count=request.first_word_count,
            neighbour_count=request.neighbour_count,
            vocabulary_index=request.index_name,
            timeout=_wait_budget(call),
            space=request.space,
        )
        return pb.FindRelatedPairsResponse(
            pairs=[
                pb.RelatedPair(
                    pair=pb.WordPair(first=item.first, second=item.second),
                    offset_similarity=item.offset_similarity,
                    pair_similarity=item.pair_similarity,
                )
                for item in report.pairs
            ],
            compared_pair_count=report.compared_pair_count,
        )

    def FindSimilarWords(
        self, request: pb.FindSimilarWordsRequest, call: CallContext
    ) -> pb.FindSimilarWordsResponse:
        results = self._engine.find_similar_words(
            list(request.queries),
            k=request.k,
            vocabulary_index=request.index_name,
            timeout=_wait_budget(call),
            space=request.space,
        )
        return pb.FindSimilarWordsResponse(
            results=[
                pb.SimilarWords(query=query, words=_scored(words))
                for query, words in zip(request.queries, results, strict=True)
            ]
        )

    def GetVocabulary(self, request: pb.GetVocabularyRequest, call: CallContext) -> pb.GetVocabularyResponse:
        description = self._engine.describe_vocabulary(
            list(request.words),
            vocabulary_index=request.index_name,
            timeout=_wait_budget(call),
            space=request.space,
            include_vectors=request.include_vectors,
        )
        vectors = [] if description.vectors is None else description.vectors
        return pb.GetVocabularyResponse(
            word_count=description.word_count,
            contains=description.contains,
            word_template=description.word_template,
            vectors=[pb.WordVector(values=vector.tolist()) for vector in vectors],
        )

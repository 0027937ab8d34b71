"""vecserve.v1.AnalogyService over gRPC: each RPC is service/api/analogy.py's, errors as statuses."""

from __future__ import annotations

import grpc
from vecserve.v1 import analogy_pb2 as pb
from vecserve.v1 import analogy_pb2_grpc as pb_grpc

from service.api.analogy import AnalogyCalls
from service.grpc_server.servicers.status import translate_errors


class AnalogyServicer(pb_grpc.AnalogyServiceServicer):
    def __init__(self, calls: AnalogyCalls) -> None:
        self._calls = calls

    @translate_errors
    def SolveAnalogy(
        self, request: pb.SolveAnalogyRequest, context: grpc.ServicerContext
    ) -> pb.SolveAnalogyResponse:
        return self._calls.SolveAnalogy(request, context)

    @translate_errors
    def CompareRelations(
        self, request: pb.CompareRelationsRequest, context: grpc.ServicerContext
    ) -> pb.CompareRelationsResponse:
        return self._calls.CompareRelations(request, context)

    @translate_errors
    def FindRelatedPairs(
        self, request: pb.FindRelatedPairsRequest, context: grpc.ServicerContext
    ) -> pb.FindRelatedPairsResponse:
        return self._calls.FindRelatedPairs(request, context)

    @translate_errors
    def FindSimilarWords(
        self, request: pb.FindSimilarWordsRequest, context: grpc.ServicerContext
    ) -> pb.FindSimilarWordsResponse:
        return self._calls.FindSimilarWords(request, context)

    @translate_errors
    def GetVocabulary(
        self, request: pb.GetVocabularyRequest, context: grpc.ServicerContext
    ) -> pb.GetVocabularyResponse:
        return self._calls.GetVocabulary(request, context)

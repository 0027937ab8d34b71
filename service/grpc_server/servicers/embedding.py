"""vecserve.v1.EmbeddingService over gRPC: each RPC is service/api/embedding.py's, errors as statuses."""

from __future__ import annotations

import grpc
from vecserve.v1 import embedding_pb2 as pb
from vecserve.v1 import embedding_pb2_grpc as pb_grpc

from service.api.embedding import EmbeddingCalls
from service.grpc_server.servicers.status import translate_errors


class EmbeddingServicer(pb_grpc.EmbeddingServiceServicer):
    def __init__(self, calls: EmbeddingCalls) -> None:
        self._calls = calls

    @translate_errors
    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        return self._calls.Embed(request, context)

    @translate_errors
    def Tokenize(self, request: pb.TokenizeRequest, context: grpc.ServicerContext) -> pb.TokenizeResponse:
        return self._calls.Tokenize(request, context)

    @translate_errors
    def CompareTexts(
        self, request: pb.CompareTextsRequest, context: grpc.ServicerContext
    ) -> pb.CompareTextsResponse:
        return self._calls.CompareTexts(request, context)

    @translate_errors
    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        return self._calls.GetModelInfo(request, context)

"""vecserve.v1.IndexService over gRPC: each RPC is service/api/index.py's, errors as statuses."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from vecserve.v1 import index_pb2 as pb
from vecserve.v1 import index_pb2_grpc as pb_grpc

from service.api.index import IndexCalls
from service.grpc_server.servicers.status import translate_errors


class IndexServicer(pb_grpc.IndexServiceServicer):
    def __init__(self, calls: IndexCalls) -> None:
        self._calls = calls

    @translate_errors
    def CreateIndex(
        self, request: pb.CreateIndexRequest, context: grpc.ServicerContext
    ) -> pb.CreateIndexResponse:
        return self._calls.CreateIndex(request, context)

    @translate_errors
    def GetIndex(self, request: pb.GetIndexRequest, context: grpc.ServicerContext) -> pb.GetIndexResponse:
        return self._calls.GetIndex(request, context)

    @translate_errors
    def ListIndexes(
        self, request: pb.ListIndexesRequest, context: grpc.ServicerContext
    ) -> pb.ListIndexesResponse:
        return self._calls.ListIndexes(request, context)

    @translate_errors
    def DeleteIndex(
        self, request: pb.DeleteIndexRequest, context: grpc.ServicerContext
    ) -> pb.DeleteIndexResponse:
        return self._calls.DeleteIndex(request, context)

    @translate_errors
    def UpsertDocuments(
        self, request: pb.UpsertDocumentsRequest, context: grpc.ServicerContext
    ) -> pb.UpsertDocumentsResponse:
        return self._calls.UpsertDocuments(request, context)

    @translate_errors
    def StreamUpsertDocuments(
        self, request_iterator: Iterator[pb.StreamUpsertDocumentsRequest], context: grpc.ServicerContext
    ) -> pb.StreamUpsertDocumentsResponse:
        return self._calls.StreamUpsertDocuments(request_iterator, context)

    @translate_errors
    def GetDocument(
        self, request: pb.GetDocumentRequest, context: grpc.ServicerContext
    ) -> pb.GetDocumentResponse:
        return self._calls.GetDocument(request, context)

    @translate_errors
    def DeleteDocuments(
        self, request: pb.DeleteDocumentsRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDocumentsResponse:
        return self._calls.DeleteDocuments(request, context)

    @translate_errors
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        return self._calls.Search(request, context)

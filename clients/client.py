"""A typed Python client over the generated vecserve.v1 stubs, with a deadline on every call."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType

import grpc
import numpy as np
from vecserve.v1 import embedding_pb2, embedding_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT_SECONDS = 60.0
_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class VecserveClient:
    """Talks to one vecserve server. Use as a context manager, or call close().

    Every call takes an optional `timeout` (seconds) that overrides the client's default deadline;
    failures raise grpc.RpcError with the server's status code and message.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ],
        )
        self.embedding = embedding_pb2_grpc.EmbeddingServiceStub(self._channel)

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

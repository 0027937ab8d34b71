"""Every RPC of the vecserve API, read from the proto descriptors, and a generic way to call each."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from vecserve.v1 import analogy_pb2, embedding_pb2, index_pb2

PROTO_MODULES: tuple[ModuleType, ...] = (embedding_pb2, index_pb2, analogy_pb2)


@dataclass(frozen=True)
class Rpc:
    service: str  # full name, e.g. "vecserve.v1.EmbeddingService"
    name: str  # e.g. "Embed"
    request_type: type[Message]
    response_type: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def short_name(self) -> str:
        return f"{self.service.rsplit('.', 1)[-1]}/{self.name}"

    def __str__(self) -> str:
        return self.short_name


def _message_class(module: ModuleType, method: MethodDescriptor, input_side: bool) -> type[Message]:
    descriptor = method.input_type if input_side else method.output_type
    assert descriptor.file.name == module.DESCRIPTOR.name, "request types come from the RPC's own file"
    return getattr(module, descriptor.name)


def all_rpcs() -> list[Rpc]:
    rpcs = []
    for module in PROTO_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rpcs.append(
                    Rpc(
                        service=service.full_name,
                        name=method.name,
                        request_type=_message_class(module, method, input_side=True),
                        response_type=_message_class(module, method, input_side=False),
                        client_streaming=method.client_streaming,
                        server_streaming=method.server_streaming,
                    )
                )
    return rpcs


def call(
    channel: grpc.Channel,
    rpc: Rpc,
    requests: Message | Sequence[Message],
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 60.0,
) -> Message:
    """Calls an RPC with one request (or, for a client stream, a sequence of them)."""
    assert not rpc.server_streaming, "no server-streaming RPCs exist yet"
    if rpc.client_streaming:
        stream = channel.stream_unary(
            rpc.path,
            request_serializer=rpc.request_type.SerializeToString,
            response_deserializer=rpc.response_type.FromString,
        )
        messages = list(requests) if isinstance(requests, Sequence) else [requests]
        return stream(iter(messages), metadata=metadata or None, timeout=timeout)
    unary = channel.unary_unary(
        rpc.path,
        request_serializer=rpc.request_type.SerializeToString,
        response_deserializer=rpc.response_type.FromString,
    )
    return unary(requests, metadata=metadata or None, timeout=timeout)


def call_raw(channel: grpc.Channel, rpc: Rpc, payloads: Iterable[bytes], timeout: float = 60.0) -> bytes:
    """Sends raw bytes as the request message(s), bypassing protobuf on the client side."""
    if rpc.client_streaming:
        return channel.stream_unary(rpc.path)(iter(list(payloads)), timeout=timeout)
    (payload,) = list(payloads)
    return channel.unary_unary(rpc.path)(payload, timeout=timeout)


def served_services(channel: grpc.Channel) -> set[str]:
    """Names of the services a server offers, asked through reflection (which needs no token)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = stub.ServerReflectionInfo(iter([request]), timeout=30)
    return {service.name for response in responses for service in response.list_services_response.service}


def status_code(error: grpc.RpcError) -> grpc.StatusCode:
    return error.code()  # type: ignore[attr-defined, no-any-return]


def outcome(channel: grpc.Channel, rpc: Rpc, requests: Any, **kwargs: Any) -> grpc.StatusCode:
    """OK, or the status code the call failed with."""
    try:
        call(channel, rpc, requests, **kwargs)
    except grpc.RpcError as error:
        return status_code(error)
    return grpc.StatusCode.OK

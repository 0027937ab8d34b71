"""The HTTP/JSON (Connect) transport against gRPC, side by side on one server process: the per-call
floor (GetModelInfo one after another, over gRPC, Connect with JSON and Connect with binary protobuf)
and Embed throughput (batches of 64 in a row, and one text per call from 32 concurrent clients).

The HTTP calls go through the standard library's http.client on keep-alive connections, the leanest
Python client (httpx spends about 0.6 ms more CPU per call, shown in its own row). JSON answers of
Embed cost the server protobuf's json_format (pure Python, about 1.7 ms per 384-float vector), which
binary protobuf over the same Connect transport does not pay."""

from __future__ import annotations

import http.client
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from vecserve.v1 import analogy_pb2, embedding_pb2

from benchmarks.common import Report, concurrent_calls, concurrent_calls_over, sequential_call_ms, short_texts
from clients import VecserveClient
from clients.local_server import ServerProcess, free_port

BATCH = 64
CLIENTS = 32
EMBED = "/vecserve.v1.EmbeddingService/Embed"
MODEL_INFO = "/vecserve.v1.EmbeddingService/GetModelInfo"
JSON = "application/json"
PROTO = "application/proto"


class ConnectHttpClient:
    """Connect unary calls on one keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def post(self, path: str, body: bytes, content_type: str) -> bytes:
        self._connection.request("POST", path, body=body, headers={"content-type": content_type})
        response = self._connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {answer[:300]!r}")
        return answer

    def close(self) -> None:
        self._connection.close()


def json_embed(client: ConnectHttpClient, texts: list[str]) -> None:
    """One Embed over HTTP/JSON, its answer parsed as a client would (the floats into Python)."""
    json.loads(client.post(EMBED, json.dumps({"texts": texts}).encode(), JSON))


def proto_embed(client: ConnectHttpClient, texts: list[str]) -> None:
    """One Embed over HTTP with binary protobuf bodies (Connect's application/proto)."""
    body = embedding_pb2.EmbedRequest(texts=texts).SerializeToString()
    embedding_pb2.EmbedResponse.FromString(client.post(EMBED, body, PROTO))


def grpc_embed(client: VecserveClient, texts: list[str]) -> None:
    client.embed(texts)


def batched_rates(embeds: dict[str, Callable[[list[str]], None]], texts: list[str]) -> dict[str, float]:
    """texts/s of each way to Embed, in batches of BATCH one call after another (after one warm-up
    batch); the ways take turns and the best of two rounds counts, so drift hits all alike."""
    batches = [texts[start : start + BATCH] for start in range(0, len(texts), BATCH)]
    best = dict.fromkeys(embeds, 0.0)
    for _ in range(2):
        for name, embed in embeds.items():
            embed(batches[0])
            began = time.perf_counter()
            for batch in batches:
                embed(batch)
            best[name] = max(best[name], len(texts) / (time.perf_counter() - began))
    return best


def run(report: Report) -> None:
    floor_calls = {"tiny": 50, "quick": 200, "full": 2000}[report.size]
    batched_texts = short_texts(report.pick(tiny=64, quick=192, full=1024), seed=5)
    concurrent_texts = short_texts(report.pick(tiny=64, quick=160, full=1280), seed=13)
    http_port = free_port()
    section = "http vs grpc"
    with tempfile.TemporaryDirectory() as scratch:
        # A tiny analogy vocabulary: the server embeds it at start-up, before anything is measured.
        server = ServerProcess(
            Path(scratch) / "data",
            "--http-listen",
            f"127.0.0.1:{http_port}",
            env={"VECSERVE_VOCABULARY_SIZE": "100"},
        ).start()
        grpc_client = VecserveClient(server.address, timeout=600)
        http_client = ConnectHttpClient(http_port)
        httpx_client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=600)
        try:
            grpc_client.analogies.GetVocabulary(analogy_pb2.GetVocabularyRequest(), timeout=600)
            info = embedding_pb2.GetModelInfoRequest()
            info_proto = info.SerializeToString()
            ms = sequential_call_ms(
                {
                    "grpc": lambda: grpc_client.embedding.GetModelInfo(info, timeout=10),
                    "json": lambda: json.loads(http_client.post(MODEL_INFO, b"{}", JSON)),
                    "proto": lambda: embedding_pb2.GetModelInfoResponse.FromString(
                        http_client.post(MODEL_INFO, info_proto, PROTO)
                    ),
                    "httpx": lambda: httpx_client.post(
                        MODEL_INFO, content=b"{}", headers={"content-type": JSON}
                    ).json(),
                },
                floor_calls,
                rounds=5,
            )
            report.add(section, f"gRPC GetModelInfo ({floor_calls} in a row)", ms["grpc"], "ms")
            report.add(
                section, "HTTP/JSON (Connect) GetModelInfo", ms["json"], "ms", "http.client, keep-alive"
            )
            report.add(section, "HTTP/protobuf (Connect) GetModelInfo", ms["proto"], "ms")
            report.add(section, "HTTP/JSON GetModelInfo, httpx client", ms["httpx"], "ms")
            report.add(section, "per-call floor: HTTP/JSON / gRPC", ms["json"] / ms["grpc"], "ratio")

            rates = batched_rates(
                {
                    "grpc": lambda batch: grpc_embed(grpc_client, batch),
                    "json": lambda batch: json_embed(http_client, batch),
                    "proto": lambda batch: proto_embed(http_client, batch),
                },
                batched_texts,
            )
            report.add(
                section, f"gRPC Embed, batch {BATCH} ({len(batched_texts)} texts)", rates["grpc"], "texts/s"
            )
            report.add(section, f"HTTP/JSON Embed, batch {BATCH}", rates["json"], "texts/s")
            report.add(section, f"HTTP/protobuf Embed, batch {BATCH}", rates["proto"], "texts/s")
            report.add(section, "Embed batches: HTTP/JSON / gRPC", rates["json"] / rates["grpc"], "ratio")

            singles = [[text] for text in concurrent_texts]
            grpc_rate = concurrent_calls(server.address, singles, CLIENTS, grpc_embed)[0]
            http_clients = [ConnectHttpClient(http_port) for _ in range(CLIENTS)]
            http_rate = concurrent_calls_over(http_clients, singles, json_embed)[0]
            report.add(section, f"gRPC Embed, 1 text per call, {CLIENTS} clients", grpc_rate, "texts/s")
            report.add(section, f"HTTP/JSON Embed, 1 text per call, {CLIENTS} clients", http_rate, "texts/s")
            report.add(section, "concurrent Embed: HTTP/JSON / gRPC", http_rate / grpc_rate, "ratio")
        finally:
            grpc_client.close()
            http_client.close()
            httpx_client.close()
            server.stop()

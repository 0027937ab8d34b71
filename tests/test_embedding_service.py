"""EmbeddingService through the real server, the real client and the real model."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from clients import VecserveClient
from service.embedding.encoder import Encoder


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_embedding_has_model_dimension_and_unit_norm(client: VecserveClient) -> None:
    vectors = client.embed_array(["hello world", "vector search is fun"])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_raw_vectors_keep_direction_without_normalization(client: VecserveClient) -> None:
    raw = client.embed_array(["the dugong grazes on seagrass"], normalize=False)[0]
    unit = client.embed_array(["the dugong grazes on seagrass"])[0]
    assert np.linalg.norm(raw) > 1.5
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)


def test_embedding_matches_in_process_encoder(client: VecserveClient, encoder: Encoder) -> None:
    texts = ["a manatee swims slowly", "interest rates rose again"]
    np.testing.assert_allclose(client.embed_array(texts), encoder.encode(texts), atol=1e-5)


def test_paraphrase_is_closer_than_unrelated_sentence(client: VecserveClient) -> None:
    scores = client.compare(
        ["The cat is sleeping on the sofa."],
        ["A kitten naps on the couch.", "The central bank raised interest rates."],
    )[0]
    assert scores[0] > 0.5
    assert scores[0] > scores[1] + 0.3


def test_compare_texts_matrix_shape_and_diagonal(client: VecserveClient) -> None:
    texts = ["red apple", "green pear", "fast car"]
    matrix = client.compare(texts, texts)
    assert matrix.shape == (3, 3)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-5)


def test_tokenize_returns_the_models_own_ids_and_offsets(client: VecserveClient, encoder: Encoder) -> None:
    text = "Dugongs graze, manatees too."
    result = client.tokenize([text]).results[0]
    expected = encoder._tokenizer(text)["input_ids"]
    assert [token.id for token in result.tokens] == expected
    assert result.tokens[0].special and result.tokens[-1].special
    assert [t.text for t in result.tokens][:3] == ["[CLS]", "dug", "##ong"]
    for token in result.tokens[1:-1]:
        assert not token.special
        piece = text[token.start : token.end].lower()
        assert piece == token.text.removeprefix("##")


def test_tokenize_without_special_tokens_and_empty_text(client: VecserveClient) -> None:
    plain = client.tokenize(["hello"], add_special_tokens=False).results[0]
    assert [t.text for t in plain.tokens] == ["hello"]
    empty = client.tokenize([""]).results[0]
    assert [t.text for t in empty.tokens] == ["[CLS]", "[SEP]"]


def test_long_input_is_truncated_and_flagged(client: VecserveClient) -> None:
    long_text = "word " * 400
    response = client.embed(["short text", long_text])
    short, long = response.embeddings
    assert not short.truncated and short.token_count == 4
    assert long.truncated and long.token_count == 402
    assert client.tokenize([long_text]).results[0].exceeds_max_length


def test_long_input_without_truncation_is_invalid(client: VecserveClient) -> None:
    error = rpc_error(client.embed, ["fine", "word " * 400], truncate=False)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts[1]" in error.details() and "256" in error.details()


@pytest.mark.parametrize(
    ("call", "expected_words"),
    [
        (lambda c: c.embed([]), "at least one"),
        (lambda c: c.embed(["ok", "   "]), "texts[1]"),
        (lambda c: c.embed([""]), "texts[0]"),
        (lambda c: c.tokenize([]), "at least one"),
        (lambda c: c.compare([], ["x"]), "left_texts"),
        (lambda c: c.compare(["x"], [""]), "right_texts[0]"),
        (lambda c: c.embed(["x"] * 65), "limit of 64"),
        (lambda c: c.embed(["x" * 5001]), "limit of 5000"),
        (lambda c: c.tokenize(["x" * 5001]), "limit of 5000"),
    ],
)
def test_bad_input_is_invalid_argument(client: VecserveClient, call, expected_words: str) -> None:
    error = rpc_error(call, client)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected_words in error.details()


def test_invalid_field_is_named_in_bad_request_details(client: VecserveClient) -> None:
    error = rpc_error(client.embed, ["ok", ""])
    status = rpc_status.from_call(error)
    assert status is not None
    from google.rpc import error_details_pb2

    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "texts[1]"


def test_oversized_message_is_resource_exhausted(client: VecserveClient) -> None:
    # 4 MiB limit in the session server; 70 texts of 64 KiB stays under the text-count check's
    # reach because the transport refuses the message first.
    error = rpc_error(client.embed, ["y" * 65536] * 70)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4,194,304 bytes" in error.details() and "--max-message-bytes" in error.details()


def test_model_info_reports_encoder_and_limits(client: VecserveClient) -> None:
    info = client.model_info()
    assert info.dimension == 384
    assert info.max_sequence_length == 256
    assert info.vocabulary_size == 30522
    assert info.device == "cpu" and info.dtype == "float32"
    assert info.server_version
    assert info.max_texts_per_request == 64
    assert info.max_text_characters == 5000
    assert info.max_documents_per_request == 1024  # the default, not set by the session server
    assert "all_minilm_l6_v2" in info.model_name.lower().replace("-", "_")


def test_server_survives_bad_calls(client: VecserveClient) -> None:
    for _ in range(3):
        rpc_error(client.embed, [""])
    assert client.embed_array(["still serving"]).shape == (1, 384)


def test_health_reports_serving(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ["", "vecserve.v1.EmbeddingService"]:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
        names = {service.name for service in response.list_services_response.service}
    assert {"vecserve.v1.EmbeddingService", "grpc.health.v1.Health"} <= names


def test_reflection_serves_the_embed_descriptor(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="vecserve.v1.EmbeddingService"
        )
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    served = next(f for f in files if f.name == "vecserve/v1/embedding.proto")
    methods = [m.name for m in served.service[0].method]
    assert methods == ["Embed", "Tokenize", "CompareTexts", "GetModelInfo"]


def test_request_character_total_is_limited(encoder: Encoder, tmp_path) -> None:
    from service.config import Settings
    from service.grpc_server.server import create_server

    running = create_server(
        Settings(listen="127.0.0.1:0", data_dir=tmp_path, max_request_characters=1000), encoder=encoder
    )
    try:
        with VecserveClient(f"127.0.0.1:{running.port}", timeout=60) as small:
            for call in (small.embed, small.tokenize):
                error = rpc_error(call, ["x" * 600, "y" * 600])
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "1200 characters in all" in error.details() and "limit of 1000" in error.details()
            assert len(small.tokenize(["x" * 500, "y" * 500]).results) == 2
    finally:
        running.stop(2)

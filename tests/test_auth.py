"""Bearer tokens: every RPC crossed with {no token, wrong token, read token, write token}, open health and
reflection, the tokens file format, the client and CLI options, and no token ever in a log line."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vecserve.v1 import analogy_pb2, embedding_pb2, embedding_pb2_grpc, index_pb2

from clients import VecserveClient
from clients.cli import main as cli_main
from service.api.auth import READ_RPCS, Role, TokenTable, load_tokens, protected_methods
from service.config import Settings, settings_from_env
from service.embedding.encoder import Encoder
from service.errors import InvalidSettings
from service.grpc_server.server import RunningServer, create_server
from service.observability.access_log import flush_access_log
from tests.rpcs import Rpc, all_rpcs, call, outcome, served_services

READ_TOKEN = "read-" + secrets.token_urlsafe(24)
WRITE_TOKEN = "write-" + secrets.token_urlsafe(24)
WRONG_TOKEN = "wrong-" + secrets.token_urlsafe(24)
AUTH_ERRORS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# The roles as specified: these RPCs only read; everything else needs a write token.
SPECIFIED_READ_RPCS = {
    "EmbeddingService/Embed",
    "EmbeddingService/Tokenize",
    "EmbeddingService/CompareTexts",
    "EmbeddingService/GetModelInfo",
    "IndexService/Search",
    "IndexService/GetIndex",
    "IndexService/ListIndexes",
    "IndexService/GetDocument",
    "AnalogyService/SolveAnalogy",
    "AnalogyService/CompareRelations",
    "AnalogyService/FindRelatedPairs",
    "AnalogyService/FindSimilarWords",
    "AnalogyService/GetVocabulary",
}
SPECIFIED_WRITE_RPCS = {
    "IndexService/CreateIndex",
    "IndexService/DeleteIndex",
    "IndexService/UpsertDocuments",
    "IndexService/StreamUpsertDocuments",
    "IndexService/DeleteDocuments",
}
INDEX = "auth-index"
MISSING_VOCABULARY = "auth-no-such-vocabulary"  # keeps analogy calls from building the big vocabulary

# A small, valid-ish request for every RPC; a new RPC fails test_every_rpc_has_a_request until added.
REQUESTS: dict[str, Callable[[], Message | list[Message]]] = {
    "EmbeddingService/Embed": lambda: embedding_pb2.EmbedRequest(texts=["a locked door"]),
    "EmbeddingService/Tokenize": lambda: embedding_pb2.TokenizeRequest(texts=["a locked door"]),
    "EmbeddingService/CompareTexts": lambda: embedding_pb2.CompareTextsRequest(
        left_texts=["a key"], right_texts=["a lock"]
    ),
    "EmbeddingService/GetModelInfo": lambda: embedding_pb2.GetModelInfoRequest(),
    "IndexService/CreateIndex": lambda: index_pb2.CreateIndexRequest(name=f"made-{uuid.uuid4().hex[:12]}"),
    "IndexService/GetIndex": lambda: index_pb2.GetIndexRequest(index_name=INDEX),
    "IndexService/ListIndexes": lambda: index_pb2.ListIndexesRequest(),
    "IndexService/DeleteIndex": lambda: index_pb2.DeleteIndexRequest(index_name="auth-never-created"),
    "IndexService/UpsertDocuments": lambda: index_pb2.UpsertDocumentsRequest(
        index_name=INDEX, documents=[index_pb2.Document(id="extra", text="written with a write token")]
    ),
    "IndexService/StreamUpsertDocuments": lambda: [
        index_pb2.StreamUpsertDocumentsRequest(
            index_name=INDEX, documents=[index_pb2.Document(id="streamed", text="streamed in")]
        )
    ],
    "IndexService/GetDocument": lambda: index_pb2.GetDocumentRequest(index_name=INDEX, id="door"),
    "IndexService/DeleteDocuments": lambda: index_pb2.DeleteDocumentsRequest(
        index_name=INDEX, ids=["never-stored"]
    ),
    "IndexService/Search": lambda: index_pb2.SearchRequest(
        index_name=INDEX, queries=[index_pb2.Query(text="an open door")], k=1
    ),
    "AnalogyService/SolveAnalogy": lambda: analogy_pb2.SolveAnalogyRequest(
        positive=["king", "woman"], negative=["man"], index_name=MISSING_VOCABULARY
    ),
    "AnalogyService/CompareRelations": lambda: analogy_pb2.CompareRelationsRequest(
        reference=analogy_pb2.WordPair(first="paris", second="france"),
        candidates=[analogy_pb2.WordPair(first="rome", second="italy")],
        index_name=MISSING_VOCABULARY,
    ),
    "AnalogyService/FindRelatedPairs": lambda: analogy_pb2.FindRelatedPairsRequest(
        reference=analogy_pb2.WordPair(first="paris", second="france"), index_name=MISSING_VOCABULARY
    ),
    "AnalogyService/FindSimilarWords": lambda: analogy_pb2.FindSimilarWordsRequest(
        queries=["door"], index_name=MISSING_VOCABULARY
    ),
    "AnalogyService/GetVocabulary": lambda: analogy_pb2.GetVocabularyRequest(
        words=["door"], index_name=MISSING_VOCABULARY
    ),
}
TOKENS = {"none": None, "wrong": WRONG_TOKEN, "read": READ_TOKEN, "write": WRITE_TOKEN}


def write_tokens_file(path: Path) -> Path:
    path.write_text(
        f"# vecserve tokens\n\nread {READ_TOKEN}\n  write   {WRITE_TOKEN}  \n# an old token, revoked\n"
    )
    return path


@pytest.fixture(scope="module")
def auth_server(encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("auth")
    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=directory / "data",
        tokens_file=write_tokens_file(directory / "tokens"),
    )
    running = create_server(settings, encoder=encoder)
    with VecserveClient(f"127.0.0.1:{running.port}", timeout=60, token=WRITE_TOKEN) as client:
        client.create_index(INDEX)
        client.upsert(INDEX, [{"id": "door", "text": "a door in the wall"}])
    yield running
    running.stop(grace=5)


@pytest.fixture(scope="module")
def channel(auth_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{auth_server.port}") as opened:
        yield opened


def metadata_for(token: str | None) -> list[tuple[str, str]]:
    return [] if token is None else [("authorization", f"Bearer {token}")]


def test_the_role_table_is_the_specified_one() -> None:
    roles = {path.lstrip("/").split(".")[-1]: role for path, role in protected_methods().items()}
    assert {name for name, role in roles.items() if role is Role.READ} == SPECIFIED_READ_RPCS
    assert {name for name, role in roles.items() if role is Role.WRITE} >= SPECIFIED_WRITE_RPCS
    assert set(roles) == {rpc.short_name for rpc in all_rpcs()}
    assert set(READ_RPCS) <= set(roles), "every read RPC named in service/api/auth.py exists"


def test_every_rpc_has_a_request() -> None:
    assert {rpc.short_name for rpc in all_rpcs()} == set(REQUESTS)


@pytest.mark.parametrize("token_name", list(TOKENS))
@pytest.mark.parametrize("rpc", all_rpcs(), ids=str)
def test_auth_matrix(channel: grpc.Channel, rpc: Rpc, token_name: str) -> None:
    code = outcome(channel, rpc, REQUESTS[rpc.short_name](), metadata=metadata_for(TOKENS[token_name]))
    if rpc.service not in served_services(channel):
        # A service not registered on this server is unknown to gRPC before any token check.
        assert code == grpc.StatusCode.UNIMPLEMENTED
        return
    reads = protected_methods()[rpc.path] is Role.READ
    if token_name in ("none", "wrong"):
        assert code == grpc.StatusCode.UNAUTHENTICATED
    elif token_name == "read" and not reads:
        assert code == grpc.StatusCode.PERMISSION_DENIED
    else:
        assert code not in AUTH_ERRORS, f"{rpc} with a {token_name} token was refused: {code}"


def test_allowed_calls_really_work(auth_server: RunningServer) -> None:
    address = f"127.0.0.1:{auth_server.port}"
    with VecserveClient(address, token=READ_TOKEN) as reader:
        assert reader.embed_array(["an open door"]).shape == (1, 384)
        assert reader.search(INDEX, ["a door"], k=1)[0][0].id == "door"
    with VecserveClient(address, token=WRITE_TOKEN) as writer:
        writer.upsert(INDEX, [{"id": "window", "text": "a window"}])
        assert writer.get_document(INDEX, "window").text == "a window"
        streamed = writer.stream_upsert(INDEX, [[{"id": "gate", "text": "a gate"}]], timeout=60)
        assert streamed.upserted_count == 1
        assert writer.delete_documents(INDEX, ["window", "gate"]) == 2


def test_refused_writes_change_nothing(auth_server: RunningServer) -> None:
    address = f"127.0.0.1:{auth_server.port}"
    with VecserveClient(address, token=WRITE_TOKEN) as writer:
        before = writer.get_index(INDEX).document_count
    for token in (None, WRONG_TOKEN, READ_TOKEN):
        with VecserveClient(address, token=token) as client:
            for attempt in (
                lambda: client.upsert(INDEX, [{"id": "intruder", "text": "should not be stored"}]),
                lambda: client.delete_documents(INDEX, ["door"]),
                lambda: client.delete_index(INDEX),
                lambda: client.create_index("intruder-index"),
                lambda: client.stream_upsert(INDEX, [[{"id": "intruder", "text": "streamed"}]], timeout=30),
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    attempt()
                assert caught.value.code() in AUTH_ERRORS
    with VecserveClient(address, token=WRITE_TOKEN) as writer:
        assert writer.get_index(INDEX).document_count == before
        assert writer.get_document(INDEX, "door").text == "a door in the wall"
        assert "intruder-index" not in {index.name for index in writer.all_indexes()}


def test_refused_calls_carry_their_request_id(channel: grpc.Channel) -> None:
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetModelInfo(
            embedding_pb2.GetModelInfoRequest(), metadata=[("x-request-id", "refused-1")], timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert dict(caught.value.trailing_metadata() or ()).get("x-request-id") == "refused-1"


def test_health_and_reflection_need_no_token(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    assert "vecserve.v1.EmbeddingService" in served_services(channel)


@pytest.mark.parametrize(
    "header",
    [
        f"Basic {WRITE_TOKEN}",  # another scheme
        f"Bearer {WRITE_TOKEN}x",  # one character more
        f"Bearer {WRITE_TOKEN[:-1]}",  # one character less
        "Bearer ",
        WRITE_TOKEN,  # no scheme
    ],
)
def test_near_miss_tokens_are_refused(channel: grpc.Channel, header: str) -> None:
    rpc = next(rpc for rpc in all_rpcs() if rpc.name == "GetModelInfo")
    code = outcome(channel, rpc, embedding_pb2.GetModelInfoRequest(), metadata=[("authorization", header)])
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_the_scheme_is_case_insensitive(channel: grpc.Channel) -> None:
    rpc = next(rpc for rpc in all_rpcs() if rpc.name == "GetModelInfo")
    reply = call(
        channel,
        rpc,
        embedding_pb2.GetModelInfoRequest(),
        metadata=[("authorization", f"bearer {READ_TOKEN}")],
    )
    assert reply.dimension == 384  # type: ignore[attr-defined]


def test_refusals_say_what_to_do(auth_server: RunningServer) -> None:
    address = f"127.0.0.1:{auth_server.port}"
    with VecserveClient(address) as anonymous, pytest.raises(grpc.RpcError) as caught:
        anonymous.model_info()
    assert "authorization: Bearer" in caught.value.details()
    with VecserveClient(address, token=READ_TOKEN) as reader, pytest.raises(grpc.RpcError) as caught:
        reader.create_index("refused")
    assert "write token" in caught.value.details()


def test_tokens_never_reach_the_log(auth_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    address = f"127.0.0.1:{auth_server.port}"
    with caplog.at_level(logging.DEBUG):
        for token in (WRONG_TOKEN, READ_TOKEN, WRITE_TOKEN):
            with VecserveClient(address, token=token) as client, contextlib.suppress(grpc.RpcError):
                client.create_index(f"log-{uuid.uuid4().hex[:8]}")
        flush_access_log()
    assert caplog.records, "the calls were logged"
    text = "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    for token in (WRONG_TOKEN, READ_TOKEN, WRITE_TOKEN):
        assert token not in text


def test_cli_token_option_and_variable(
    auth_server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address = f"127.0.0.1:{auth_server.port}"
    monkeypatch.delenv("VECSERVE_TOKEN", raising=False)
    assert cli_main(["--address", address, "info"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert cli_main(["--address", address, "--token", READ_TOKEN, "info"]) == 0
    assert "384" in capsys.readouterr().out
    assert cli_main(["info", "--address", address, "--token", READ_TOKEN]) == 0  # after the subcommand too
    capsys.readouterr()
    assert cli_main(["--address", address, "--token", READ_TOKEN, "index", "create", "nope"]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    monkeypatch.setenv("VECSERVE_TOKEN", READ_TOKEN)
    assert cli_main(["--address", address, "info"]) == 0


def test_token_table_finds_the_role_of_each_token() -> None:
    table = TokenTable.from_pairs([(Role.READ, READ_TOKEN), (Role.WRITE, WRITE_TOKEN)])
    assert table.role_of(READ_TOKEN) is Role.READ
    assert table.role_of(WRITE_TOKEN) is Role.WRITE
    assert table.role_of(WRONG_TOKEN) is None
    assert table.role_of("") is None
    assert READ_TOKEN not in repr(table)


def test_tokens_file_with_comments_and_blank_lines(tmp_path: Path) -> None:
    table = load_tokens(write_tokens_file(tmp_path / "tokens"))
    assert table.role_of(READ_TOKEN) is Role.READ
    assert table.role_of(WRITE_TOKEN) is Role.WRITE


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f"read {READ_TOKEN}\nadmin {WRITE_TOKEN}\n", r"tokens:2: unknown role 'admin'"),
        (f"read {READ_TOKEN} extra\n", r"tokens:1: expected 'ROLE TOKEN'"),
        ("\n\nwrite\n", r"tokens:3: expected 'ROLE TOKEN'"),
        ("read short\n", r"tokens:1: the token has 5 characters"),
        (f"read {READ_TOKEN}\nwrite {READ_TOKEN}\n", r"tokens:2: this token is already listed"),
        ("read tökenwithumlautsandmore\n", r"tokens:1: the token must be printable ASCII"),
        ("# nothing but a comment\n\n", r"holds no tokens"),
    ],
)
def test_malformed_tokens_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(InvalidSettings, match=message):
        load_tokens(path)


def test_missing_tokens_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSettings, match="cannot read the tokens file"):
        load_tokens(tmp_path / "absent")


def test_serve_refuses_to_start_with_a_malformed_tokens_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read {READ_TOKEN}\nwrite\n")
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
        ],
        env={**os.environ, "VECSERVE_TOKENS_FILE": str(tokens), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2
    assert f"{tokens}:2: expected 'ROLE TOKEN'" in finished.stderr
    assert READ_TOKEN not in finished.stderr + finished.stdout


def test_tokens_file_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VECSERVE_TOKENS_FILE", str(tmp_path / "tokens"))
    assert settings_from_env().tokens_file == tmp_path / "tokens"
    assert settings_from_env(tokens_file=str(tmp_path / "flag")).tokens_file == tmp_path / "flag"

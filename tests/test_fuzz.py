"""Property-based tests: random and malformed requests at every RPC.

Requests are generated from the proto descriptors (so a new RPC or field is fuzzed without edits
here): random unicode strings, names of real and unknown indexes, huge integers, NaN and infinite
floats, unknown enum values, random nesting, and plain random bytes sent as the message. The server
must answer each with a proper status (never UNKNOWN or INTERNAL, which would mean bad input broke
it), keep serving, and leave a guard index it was never asked to change exactly as it was.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vecserve.v1 import analogy_pb2, index_pb2

from clients import VecserveClient
from service.config import Settings
from service.embedding.encoder import Encoder
from service.grpc_server.server import RunningServer, create_server
from tests.rpcs import Rpc, all_rpcs, call, call_raw, served_services, status_code

# Codes a valid server may answer malformed input with. UNKNOWN and INTERNAL are server faults,
# DEADLINE_EXCEEDED (with a generous deadline) a hang, and RESOURCE_EXHAUSTED, for requests far
# below the size limit, an error message too long for the client to receive.
PROPER_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}
GUARD = f"guard-{uuid.uuid4().hex[:10]}"  # never named by the generated requests
SCRATCH = ("scratch", "tiny")  # indexes the fuzz may write to
TINY_DIMENSION = 4
VOCABULARY = "words"  # a small index used as the analogy vocabulary
MAX_TEXTS = 8
MAX_CHARACTERS = 1000
MAX_MESSAGE_BYTES = 256 * 1024
CALL_TIMEOUT = 60.0
FUZZ_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# -- request generation from descriptors --------------------------------------------------------

NAME_FIELDS = {"name", "index_name", "id", "document_id", "key", "page_token"}
EDGE_STRINGS = [
    "",
    " ",
    "\t\n",
    "\x00",
    "a" * 300,
    "../../etc/passwd",
    "name with spaces",
    "ünïcødé",
    "名前",
    "\u202eevil",
    "🙂" * 10,
    "-leading-dash",
    ".hidden",
    "x" * (MAX_CHARACTERS + 1),
    "\ufeff",
    "\U0010ffff",
]
EDGE_INTEGERS = [0, 1, 2, 7, 255, 256, 1000, 1001, 4096, 65536, 2**31 - 1, 2**31, 2**32 - 1]
EDGE_FLOATS = [0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 1e-45, 1e300]


def text_strategy() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40), st.sampled_from(EDGE_STRINGS), st.text(min_size=900, max_size=1100)
    )


def name_strategy() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([*SCRATCH, VOCABULARY]),
        text_strategy(),
        st.from_regex(r"[a-z0-9_-]{1,70}", fullmatch=True),
    )


def integer_strategy(field: FieldDescriptor) -> st.SearchStrategy[int]:
    unsigned = field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32)
    wide_unsigned = field.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
    if unsigned:
        low, high = 0, 2**32 - 1
    elif wide_unsigned:
        low, high = 0, 2**64 - 1
    elif field.type in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        low, high = -(2**63), 2**63 - 1
    else:
        low, high = -(2**31), 2**31 - 1
    edges = [value for value in EDGE_INTEGERS if low <= value <= high] + ([-1, low] if low < 0 else [high])
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def scalar_strategy(field: FieldDescriptor) -> st.SearchStrategy[object]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return name_strategy() if field.name in NAME_FIELDS else text_strategy()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.one_of(st.sampled_from(EDGE_FLOATS[:-1]), st.floats(width=32))
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.one_of(st.sampled_from(EDGE_FLOATS), st.floats())
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 50))  # proto3 enums are open
    return integer_strategy(field)


def repeated_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[list[object]]:
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        # Vectors: empty, the tiny index's dimension, the model's, or any short length.
        floats = scalar_strategy(field)
        sane = st.floats(-10, 10, width=32)
        return st.one_of(
            st.lists(floats, max_size=6),
            st.lists(sane, min_size=TINY_DIMENSION, max_size=TINY_DIMENSION),
            st.lists(st.one_of(sane, floats), min_size=TINY_DIMENSION, max_size=TINY_DIMENSION),
            st.lists(sane, min_size=384, max_size=384),
        )
    element = (
        message_strategy(field.message_type, depth + 1)
        if field.type == FieldDescriptor.TYPE_MESSAGE
        else scalar_strategy(field)
    )
    return st.one_of(st.lists(element, max_size=3), st.lists(element, max_size=MAX_TEXTS + 2))


def _is_real_oneof_member(field: FieldDescriptor) -> bool:
    oneof = field.containing_oneof
    return oneof is not None and not (len(oneof.fields) == 1 and oneof.name == f"_{field.name}")


@st.composite
def _build(draw: st.DrawFn, descriptor: Descriptor, depth: int) -> Message:
    from google.protobuf import message_factory

    message = message_factory.GetMessageClass(descriptor)()
    if depth > 4:
        return message
    fields = list(descriptor.fields)
    # Of each real oneof, set at most one member.
    chosen_members = {
        oneof.name: draw(st.sampled_from([None, *oneof.fields]))
        for oneof in descriptor.oneofs
        if any(_is_real_oneof_member(field) for field in oneof.fields)
    }
    for field in fields:
        if _is_real_oneof_member(field) and chosen_members[field.containing_oneof.name] is not field:
            continue
        if not _is_real_oneof_member(field) and not draw(st.booleans()):
            continue  # left unset
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            entries = draw(
                st.dictionaries(
                    name_strategy(),
                    message_strategy(value_field.message_type, depth + 1)
                    if value_field.message_type
                    else scalar_strategy(value_field),
                    max_size=4,
                )
            )
            for key, value in entries.items():
                target = getattr(message, field.name)
                if isinstance(value, Message):
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(repeated_strategy(field, depth)))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, field.name).CopyFrom(draw(message_strategy(field.message_type, depth + 1)))
        else:
            setattr(message, field.name, draw(scalar_strategy(field)))
    return message


def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    return _build(descriptor, depth)


@st.composite
def request_strategy(draw: st.DrawFn, rpc: Rpc) -> Message | list[Message]:
    def one() -> Message:
        message = draw(message_strategy(rpc.request_type.DESCRIPTOR))
        # An empty index_name in an analogy request means the built-in English vocabulary, which takes
        # minutes to build on first use: point analogy calls at the small test vocabulary instead.
        is_analogy = message.DESCRIPTOR.file.name == analogy_pb2.DESCRIPTOR.name
        if is_analogy and "index_name" in message.DESCRIPTOR.fields_by_name and not message.index_name:  # type: ignore[attr-defined]
            message.index_name = VOCABULARY  # type: ignore[attr-defined]
        return message

    if rpc.client_streaming:
        return [one() for _ in range(draw(st.integers(0, 3)))]
    return one()


# -- the server under test -----------------------------------------------------------------------


@dataclass
class GuardState:
    info: index_pb2.Index
    documents: list[index_pb2.Document]
    hits: list[list[tuple[str, float]]]


def guard_state(client: VecserveClient) -> GuardState:
    info = client.get_index(GUARD)
    documents = [client.get_document(GUARD, f"g{number}") for number in range(6)]
    results = client.search(GUARD, ["a quiet river", "loud machines"], k=6)
    hits = [[(hit.id, round(hit.score, 5)) for hit in result] for result in results]
    info.ClearField("disk_bytes")  # snapshots of other indexes do not matter; this one has none
    info.ClearField("memory_bytes")
    return GuardState(info=info, documents=documents, hits=hits)


@dataclass
class FuzzTarget:
    running: RunningServer
    channel: grpc.Channel
    client: VecserveClient
    services: set[str]
    guard: GuardState


@pytest.fixture(scope="module")
def target(encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    settings_ = Settings(
        listen="127.0.0.1:0",
        data_dir=tmp_path_factory.mktemp("fuzz") / "data",
        max_texts_per_request=MAX_TEXTS,
        max_text_characters=MAX_CHARACTERS,
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_documents_per_request=MAX_TEXTS,
    )
    running = create_server(settings_, encoder=encoder)
    address = f"127.0.0.1:{running.port}"
    channel = grpc.insecure_channel(address)
    client = VecserveClient(address, timeout=CALL_TIMEOUT)
    client.create_index(GUARD)
    texts = ["a quiet river", "a noisy street", "fresh bread", "old books", "loud machines", "green hills"]
    client.upsert(
        GUARD,
        [
            {"id": f"g{n}", "text": text, "metadata": {"n": n, "even": n % 2 == 0}}
            for n, text in enumerate(texts)
        ],
    )
    client.create_index("scratch")
    client.create_index("tiny", dimension=TINY_DIMENSION)
    client.create_index(VOCABULARY)
    client.upsert(
        VOCABULARY, [{"id": word, "text": word} for word in ("king", "queen", "man", "woman", "river")]
    )
    yield FuzzTarget(running, channel, client, served_services(channel), guard_state(client))
    client.close()
    channel.close()
    running.stop(grace=2)


def registered(target: FuzzTarget, rpc: Rpc) -> bool:
    return rpc.service in target.services


def assert_proper(code: grpc.StatusCode, rpc: Rpc, request: object) -> None:
    assert code in PROPER_CODES, f"{rpc} answered {code.name} to {request!r}"[:3000]


def outcome_of(target: FuzzTarget, rpc: Rpc, request: Message | list[Message]) -> grpc.StatusCode:
    try:
        call(target.channel, rpc, request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        code = status_code(error)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert error.details(), f"{rpc}: INVALID_ARGUMENT must say what is wrong"  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


RPCS = all_rpcs()


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_random_requests_get_proper_answers(target: FuzzTarget, rpc: Rpc) -> None:
    if not registered(target, rpc):
        pytest.skip(f"{rpc.service} is not served")

    @FUZZ_SETTINGS
    @given(request=request_strategy(rpc))
    def check(request: Message | list[Message]) -> None:
        assert_proper(outcome_of(target, rpc, request), rpc, request)

    check()


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_random_bytes_get_proper_answers(target: FuzzTarget, rpc: Rpc) -> None:
    if not registered(target, rpc):
        pytest.skip(f"{rpc.service} is not served")

    @settings(FUZZ_SETTINGS, max_examples=30)
    @given(payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=3 if rpc.client_streaming else 1))
    def check(payloads: list[bytes]) -> None:
        try:
            call_raw(target.channel, rpc, payloads, timeout=CALL_TIMEOUT)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = status_code(error)
        assert_proper(code, rpc, payloads)

    check()


def invalid_utf8_message(rpc: Rpc) -> bytes | None:
    """A request whose first string field holds bytes that are not UTF-8 (protobuf must refuse it)."""
    for field in rpc.request_type.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            tag = (field.number << 3) | 2
            return bytes([tag]) + bytes([2]) + b"\xc3\x28"
    return None


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_invalid_utf8_is_invalid_argument(target: FuzzTarget, rpc: Rpc) -> None:
    if not registered(target, rpc):
        pytest.skip(f"{rpc.service} is not served")
    payload = invalid_utf8_message(rpc)
    if payload is None:
        pytest.skip(f"{rpc} has no string field")
    with pytest.raises(grpc.RpcError) as caught:
        call_raw(target.channel, rpc, [payload], timeout=CALL_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in caught.value.details()


@pytest.mark.parametrize("length", [1000, 50_000])
def test_errors_about_huge_inputs_still_reach_the_client(target: FuzzTarget, length: int) -> None:
    """The status message quotes the input; it is cut to fit in the trailers clients accept."""
    with pytest.raises(grpc.RpcError) as caught:
        target.client.get_index("名" * length)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details()
    assert len(details.encode()) < 2000
    assert details.startswith("index_name '名名")
    assert details.endswith("use 1 to 64 letters, digits, '-' or '_'")


def test_an_oversized_message_is_refused(target: FuzzTarget) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        target.client.embed(["word " * 1000] * 60)  # about 300 kB, over the 256 kB limit
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@st.composite
def batch_with_one_bad_document(draw: st.DrawFn) -> tuple[list[index_pb2.Document], int]:
    good = [
        index_pb2.Document(id=f"new-{number}", text=draw(st.sampled_from(["rain", "snow", "wind"])))
        for number in range(draw(st.integers(0, 4)))
    ]
    bad = draw(
        st.sampled_from(
            [
                index_pb2.Document(id="bad", vector=[math.nan] * 384),
                index_pb2.Document(id="bad", vector=[1.0, 2.0]),
                index_pb2.Document(id="bad", vector=[0.0] * 384),
                index_pb2.Document(id="x" * 257, text="too long an id"),
                index_pb2.Document(id="bad", text=""),
                index_pb2.Document(id="bad", text="y" * (MAX_CHARACTERS + 1)),
                index_pb2.Document(
                    id="bad", text="ok", metadata={"": index_pb2.MetadataValue(string_value="v")}
                ),
                index_pb2.Document(id="bad", text="ok", metadata={"k": index_pb2.MetadataValue()}),
                index_pb2.Document(
                    id="bad", text="ok", metadata={"k": index_pb2.MetadataValue(number_value=math.inf)}
                ),
            ]
        )
    )
    position = draw(st.integers(0, len(good)))
    return [*good[:position], bad, *good[position:]], position


@FUZZ_SETTINGS
@given(case=batch_with_one_bad_document())
def test_a_batch_with_one_bad_document_changes_nothing(target: FuzzTarget, case: tuple[list, int]) -> None:
    documents, position = case
    with pytest.raises(grpc.RpcError) as caught:
        target.client.upsert(GUARD, documents)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"documents[{position}]" in caught.value.details()
    assert guard_state(target.client) == target.guard


def test_the_server_still_serves_and_the_guard_is_untouched(target: FuzzTarget) -> None:
    """Runs after the fuzzing above (pytest keeps file order)."""
    health = health_pb2_grpc.HealthStub(target.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    vectors = target.client.embed_array(["still here"])
    assert vectors.shape == (1, 384) and np.isfinite(vectors).all()
    assert guard_state(target.client) == target.guard

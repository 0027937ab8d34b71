"""Bearer-token authentication, for every transport: a tokens file gives each token a role, and
access_denial decides whether a call may go on (each transport only answers the denial on its wire).

The tokens file holds one `ROLE TOKEN` pair per line (`#` starts a comment, blank lines are
skipped). A `read` token may call the RPCs in READ_RPCS; a `write` token may call everything.
Which RPCs exist is read from the proto descriptors, so an RPC added to a .proto file is
protected at once: it needs a write token until it is added to READ_RPCS. Health checking and
reflection stay open so probes, load balancers and `grpcurl list` work without a token.

Tokens are compared in constant time against every known token, and never logged.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vecserve.v1 import analogy_pb2, embedding_pb2, index_pb2

from service.errors import InvalidSettings

AUTHORIZATION_HEADER = "authorization"
BEARER_PREFIX = "bearer "
# Short tokens can be guessed; 16 characters of a random token carry enough entropy.
MIN_TOKEN_CHARACTERS = 16
MAX_TOKEN_CHARACTERS = 4096
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: what metadata values can carry

# The proto files whose services the tokens protect.
PROTECTED_FILES = (embedding_pb2.DESCRIPTOR, index_pb2.DESCRIPTOR, analogy_pb2.DESCRIPTOR)
# Services anyone may call: probes and tooling must work without credentials.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


class Role(enum.Enum):
    READ = "read"
    WRITE = "write"


# RPCs that only read (by "Service/Method"); every other RPC of PROTECTED_FILES needs a write token.
READ_RPCS = frozenset(
    {
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
)


def protected_methods() -> dict[str, Role]:
    """Every RPC of the protected services as its gRPC path ("/pkg.Service/Method") -> required role."""
    methods: dict[str, Role] = {}
    for file_descriptor in PROTECTED_FILES:
        for service in file_descriptor.services_by_name.values():
            for method in service.methods:
                short_name = f"{service.name}/{method.name}"
                role = Role.READ if short_name in READ_RPCS else Role.WRITE
                methods[f"/{service.full_name}/{method.name}"] = role
    return methods


def _service_of(method_path: str) -> str:
    return method_path.lstrip("/").split("/", 1)[0]


@dataclass(frozen=True)
class TokenTable:
    """Known tokens, kept only as SHA-256 digests, each with its role."""

    digests: tuple[tuple[bytes, Role], ...]

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[Role, str]]) -> TokenTable:
        return cls(tuple((_digest(token), role) for role, token in pairs))

    def role_of(self, token: str) -> Role | None:
        """The role of a token, or None. Compares with every known token so timing reveals nothing."""
        presented = _digest(token)
        found: Role | None = None
        for digest, role in self.digests:
            if hmac.compare_digest(presented, digest):
                found = role
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def load_tokens(path: Path) -> TokenTable:
    """Reads a tokens file; raises InvalidSettings naming the file and line of the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidSettings(f"cannot read the tokens file {path}: {error}") from error
    pairs: list[tuple[Role, str]] = []
    seen: set[str] = set()
    roles = ", ".join(role.value for role in Role)
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        parts = line.split()
        if len(parts) != 2:
            raise InvalidSettings(f"{where}: expected 'ROLE TOKEN' ({roles}), got {len(parts)} words")
        role_name, token = parts
        try:
            role = Role(role_name.lower())
        except ValueError:
            raise InvalidSettings(f"{where}: unknown role {role_name!r}; use one of {roles}") from None
        if not _TOKEN.fullmatch(token):
            raise InvalidSettings(f"{where}: the token must be printable ASCII without spaces")
        if not MIN_TOKEN_CHARACTERS <= len(token) <= MAX_TOKEN_CHARACTERS:
            raise InvalidSettings(
                f"{where}: the token has {len(token)} characters; use {MIN_TOKEN_CHARACTERS} to "
                f"{MAX_TOKEN_CHARACTERS}, for example from: "
                "python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        if token in seen:
            raise InvalidSettings(f"{where}: this token is already listed on an earlier line")
        seen.add(token)
        pairs.append((role, token))
    if not pairs:
        raise InvalidSettings(f"the tokens file {path} holds no tokens: nobody could call the server")
    return TokenTable.from_pairs(pairs)


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry, or None."""
    for key, value in metadata or ():
        if key == AUTHORIZATION_HEADER and isinstance(value, str):
            if value[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
                return value[len(BEARER_PREFIX) :].strip()
            return None
    return None


class DenialKind(enum.Enum):
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"


@dataclass(frozen=True)
class Denial:
    """Why a call may not go on: no valid token (UNAUTHENTICATED) or too weak a role (PERMISSION_DENIED)."""

    kind: DenialKind
    message: str


def required_role(method_path: str, required: Mapping[str, Role]) -> Role | None:
    """None for open services; unknown methods need a write token (deny by default)."""
    if _service_of(method_path) in OPEN_SERVICES:
        return None
    return required.get(method_path, Role.WRITE)


def access_denial(tokens: TokenTable, method_path: str, required: Role, token: str | None) -> Denial | None:
    """None when `token` may call `method_path` (which needs the `required` role)."""
    if token is None:
        return Denial(
            DenialKind.UNAUTHENTICATED,
            "this server requires a token: send 'authorization: Bearer <token>' "
            "(vecserve --token or VECSERVE_TOKEN)",
        )
    role = tokens.role_of(token)
    if role is None:
        return Denial(DenialKind.UNAUTHENTICATED, "the token is not valid")
    if required is Role.WRITE and role is not Role.WRITE:
        return Denial(
            DenialKind.PERMISSION_DENIED, f"{method_path} needs a write token; this token may only read"
        )
    return None

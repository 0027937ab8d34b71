"""`vecserve serve`: run the server in the foreground."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.config import Settings


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the server",
        description="Run the vecserve gRPC server until SIGTERM or SIGINT. "
        "Every option can also be set through the VECSERVE_* variable named after it.",
    )
    parser.add_argument("--listen", help="HOST:PORT to listen on (VECSERVE_LISTEN; default 127.0.0.1:50051)")
    parser.add_argument(
        "--data-dir", help="directory of persisted indexes (VECSERVE_DATA_DIR; default indexes)"
    )
    add_server_options(parser)
    parser.set_defaults(handler=run)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose the model and where it runs (`serve`, `cluster index`)."""
    parser.add_argument(
        "--model",
        help="sentence-transformers model directory or name (VECSERVE_MODEL; default: the packaged "
        "all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where the model runs (VECSERVE_DEVICE; default auto)",
    )
    parser.add_argument(
        "--backend",
        choices=["torch", "openvino", "openvino-int8"],
        help="what runs the model on the CPU (VECSERVE_BACKEND; default torch): openvino (bfloat16 where "
        "the CPU has it, else float32) or openvino-int8 (calibrated int8, fastest on most CPUs), built "
        "once into DATA_DIR/.models and checked against torch at start-up; needs "
        "pip install 'vecserve[openvino]'",
    )


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Every server setting but the address and the data directory: model, limits, batching, tokens,
    TLS, metrics and logs (`serve`, `cluster serve`)."""
    add_model_options(parser)
    parser.add_argument("--max-texts-per-request", type=int, help="VECSERVE_MAX_TEXTS_PER_REQUEST")
    parser.add_argument("--max-text-characters", type=int, help="VECSERVE_MAX_TEXT_CHARACTERS")
    parser.add_argument(
        "--max-request-characters",
        type=int,
        help="characters in all texts of one request (VECSERVE_MAX_REQUEST_CHARACTERS)",
    )
    parser.add_argument("--max-message-bytes", type=int, help="VECSERVE_MAX_MESSAGE_BYTES")
    parser.add_argument("--worker-threads", type=int, help="VECSERVE_WORKER_THREADS")
    parser.add_argument(
        "--shutdown-grace-seconds",
        type=float,
        help="time in-flight calls get to finish on SIGTERM/SIGINT (VECSERVE_SHUTDOWN_GRACE_SECONDS)",
    )
    parser.add_argument(
        "--max-documents-per-request",
        type=int,
        help="documents per upsert or delete call and per streamed message "
        "(VECSERVE_MAX_DOCUMENTS_PER_REQUEST)",
    )
    parser.add_argument(
        "--index-snapshot-every",
        type=int,
        help="changes to an index after which its search structure is saved, bounding the catch-up "
        "at the next start (VECSERVE_INDEX_SNAPSHOT_EVERY)",
    )
    parser.add_argument(
        "--vocabulary-size",
        type=int,
        help="most frequent English words in the built-in analogy vocabulary (VECSERVE_VOCABULARY_SIZE)",
    )
    parser.add_argument(
        "--no-dynamic-batching",
        dest="dynamic_batching",
        action="store_const",
        const=False,
        help="run each encoder call on its own instead of gathering concurrent calls "
        "(VECSERVE_DYNAMIC_BATCHING=false)",
    )
    parser.add_argument(
        "--no-search-batching",
        dest="search_batching",
        action="store_const",
        const=False,
        help="run each Search call on its own instead of merging concurrent ones "
        "(VECSERVE_SEARCH_BATCHING=false)",
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        help="padded tokens per gathered batch (VECSERVE_MAX_BATCH_TOKENS; default 0: 16,384 on the CPU, "
        "131,072 on CUDA)",
    )
    parser.add_argument(
        "--max-batch-wait-ms", type=float, help="longest wait to fill a batch (VECSERVE_MAX_BATCH_WAIT_MS)"
    )
    parser.add_argument(
        "--max-queued-texts",
        type=int,
        help="texts waiting for the model before calls are refused "
        "with RESOURCE_EXHAUSTED (VECSERVE_MAX_QUEUED_TEXTS)",
    )
    parser.add_argument(
        "--model-workers",
        type=int,
        help="batches the model runs at the same time, so that one is computed while the next is "
        "gathered (VECSERVE_MODEL_WORKERS; default 0: 2 for torch on a multi-core machine, else 1)",
    )
    parser.add_argument(
        "--background-batch-tokens",
        type=int,
        help="padded tokens per batch of background work, the vocabulary build: the longest a live call "
        "waits for it (VECSERVE_BACKGROUND_BATCH_TOKENS; default 512)",
    )
    parser.add_argument(
        "--background-share",
        type=float,
        help="share of the model's time background work keeps under steady live load, between 0 and 1: "
        "it is done within about 1 / share times its idle time (VECSERVE_BACKGROUND_SHARE; default 0.1)",
    )
    parser.add_argument(
        "--background-quiet-ms",
        type=float,
        help="quiet time of live calls after which background work runs freely "
        "(VECSERVE_BACKGROUND_QUIET_MS; default 50)",
    )
    parser.add_argument(
        "--tokens-file",
        help="require bearer tokens: a file of 'ROLE TOKEN' lines, role read or write "
        "(VECSERVE_TOKENS_FILE; default: no authentication)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve TLS (VECSERVE_TLS_CERT)")
    parser.add_argument("--tls-key", help="PEM key of --tls-cert (VECSERVE_TLS_KEY)")
    parser.add_argument(
        "--tls-client-ca",
        help="PEM CA certificates: require client certificates they signed, mutual TLS "
        "(VECSERVE_TLS_CLIENT_CA)",
    )
    parser.add_argument(
        "--http-listen",
        help="HOST:PORT to serve the same API as HTTP/JSON (Connect protocol) on, with the same tokens "
        "and TLS (VECSERVE_HTTP_LISTEN; default off)",
    )
    parser.add_argument(
        "--metrics-listen",
        help="HOST:PORT to serve Prometheus metrics on at /metrics (VECSERVE_METRICS_LISTEN; default off)",
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="log lines as text or JSON (VECSERVE_LOG_FORMAT)"
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the VECSERVE_* variables, with every flag given on the command line winning."""
    from service.config import Settings, settings_from_env

    flags = {field.name: getattr(args, field.name) for field in dataclasses.fields(Settings)}
    return settings_from_env(**flags)


def run(args: argparse.Namespace) -> int:
    # Imported here so client-only commands start fast and need no model stack.
    from service.errors import InvalidSettings
    from service.grpc_server.server import serve

    try:
        return serve(settings_from_args(args))
    except InvalidSettings as error:
        print(f"error: invalid settings: {error}", file=sys.stderr)
    except Exception as error:  # a start-up failure is one line for the operator, never a traceback
        print(f"error: cannot start: {describe_failure(error)}", file=sys.stderr)
    return 2


def describe_failure(error: BaseException) -> str:
    """One line: the error's own words, with its type when they do not say what went wrong."""
    from service.errors import VecserveError

    text = " ".join(str(error).split())
    if isinstance(error, VecserveError | OSError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

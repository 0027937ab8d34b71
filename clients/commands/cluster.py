"""`vecserve cluster index|serve`: batch indexing with Ray Data and sharded serving with Ray Serve."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from vecserve.v1 import index_pb2

from clients.client import make_document
from clients.commands.index import (
    add_index_options,
    add_reader_options,
    create_request,
    read_options,
    upload_batch_size,
)
from clients.commands.serve import add_model_options, add_server_options, describe_failure, settings_from_args
from clients.commands.shared import connect, print_json
from service.common.document_files import FORMAT_HELP

if TYPE_CHECKING:
    from tqdm import tqdm

    from service.cluster.indexing import EncoderOptions, ErrorBudget, PoolOptions

# Exit statuses of `cluster index`: everything stored; bad records skipped (at most --max-errors);
# stopped (too many bad records, or a failure), with what was stored before kept.
EXIT_ALL_STORED = 0
EXIT_RECORDS_SKIPPED = 1
EXIT_STOPPED = 2


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    cluster = subparsers.add_parser("cluster", help="index and serve across a Ray cluster")
    actions = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")

    index = actions.add_parser(
        "index",
        parents=[common],
        help="embed files on a Ray cluster into a sharded data directory (or a running server)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read documents from files, embed them on a pool of encoder actors across a Ray "
        "cluster, and store them into DIR/shard-K by crc32(id) %% N: each shard an ordinary vecserve "
        "data directory, which `cluster serve` (or `serve` for one shard) serves. Documents that carry "
        "a vector are not embedded again. Re-running, or adding files, upserts by id. With --to, the "
        "vectors are streamed into a running server instead.",
        epilog=FORMAT_HELP
        + f"""

exit status: {EXIT_ALL_STORED} every document stored; {EXIT_RECORDS_SKIPPED} bad records were skipped
  (at most --max-errors); {EXIT_STOPPED} stopped early (too many bad records, or an error), with the
  documents stored until then kept""",
    )
    index.add_argument("inputs", nargs="+", metavar="INPUT", type=Path, help="files to read")
    index.add_argument("--index", required=True, metavar="NAME", help="index to store into")
    index.add_argument("--out", type=Path, metavar="DIR", help="sharded data directory to write")
    index.add_argument(
        "--shards", type=int, metavar="N", help="shards of a new DIR (an existing DIR keeps its own)"
    )
    index.add_argument(
        "--to",
        metavar="ADDRESS",
        help="instead of --out: stream the vectors into the server (or cluster) at HOST:PORT",
    )
    add_ray_options(index)
    index.add_argument("--actors", type=int, default=1, help="encoder actors (default 1)")
    index.add_argument(
        "--cpus-per-actor", type=float, default=1.0, help="CPUs each actor reserves (default 1)"
    )
    index.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs each actor reserves (default 0: CPU)"
    )
    index.add_argument("--batch-size", type=int, default=256, help="documents per model call (default 256)")
    index.add_argument(
        "--max-errors", type=int, default=0, help="bad records to skip before stopping (default 0)"
    )
    index.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    add_model_options(index)
    add_index_options(index)
    add_reader_options(index)
    index.set_defaults(handler=run_index)

    serve = actions.add_parser(
        "serve",
        help="serve a sharded data directory on Ray Serve",
        description="Serve the vecserve.v1 API (gRPC, health, reflection, tokens, TLS, as `vecserve serve`) "
        "over the shards of DIR: an encoder deployment of R replicas, one deployment per shard and an "
        "ingress on this node listening on --listen. Runs until SIGTERM or SIGINT. The server options "
        "can also be set through their VECSERVE_* variables.",
    )
    serve.add_argument("--data-dir", required=True, help="the sharded data directory (DIR of cluster index)")
    serve.add_argument(
        "--listen", help="HOST:PORT the ingress listens on, on this node (default 127.0.0.1:50051)"
    )
    serve.add_argument(
        "--shards", type=int, metavar="N", help="shards of a new DIR (an existing DIR keeps its own)"
    )
    add_ray_options(serve)
    serve.add_argument("--encoder-replicas", type=int, default=1, help="encoder replicas (default 1)")
    serve.add_argument(
        "--max-encoder-replicas",
        type=int,
        default=0,
        help="let Serve scale the encoders with the load, up to this many (default: no autoscaling)",
    )
    serve.add_argument(
        "--cpus-per-encoder", type=float, default=1.0, help="CPUs each encoder reserves (default 1)"
    )
    serve.add_argument(
        "--gpus-per-encoder", type=float, default=0.0, help="GPUs each encoder reserves (default 0)"
    )
    serve.add_argument(
        "--cpus-per-shard", type=float, default=1.0, help="CPUs each shard reserves (default 1)"
    )
    serve.add_argument(
        "--shard-resources",
        type=json.loads,
        default={},
        metavar="JSON",
        help="custom Ray resources each shard needs, to keep shards on the nodes started with them, e.g. "
        "'{\"vecserve_shard\": 1}' with `ray start --resources '{\"vecserve_shard\": 1}'`",
    )
    serve.add_argument(
        "--shard-timeout-seconds",
        type=float,
        default=30.0,
        help="a shard that does not answer within this is reported UNAVAILABLE (default 30)",
    )
    serve.add_argument(
        "--encoder-timeout-seconds",
        type=float,
        default=120.0,
        help="an encoder call not answered within this is UNAVAILABLE (default 120)",
    )
    add_server_options(serve)
    serve.set_defaults(handler=run_serve)


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray cluster to run on (HOST:PORT of its head, or auto); default: a local Ray started "
        "for the command",
    )


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_STOPPED


def _report(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def run_index(args: argparse.Namespace) -> int:
    # Imported here so that the other commands start without Ray.
    from tqdm import tqdm

    from service.api.index import KINDS, METRICS, params_from_request
    from service.cluster.indexing import (
        EncoderOptions,
        ErrorBudget,
        IndexRequest,
        PoolOptions,
        ShardWriter,
        TooManyErrors,
        embedded_batches,
    )
    from service.cluster.manifest import open_manifest
    from service.cluster.runtime import ray_session
    from service.config import settings_from_env
    from service.errors import InvalidSettings, VecserveError
    from service.index.model import Metric

    if (args.out is None) == (args.to is None):
        return _usage_error("give either --out DIR (a sharded data directory) or --to ADDRESS (a server)")
    for option in ("actors", "batch_size"):
        if getattr(args, option) < 1:
            return _usage_error(f"--{option.replace('_', '-')} must be at least 1")
    if args.max_errors < 0:
        return _usage_error("--max-errors must not be negative")
    request = create_request(args.index, args)
    index = IndexRequest(
        args.index,
        request.dimension,
        METRICS[request.metric],
        KINDS[request.kind],
        params_from_request(request),
    )
    try:
        settings = settings_from_env(
            model=args.model, device=args.device, backend=args.backend, data_dir=args.out
        )
        manifest = open_manifest(args.out, args.shards) if args.out is not None else None
    except InvalidSettings as error:
        return _usage_error(str(error))
    encoder = EncoderOptions(
        settings.model_name_or_path, settings.device, settings.backend, settings.model_cache_dir
    )
    pool = PoolOptions(args.actors, args.cpus_per_actor, args.gpus_per_actor, args.batch_size)
    budget = ErrorBudget(args.max_errors, _report)
    started = time.monotonic()
    stored = 0
    stopped: str | None = None
    try:
        with (
            ray_session(args.ray_address, local_cpus=pool.actors * pool.cpus_per_actor),
            tqdm(
                unit="docs", desc=f"indexing {args.index}", disable=True if args.no_progress else None
            ) as bar,
        ):
            if args.out is not None:
                normalize = index.metric is Metric.COSINE
                writer = ShardWriter(args.out, manifest, index, settings.model_name_or_path)
                try:
                    for batch in embedded_batches(args.inputs, read_options(args), encoder, pool, normalize):
                        for error in batch.errors:
                            budget.add(error)
                        written = writer.write(batch, budget)
                        stored += written
                        bar.update(written)
                finally:
                    writer.close()
            else:
                stored, stopped = _stream_to_server(args, request, budget, bar, encoder, pool)
    except (TooManyErrors, InvalidSettings, VecserveError, OSError) as error:
        stopped = str(error)
    except grpc.RpcError as error:
        stopped = f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
    seconds = time.monotonic() - started
    rate = stored / seconds if seconds > 0 else 0.0
    if stopped:
        _report(stopped)
    if args.json:
        print_json(
            {
                "index": args.index,
                **(
                    {"out": str(args.out), "shards": manifest.shard_count}
                    if args.out is not None
                    else {"to": args.to}
                ),
                "stored": stored,
                "bad_records": budget.count,
                "stopped": stopped,
                "seconds": round(seconds, 3),
                "documents_per_second": round(rate, 1),
            }
        )
    else:
        where = f"{args.out} ({manifest.shard_count} shards)" if manifest is not None else args.to
        skipped = f"; {budget.count} bad records skipped" if budget.count else ""
        print(
            f"stored {stored} documents in {args.index} at {where} "
            f"({seconds:.1f} s, {rate:.0f} documents/s){skipped}"
        )
    if stopped:
        return EXIT_STOPPED
    return EXIT_RECORDS_SKIPPED if budget.count else EXIT_ALL_STORED


def _stream_to_server(
    args: argparse.Namespace,
    request: index_pb2.CreateIndexRequest,
    budget: ErrorBudget,
    bar: tqdm,
    encoder: EncoderOptions,
    pool: PoolOptions,
) -> tuple[int, str | None]:
    """Streams the embedded documents into the server at --to through StreamUpsertDocuments, the
    index created there first unless it exists. Returns how many the server stored, and why the
    stream stopped early (None when it did not)."""
    from service.api.index import METRICS
    from service.cluster.indexing import TooManyErrors, embedded_batches
    from service.index.model import Metric

    stopped: list[str] = []
    with connect(argparse.Namespace(**{**vars(args), "address": args.to})) as client:
        try:
            server_index = client.get_index(args.index)
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise
            server_index = client.indexes.CreateIndex(request, timeout=client.timeout).index
        normalize = METRICS[server_index.metric] is Metric.COSINE
        batch_size = upload_batch_size(None, client.model_info().max_documents_per_request)

        def messages() -> Iterator[list[index_pb2.Document]]:
            try:
                for batch in embedded_batches(args.inputs, read_options(args), encoder, pool, normalize):
                    for error in batch.errors:
                        budget.add(error)
                    documents = [
                        make_document(id=d.id, text=d.text, metadata=d.metadata, vector=d.vector)
                        for d in batch.documents
                    ]
                    for start in range(0, len(documents), batch_size):
                        chunk = documents[start : start + batch_size]
                        yield chunk
                        bar.update(len(chunk))
            except TooManyErrors as error:
                stopped.append(str(error))  # the stream ends here; what was sent stays stored

        response = client.stream_upsert(args.index, messages())
    return response.upserted_count, stopped[0] if stopped else None


def run_serve(args: argparse.Namespace) -> int:
    from service.cluster.manifest import load_manifest
    from service.cluster.runtime import ray_session
    from service.cluster.serving import ClusterSettings, serve_cluster
    from service.errors import InvalidSettings

    try:
        settings = settings_from_args(args)
        cluster = ClusterSettings(
            encoder_replicas=args.encoder_replicas,
            max_encoder_replicas=args.max_encoder_replicas,
            cpus_per_encoder=args.cpus_per_encoder,
            gpus_per_encoder=args.gpus_per_encoder,
            cpus_per_shard=args.cpus_per_shard,
            shard_resources=args.shard_resources,
            shard_timeout_seconds=args.shard_timeout_seconds,
            encoder_timeout_seconds=args.encoder_timeout_seconds,
        )
        manifest = load_manifest(settings.data_dir)
        shard_count = manifest.shard_count if manifest is not None else args.shards or 1
        with ray_session(
            args.ray_address, local_cpus=cluster.cpus_needed + shard_count * cluster.cpus_per_shard
        ):
            return serve_cluster(settings, cluster, args.shards)
    except InvalidSettings as error:
        print(f"error: invalid settings: {error}", file=sys.stderr)
    except Exception as error:  # a start-up failure is one line for the operator, never a traceback
        print(f"error: cannot start: {describe_failure(error)}", file=sys.stderr)
    return EXIT_STOPPED

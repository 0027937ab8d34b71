"""`vecserve index create|list|get|delete|import-vectors`, `vecserve add`, `vecserve search`: the
IndexService."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from vecserve.v1 import index_pb2

from clients.client import make_document, metadata_value, python_value
from clients.commands import word_vectors
from clients.commands.shared import connect, print_json
from service.common import document_files
from service.common.document_files import FORMAT_HELP, FORMATS, InputError, ReadOptions, cell_value

# Documents per streamed message of `vecserve add`, unless the server accepts fewer.
DEFAULT_BATCH_SIZE = 256
METRIC_NAMES = {"cosine": "cosine", "inner_product": "inner_product", "ip": "inner_product", "l2": "l2"}
KIND_NAMES = ("flat", "hnsw", "ivf_flat", "ivf_pq", "sq8")
_FILTER = re.compile(r"(?P<key>[^=<>]+?)\s*(?P<op>>=|<=|>|<|=)\s*(?P<value>.*)", re.DOTALL)
_RANGE_FIELDS = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}

FILTER_HELP = """\
filters (--filter, repeatable, all must hold):
  key=value        equality; value is a number, true/false, or a string
  key=a,b,c        any_of: the value is one of a, b, c
  key>=n  key>n  key<=n  key<n
                   numeric range; repeat for both ends: --filter 'year>=2000' --filter 'year<2010'
  double-quote a value to keep it a string: --filter 'zip="02134"' --filter 'name="Smith, J."'
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    index = subparsers.add_parser("index", help="create, list, describe and delete indexes")
    actions = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    create = actions.add_parser(
        "create",
        parents=[common],
        help="create an index",
        description="Create an index. Kinds that train (ivf_flat, ivf_pq, sq8) search exactly until "
        "they hold enough vectors (see `index get`), then train and switch.",
    )
    create.add_argument("name", metavar="NAME")
    add_index_options(create)
    create.set_defaults(handler=run_create)

    listing = actions.add_parser("list", parents=[common], help="list indexes")
    listing.set_defaults(handler=run_list)

    get = actions.add_parser("get", parents=[common], help="describe an index")
    get.add_argument("name", metavar="NAME")
    get.set_defaults(handler=run_get)

    delete = actions.add_parser("delete", parents=[common], help="delete an index and all its documents")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=run_delete)

    word_vectors.register_import(actions, common)

    add = subparsers.add_parser(
        "add",
        parents=[common],
        help="load documents from files into an index",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Stream documents into an index in batches, with a progress bar. Each batch is "
        "stored durably as it arrives; re-running is safe, since a document with the same id replaces "
        "the old one.",
        epilog=FORMAT_HELP,
    )
    add.add_argument("index_name", metavar="INDEX")
    add.add_argument("files", nargs="+", metavar="FILE", type=Path)
    add.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"documents per streamed message, at most the server's max_documents_per_request "
        f"(default {DEFAULT_BATCH_SIZE}, or that limit when lower)",
    )
    add_reader_options(add)
    add.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    add.set_defaults(handler=run_add)

    search = subparsers.add_parser(
        "search",
        parents=[common],
        help="search an index by meaning",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search an index with one or more text queries, or with a stored document (--like).",
        epilog=FILTER_HELP,
    )
    search.add_argument("index_name", metavar="INDEX")
    search.add_argument("queries", nargs="*", metavar="QUERY", help="query texts")
    search.add_argument("-k", type=int, default=10, help="hits per query, 1 to 1000 (default 10)")
    search.add_argument(
        "--filter", action="append", default=[], metavar="EXPR", help="metadata condition (see below)"
    )
    search.add_argument(
        "--like", action="append", default=[], metavar="ID", help="search with a stored document"
    )
    search.add_argument("--vectors", action="store_true", help="include hit vectors (with --json)")
    search.add_argument(
        "--ids-only", action="store_true", help="hits with ids and scores alone, no text or metadata"
    )
    search.add_argument(
        "--ef-search",
        type=int,
        metavar="N",
        help="hnsw: candidate list size for this search, 1 to 4096 (default: the index's)",
    )
    search.add_argument(
        "--nprobe",
        type=int,
        metavar="N",
        help="ivf_flat, ivf_pq: lists visited for this search, 1 to nlist (default: the index's)",
    )
    search.set_defaults(handler=run_search)


def add_index_options(parser: argparse.ArgumentParser) -> None:
    """The options that say what index to create (`index create`, `cluster index`)."""
    parser.add_argument("--dimension", type=int, default=0, help="vector dimension (default: the model's)")
    parser.add_argument("--metric", choices=sorted(METRIC_NAMES), default="cosine", help="default: cosine")
    parser.add_argument("--kind", choices=KIND_NAMES, default="flat", help="default: flat (exact)")
    parser.add_argument("--m", type=int, default=0, help="hnsw: neighbours per node (default 32)")
    parser.add_argument(
        "--ef-construction", type=int, default=0, help="hnsw: build-time breadth (default 80)"
    )
    parser.add_argument("--ef-search", type=int, default=0, help="hnsw: search-time breadth (default 64)")
    parser.add_argument(
        "--nlist", type=int, default=0, help="ivf_flat, ivf_pq: inverted lists (default 1024)"
    )
    parser.add_argument("--nprobe", type=int, default=0, help="ivf_flat, ivf_pq: lists searched (default 16)")
    parser.add_argument("--pq-m", type=int, default=0, help="ivf_pq: sub-quantizers (default dimension/8)")
    parser.add_argument("--nbits", type=int, default=0, help="ivf_pq: bits per code (default 8)")


def add_reader_options(parser: argparse.ArgumentParser) -> None:
    """The options that say how input files are read (`add`, `cluster index`)."""
    parser.add_argument(
        "--format", choices=FORMATS, default="auto", help="input format (default: by extension)"
    )
    parser.add_argument("--text-column", default="text", help="CSV column holding the text (default: text)")
    parser.add_argument("--id-column", default="id", help="CSV column holding the id (default: id)")


def read_options(args: argparse.Namespace) -> ReadOptions:
    return ReadOptions(args.format, args.text_column, args.id_column)


def create_request(name: str, args: argparse.Namespace) -> index_pb2.CreateIndexRequest:
    """The CreateIndexRequest the index options describe."""
    request = index_pb2.CreateIndexRequest(
        name=name,
        dimension=args.dimension,
        metric=index_pb2.Metric.Value("METRIC_" + METRIC_NAMES[args.metric].upper()),
        kind=index_pb2.IndexKind.Value("INDEX_KIND_" + args.kind.upper()),
    )
    params = kind_params(args)
    if params is not None:
        getattr(request, args.kind).CopyFrom(params)
    return request


# -- index management -------------------------------------------------------------------------------


def kind_params(args: argparse.Namespace) -> Any:
    if args.kind == "hnsw":
        return index_pb2.HnswParams(m=args.m, ef_construction=args.ef_construction, ef_search=args.ef_search)
    if args.kind == "ivf_flat":
        return index_pb2.IvfParams(nlist=args.nlist, nprobe=args.nprobe)
    if args.kind == "ivf_pq":
        return index_pb2.IvfPqParams(
            ivf=index_pb2.IvfParams(nlist=args.nlist, nprobe=args.nprobe), m=args.pq_m, nbits=args.nbits
        )
    if args.kind == "sq8":
        return index_pb2.Sq8Params()
    return None


def _index_fields(index: index_pb2.Index) -> dict[str, Any]:
    fields = MessageToDict(index, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    fields["metric"] = index_pb2.Metric.Name(index.metric).removeprefix("METRIC_").lower()
    fields["kind"] = index_pb2.IndexKind.Name(index.kind).removeprefix("INDEX_KIND_").lower()
    return fields


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _describe(index: index_pb2.Index) -> None:
    fields = _index_fields(index)
    params = index.WhichOneof("params")
    rows = [
        ("name", index.name),
        ("dimension", index.dimension),
        ("metric", fields["metric"]),
        ("kind", fields["kind"]),
        ("parameters", json.dumps(fields[params]) if params else "-"),
        ("documents", index.document_count),
    ]
    if index.training_threshold:
        state = "yes" if index.trained else f"no (exact search until {index.training_threshold} vectors)"
        rows.append(("trained", state))
    rows += [("memory", _bytes(index.memory_bytes)), ("disk", _bytes(index.disk_bytes))]
    for label, value in rows:
        print(f"{label:<12} {value}")


def run_create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        index = client.create_index(
            args.name,
            dimension=args.dimension,
            metric=METRIC_NAMES[args.metric],
            kind=args.kind,
            params=kind_params(args),
        )
    if args.json:
        print_json(_index_fields(index))
    else:
        _describe(index)
    return 0


def run_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        indexes = client.all_indexes()
    if args.json:
        print_json([_index_fields(index) for index in indexes])
        return 0
    if not indexes:
        print("no indexes")
        return 0
    width = max(4, *(len(index.name) for index in indexes))
    header = f"{'KIND':<8} {'METRIC':<13} {'DIM':>5} {'DOCUMENTS':>10} {'MEMORY':>10} {'DISK':>10}"
    print(f"{'NAME':<{width}}  {header}")
    for index in indexes:
        fields = _index_fields(index)
        print(
            f"{index.name:<{width}}  {fields['kind']:<8} {fields['metric']:<13} {index.dimension:>5} "
            f"{index.document_count:>10} {_bytes(index.memory_bytes):>10} {_bytes(index.disk_bytes):>10}"
        )
    return 0


def run_get(args: argparse.Namespace) -> int:
    with connect(args) as client:
        index = client.get_index(args.name)
    if args.json:
        print_json(_index_fields(index))
    else:
        _describe(index)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: deleting {args.name!r} needs --yes when not run interactively", file=sys.stderr)
            return 2
        answer = input(f"Delete index {args.name!r} and all its documents? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted")
            return 1
    with connect(args) as client:
        client.delete_index(args.name)
    if args.json:
        print_json({"deleted": args.name})
    else:
        print(f"deleted index {args.name}")
    return 0


# -- add --------------------------------------------------------------------------------------------


def read_documents(path: Path, options: ReadOptions) -> Iterator[index_pb2.Document]:
    """The documents of one file, in order; InputError names the file and line of a bad record."""
    for document in document_files.read_documents(path, options):
        yield make_document(
            id=document.id, text=document.text, metadata=document.metadata, vector=document.vector
        )


def _batched(documents: Iterator[index_pb2.Document], size: int) -> Iterator[list[index_pb2.Document]]:
    while batch := list(itertools.islice(documents, size)):
        yield batch


def upload_batch_size(requested: int | None, server_limit: int) -> int:
    """Documents per streamed message: as requested, else DEFAULT_BATCH_SIZE or the server's limit
    when lower. Checked before sending, since the server refuses an oversized message only after
    storing the earlier ones. server_limit 0 (a server that does not report it) checks nothing.
    Raises ValueError for a size the server would refuse."""
    if requested is None:
        return min(DEFAULT_BATCH_SIZE, server_limit) if server_limit else DEFAULT_BATCH_SIZE
    if requested < 1:
        raise ValueError(f"--batch-size must be at least 1, got {requested}")
    if server_limit and requested > server_limit:
        raise ValueError(
            f"--batch-size {requested} is more than the server accepts in one message "
            f"(max_documents_per_request {server_limit})"
        )
    return requested


def run_add(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.batch_size is not None and args.batch_size < 1:
        print(f"error: --batch-size must be at least 1, got {args.batch_size}", file=sys.stderr)
        return 2
    options = read_options(args)
    try:
        # A first pass counts (for the progress bar and ETA) and checks every record before sending any.
        total = sum(1 for path in args.files for _ in read_documents(path, options))
    except (OSError, InputError, UnicodeDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with connect(args) as client:
        try:
            batch_size = upload_batch_size(args.batch_size, client.model_info().max_documents_per_request)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        started = time.monotonic()
        with tqdm(
            total=total,
            unit="docs",
            desc=f"adding to {args.index_name}",
            disable=True if args.no_progress else None,
        ) as progress:

            def batches() -> Iterator[list[index_pb2.Document]]:
                for path in args.files:
                    for batch in _batched(read_documents(path, options), batch_size):
                        yield batch
                        progress.update(len(batch))  # the previous batch has been handed to the stream

            response = client.stream_upsert(args.index_name, batches())
    seconds = time.monotonic() - started
    rate = response.upserted_count / seconds if seconds > 0 else 0.0
    if args.json:
        print_json(
            {
                "index": args.index_name,
                "upserted": response.upserted_count,
                "messages": response.message_count,
                "seconds": round(seconds, 3),
                "documents_per_second": round(rate, 1),
            }
        )
    else:
        print(
            f"stored {response.upserted_count} documents in {args.index_name} "
            f"({seconds:.1f} s, {rate:.0f} documents/s)"
        )
    return 0


# -- search -----------------------------------------------------------------------------------------


def _filter_values(raw: str) -> list[str | float | bool]:
    """Comma-separated filter values; one in double quotes stays a string, commas included."""
    values: list[str | float | bool] = []
    inside: list[str] = []
    outside: list[str] = []
    quoted = in_quotes = False
    for char in [*raw, None]:
        if char == '"':
            in_quotes, quoted = not in_quotes, True
        elif char is None or (char == "," and not in_quotes):
            values.append("".join(inside) if quoted else cell_value("".join(outside).strip()))
            inside, outside, quoted = [], [], False
        else:
            (inside if in_quotes else outside).append(char)
    if in_quotes:
        raise ValueError(f"unclosed quote in {raw!r}")
    return values


def parse_filter(expressions: list[str]) -> index_pb2.Filter:
    """A Filter from --filter expressions (see FILTER_HELP); ValueError explains a bad one."""
    conditions = []
    for expression in expressions:
        match = _FILTER.fullmatch(expression.strip())
        if not match or not match["key"].strip():
            raise ValueError(f"cannot read filter {expression!r}: use key=value, key=a,b or key>=number")
        key, operator, raw = match["key"].strip(), match["op"], match["value"]
        if operator in _RANGE_FIELDS:
            try:
                bound = float(raw)
            except ValueError:
                raise ValueError(f"filter {expression!r}: {operator} needs a number") from None
            numeric_range = index_pb2.NumericRange(**{_RANGE_FIELDS[operator]: bound})
            conditions.append(index_pb2.Condition(key=key, range=numeric_range))
            continue
        values = _filter_values(raw)
        if len(values) == 1:
            conditions.append(index_pb2.Condition(key=key, equals=metadata_value(values[0])))
        else:
            any_of = index_pb2.MetadataValueList(values=[metadata_value(value) for value in values])
            conditions.append(index_pb2.Condition(key=key, any_of=any_of))
    return index_pb2.Filter(conditions=conditions)


def _hit_fields(hit: index_pb2.SearchHit, with_vector: bool, ids_only: bool = False) -> dict[str, Any]:
    fields: dict[str, Any] = {"id": hit.id, "score": round(hit.score, 6)}
    if not ids_only:
        fields["text"] = hit.text
        fields["metadata"] = {key: python_value(value) for key, value in hit.metadata.items()}
    if with_vector:
        fields["vector"] = list(hit.vector)
    return fields


def _metadata_text(metadata: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value).lower() if isinstance(value, bool) else str(value)

    return " ".join(f"{key}={show(value)}" for key, value in sorted(metadata.items()))


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def run_search(args: argparse.Namespace) -> int:
    if not args.queries and not args.like:
        print("error: give at least one QUERY or --like ID", file=sys.stderr)
        return 2
    try:
        search_filter = parse_filter(args.filter)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    queries: list[Any] = [*args.queries, *(index_pb2.Query(document_id=like) for like in args.like)]
    labels = [*args.queries, *(f"like {like}" for like in args.like)]
    with connect(args) as client:
        results = client.search(
            args.index_name,
            queries,
            k=args.k,
            filter=search_filter,
            include_vectors=args.vectors,
            ef_search=args.ef_search,
            nprobe=args.nprobe,
            ids_only=args.ids_only,
        )
    if args.json:
        print_json(
            [
                {"query": label, "hits": [_hit_fields(hit, args.vectors, args.ids_only) for hit in hits]}
                for label, hits in zip(labels, results, strict=True)
            ]
        )
        return 0
    columns = shutil.get_terminal_size((120, 24)).columns
    for number, (label, hits) in enumerate(zip(labels, results, strict=True)):
        if number:
            print()
        print(f"query: {label}")
        if not hits:
            print("  (no hits)")
            continue
        rows = [(str(rank), f"{hit.score:.4f}", hit.id, hit) for rank, hit in enumerate(hits, 1)]
        id_width = min(max(2, *(len(row[2]) for row in rows)), 36)
        text_width = max(20, columns - id_width - 20)
        print(f"  {'#':>3}  {'SCORE':>7}  {'ID':<{id_width}}  TEXT")
        for rank, score, document_id, hit in rows:
            metadata = _metadata_text(_hit_fields(hit, False)["metadata"])
            shown = _clip(hit.text, text_width)
            print(f"  {rank:>3}  {score:>7}  {_clip(document_id, id_width):<{id_width}}  {shown}")
            if metadata:
                print(f"  {'':>3}  {'':>7}  {'':<{id_width}}  {_clip(metadata, text_width)}")
    return 0

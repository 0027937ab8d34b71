"""`vecserve embed|tokenize|compare|info`: the EmbeddingService from the command line."""

from __future__ import annotations

import argparse

from google.protobuf.json_format import MessageToDict

from clients.commands.shared import connect, print_json


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    embed = subparsers.add_parser("embed", parents=[common], help="embed texts")
    embed.add_argument("texts", nargs="+", metavar="TEXT")
    embed.add_argument("--no-normalize", action="store_true", help="return raw (unnormalized) vectors")
    embed.add_argument(
        "--no-truncate", action="store_true", help="refuse inputs longer than the model's limit"
    )
    embed.set_defaults(handler=run_embed)

    tokenize = subparsers.add_parser("tokenize", parents=[common], help="show the model's tokens")
    tokenize.add_argument("texts", nargs="+", metavar="TEXT")
    tokenize.add_argument("--no-special", action="store_true", help="leave out special tokens")
    tokenize.set_defaults(handler=run_tokenize)

    compare = subparsers.add_parser(
        "compare",
        parents=[common],
        help="cosine similarity of texts",
        description="Cosine similarity of each TEXT with each --against text "
        "(without --against: every TEXT with every TEXT).",
    )
    compare.add_argument("texts", nargs="+", metavar="TEXT")
    compare.add_argument("--against", nargs="+", metavar="TEXT", help="texts forming the columns")
    compare.set_defaults(handler=run_compare)

    info = subparsers.add_parser("info", parents=[common], help="describe the server's model and limits")
    info.set_defaults(handler=run_info)


def run_embed(args: argparse.Namespace) -> int:
    with connect(args) as client:
        response = client.embed(args.texts, normalize=not args.no_normalize, truncate=not args.no_truncate)
    if args.json:
        print_json(
            {
                "dimension": response.dimension,
                "embeddings": [
                    {
                        "text": text,
                        "vector": list(e.values),
                        "token_count": e.token_count,
                        "truncated": e.truncated,
                    }
                    for text, e in zip(args.texts, response.embeddings, strict=True)
                ],
            }
        )
        return 0
    for text, e in zip(args.texts, response.embeddings, strict=True):
        head = ", ".join(f"{v:+.4f}" for v in e.values[:6])
        cut = " (truncated)" if e.truncated else ""
        print(f"{text!r}: {response.dimension} dims, {e.token_count} tokens{cut}\n  [{head}, ...]")
    return 0


def run_tokenize(args: argparse.Namespace) -> int:
    with connect(args) as client:
        response = client.tokenize(args.texts, add_special_tokens=not args.no_special)
    if args.json:
        print_json(
            [
                {"text": text, **MessageToDict(result, always_print_fields_with_no_presence=True)}
                for text, result in zip(args.texts, response.results, strict=True)
            ]
        )
        return 0
    for text, result in zip(args.texts, response.results, strict=True):
        note = "  (longer than the model's limit)" if result.exceeds_max_length else ""
        print(f"{text!r}: {len(result.tokens)} tokens{note}")
        for token in result.tokens:
            where = "special" if token.special else f"[{token.start}:{token.end}]"
            print(f"  {token.id:>6}  {token.text:<20} {where}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    right = args.against or args.texts
    with connect(args) as client:
        matrix = client.compare(args.texts, right)
    if args.json:
        print_json({"left": args.texts, "right": right, "scores": matrix.round(6).tolist()})
        return 0
    width = max(len(t) for t in args.texts)
    for column, text in enumerate(right):
        print(f"[{column}] {text}")
    print(" " * width + "".join(f"{f'[{c}]':>9}" for c in range(len(right))))
    for text, row in zip(args.texts, matrix, strict=True):
        print(f"{text:<{width}}" + "".join(f"{score:>9.3f}" for score in row))
    return 0


def run_info(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.model_info()
    fields = MessageToDict(info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if args.json:
        print_json(fields)
        return 0
    width = max(len(key) for key in fields)
    for key, value in fields.items():
        print(f"{key:<{width}} {value}")
    return 0

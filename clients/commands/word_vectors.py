"""`vecserve index import-vectors`: a word2vec, fastText or GloVe file into an index, for use as a space.

The file is read and checked whole on this machine (service/analogy/word_vector_files.py) before the
index is created, so a bad file creates nothing; the words then stream to the server like any
documents (StreamUpsertDocuments), so this works against any server, and an upload that fails midway
deletes the index it created.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clients.commands.shared import connect, print_json
from service.analogy.word_vector_files import FORMAT_HELP, FORMATS, WordVectorFileError, read_word_vectors


def register_import(actions: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Adds `import-vectors` to the `vecserve index` actions."""
    command = actions.add_parser(
        "import-vectors",
        parents=[common],
        help="import a word2vec, fastText or GloVe file as a word-vector space",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Create index NAME holding one document per word of FILE: its id and text are the "
        "word, its vector the file's (an inner-product index of the file's dimension, which keeps vectors "
        "as they are). Give the index as --space to analogy, similar, relate, pairs, plot and eval to "
        "answer in that space. The whole file is checked before anything is created: a fault is reported "
        "with its line and nothing is imported. While the upload runs the index is visible and filling; "
        "if the upload fails, the index is deleted again.",
        epilog=FORMAT_HELP,
    )
    command.add_argument("name", metavar="NAME", help="the index to create (it must not exist)")
    command.add_argument("file", type=Path, metavar="FILE")
    command.add_argument(
        "--format", choices=FORMATS, default="word2vec", dest="file_format", help="default: %(default)s"
    )
    command.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only the first N words (the most frequent, in files sorted by frequency; gensim's "
        "evaluate_word_analogies restricts itself to the first 300,000)",
    )
    command.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    command.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    try:
        loaded = read_word_vectors(args.file, args.file_format, args.limit)
    except (OSError, WordVectorFileError) as error:
        print(f"error: {error}; nothing was imported", file=sys.stderr)
        return 2
    from tqdm import tqdm

    with (
        connect(args) as client,
        tqdm(
            total=len(loaded.words),
            unit="word",
            desc=args.name,
            file=sys.stderr,
            disable=True if args.no_progress or args.json else None,
        ) as progress,
    ):
        stored = client.import_word_vectors(
            args.name,
            loaded.words,
            loaded.vectors,
            progress=lambda done: progress.update(done - progress.n),
        )
    if args.json:
        print_json({"index": args.name, "words": stored, "dimension": loaded.dimension})
    else:
        print(f"imported {stored:,} words of dimension {loaded.dimension} into index {args.name}")
    return 0

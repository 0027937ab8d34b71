"""`vecserve analogy|relate|similar|plot|eval`: the AnalogyService from the command line."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

if TYPE_CHECKING:
    from matplotlib.transforms import Bbox

from clients.client import VecserveClient
from clients.commands.shared import connect, print_json
from service.analogy.evaluation import (
    AnalogyQuestion,
    WordPairScore,
    read_analogy_questions,
    read_similarity_pairs,
    score_analogies,
    spearman,
)

METHODS = ("cosmul", "cosadd")
EVAL_WORKERS = 8
# Arguments of `plot` that name a relation: FROM->TO.
ARROW = "->"


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    vocabulary = argparse.ArgumentParser(add_help=False)
    vocabulary.add_argument(
        "--vocabulary-index",
        default="",
        metavar="INDEX",
        help="take candidate words from this index's document texts (default: the built-in English words)",
    )
    count = argparse.ArgumentParser(add_help=False)
    count.add_argument("-k", type=int, default=10, help="answers to show, 1 to 1000 (default %(default)s)")
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument(
        "--method", choices=METHODS, default="cosmul", help="analogy scoring (default %(default)s)"
    )

    analogy = subparsers.add_parser(
        "analogy",
        parents=[common, vocabulary, count, method],
        help="solve a:b :: c:?",
        description="`vecserve analogy man king woman` reads 'man is to king as woman is to ?' and prints "
        "ranked answers. The general form takes --positive and --negative words instead.",
    )
    analogy.add_argument("words", nargs="*", metavar="WORD", help="A B C for A:B :: C:?")
    analogy.add_argument("--positive", nargs="+", default=[], metavar="WORD", help="words the answer is like")
    analogy.add_argument(
        "--negative", nargs="+", default=[], metavar="WORD", help="words the answer is unlike"
    )
    analogy.set_defaults(handler=run_analogy)

    relate = subparsers.add_parser(
        "relate",
        parents=[common],
        help="compare relations: is a->b like c->d?",
        description="The first two words are the reference relation (A -> B); each following pair is a "
        "candidate relation, ranked by how alike its offset is to the reference's.",
    )
    relate.add_argument("words", nargs="+", metavar="WORD", help="A B C D [E F ...]")
    relate.set_defaults(handler=run_relate)

    similar = subparsers.add_parser(
        "similar", parents=[common, vocabulary, count], help="nearest vocabulary words to words or phrases"
    )
    similar.add_argument("words", nargs="+", metavar="WORD")
    similar.set_defaults(handler=run_similar)

    plot = subparsers.add_parser(
        "plot",
        parents=[common],
        help="draw words in 2-D (PCA) with relations as arrows",
        description="Projects the words' embeddings onto their first two principal components and saves "
        "a PNG. An argument FROM->TO draws an arrow from FROM to TO; with --pairs, plain words are "
        "taken two by two as arrows (man king woman queen: man->king, woman->queen).",
    )
    plot.add_argument("words", nargs="+", metavar="WORD", help="words, phrases or FROM->TO relations")
    plot.add_argument("--out", required=True, type=Path, metavar="FILE.png", help="where to write the PNG")
    plot.add_argument("--pairs", action="store_true", help="draw consecutive plain words as arrows")
    plot.add_argument("--title", default=None, help="plot title (default: the relations drawn)")
    plot.set_defaults(handler=run_plot)

    evaluate = subparsers.add_parser(
        "eval", parents=[common], help="score the service on analogy or word-similarity test sets"
    )
    kinds = evaluate.add_subparsers(dest="eval_kind", required=True, metavar="KIND")
    analogies = kinds.add_parser(
        "analogies",
        parents=[common, vocabulary, method],
        help="accuracy on a questions-words.txt file",
        description="Accuracy on analogy questions in the Google questions-words.txt format (': section' "
        "lines, then 'a b c d' per line meaning a:b :: c:d). A question counts as right when d is the "
        "top answer; one the service cannot answer counts as wrong. Coverage is the share of questions "
        "whose words the model can represent and whose answer is in the vocabulary.",
    )
    analogies.add_argument("file", type=Path, metavar="FILE")
    analogies.add_argument(
        "--workers", type=int, default=EVAL_WORKERS, help="concurrent calls (default %(default)s)"
    )
    analogies.add_argument("--limit", type=int, default=None, help="only the first N questions")
    analogies.set_defaults(handler=run_eval_analogies)
    similarity = kinds.add_parser(
        "similarity",
        parents=[common],
        help="Spearman correlation on a word-pair similarity file",
        description="Spearman correlation between human similarity scores and the service's pair "
        "similarities, for WordSim353 / SimLex-999 style files: 'word1<TAB>word2<TAB>score' lines; '#' "
        "comments; a header row naming a SimLex999 column picks that column.",
    )
    similarity.add_argument("file", type=Path, metavar="FILE")
    similarity.set_defaults(handler=run_eval_similarity)


# analogy / relate / similar


def run_analogy(args: argparse.Namespace) -> int:
    if args.words and (args.positive or args.negative):
        print("error: give either A B C or --positive/--negative words, not both", file=sys.stderr)
        return 2
    if args.words:
        if len(args.words) != 3:
            print(f"error: A:B :: C:? takes three words, got {len(args.words)}", file=sys.stderr)
            return 2
        first, second, third = args.words
        positive, negative = [second, third], [first]
        heading = f"{first} is to {second} as {third} is to ?"
    else:
        positive, negative = args.positive, args.negative
        if not positive:
            print("error: give A B C, or at least one --positive word", file=sys.stderr)
            return 2
        heading = " + ".join(positive) + "".join(f" - {word}" for word in negative)
    with connect(args) as client:
        answers = client.solve_analogy(
            positive, negative, method=args.method, k=args.k, vocabulary_index=args.vocabulary_index
        )
    if args.json:
        print_json(
            {
                "positive": positive,
                "negative": negative,
                "method": args.method,
                "answers": [{"word": a.word, "score": round(a.score, 6)} for a in answers],
            }
        )
        return 0
    print(f"{heading}   ({args.method})")
    _print_ranked([(a.word, a.score) for a in answers])
    return 0


def _print_ranked(items: Sequence[tuple[str, float]]) -> None:
    width = max((len(word) for word, _ in items), default=0)
    for rank, (word, score) in enumerate(items, start=1):
        print(f"{rank:>4}. {word:<{width}}  {score:.4f}")


def run_relate(args: argparse.Namespace) -> int:
    words = args.words
    if len(words) < 4 or len(words) % 2:
        print(
            "error: give the reference pair and at least one candidate pair: A B C D [E F ...] "
            "(quote phrases)",
            file=sys.stderr,
        )
        return 2
    reference = (words[0], words[1])
    candidates = [(words[i], words[i + 1]) for i in range(2, len(words), 2)]
    with connect(args) as client:
        response = client.compare_relations(reference, candidates)
    if args.json:
        print_json(
            {
                "reference": {"first": reference[0], "second": reference[1]},
                "reference_pair_similarity": round(response.reference_pair_similarity, 6),
                "comparisons": [
                    {
                        "first": c.candidate.first,
                        "second": c.candidate.second,
                        "offset_similarity": round(c.offset_similarity, 6),
                        "pair_similarity": round(c.pair_similarity, 6),
                    }
                    for c in response.comparisons
                ],
            }
        )
        return 0
    print(
        f"reference: {reference[0]} -> {reference[1]}   "
        f"(pair similarity {response.reference_pair_similarity:.4f})"
    )
    ranked = sorted(response.comparisons, key=lambda c: -c.offset_similarity)
    labels = [f"{c.candidate.first} -> {c.candidate.second}" for c in ranked]
    width = max(len(label) for label in [*labels, "candidate"])
    print(f"rank  {'candidate':<{width}}  relation  pair")
    for position, (label, comparison) in enumerate(zip(labels, ranked, strict=True), start=1):
        relation, pair = comparison.offset_similarity, comparison.pair_similarity
        print(f"{position:>4}  {label:<{width}}  {relation:>8.4f}  {pair:.4f}")
    print("relation: cosine of the offsets (second - first); pair: cosine of the pair's own words")
    return 0


def run_similar(args: argparse.Namespace) -> int:
    with connect(args) as client:
        results = client.find_similar_words(args.words, k=args.k, vocabulary_index=args.vocabulary_index)
    if args.json:
        print_json(
            [
                {"query": query, "words": [{"word": w.word, "score": round(w.score, 6)} for w in words]}
                for query, words in zip(args.words, results, strict=True)
            ]
        )
        return 0
    for query, words in zip(args.words, results, strict=True):
        print(f"{query}:")
        _print_ranked([(w.word, w.score) for w in words])
    return 0


# plot


def parse_plot_words(arguments: Sequence[str], pairs: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """The distinct words to draw, in order, and the arrows (FROM, TO) between them."""
    words: list[str] = []
    arrows: list[tuple[str, str]] = []
    plain: list[str] = []
    for argument in arguments:
        if ARROW in argument:
            source, _, target = argument.partition(ARROW)
            source, target = source.strip(), target.strip()
            if not source or not target or ARROW in target:
                raise ValueError(f"{argument!r} is not a relation FROM->TO")
            arrows.append((source, target))
            words += [source, target]
        else:
            plain.append(argument.strip())
            words.append(argument.strip())
    if pairs:
        if len(plain) % 2:
            raise ValueError(f"--pairs needs an even number of plain words, got {len(plain)}")
        arrows += [(plain[i], plain[i + 1]) for i in range(0, len(plain), 2)]
    if any(not word for word in words):
        raise ValueError("empty word: every word needs at least one character")
    return list(dict.fromkeys(words)), arrows


def project_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA: rows projected onto the first two principal components, and the share of variance of each."""
    centered = vectors - vectors.mean(axis=0)
    _, singular_values, components = np.linalg.svd(centered, full_matrices=False)
    points = centered @ components[:2].T
    if points.shape[1] < 2:  # a single word: put it at the origin
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    variance = singular_values**2
    shares = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return points, np.pad(shares, (0, 2 - len(shares)))


def draw_plot(
    words: Sequence[str],
    points: np.ndarray,
    arrows: Sequence[tuple[str, str]],
    out: Path,
    title: str,
    variance_shares: np.ndarray,
) -> list[Bbox]:
    """Saves the plot as PNG; returns where the labels went (display coordinates), none overlapping
    another when there is room around the points."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    position = {word: points[i] for i, word in enumerate(words)}
    figure, axes = plt.subplots(figsize=(9, 7), dpi=120)
    colors = plt.get_cmap("tab10")
    in_arrow = {word for arrow in arrows for word in arrow}
    axes.scatter(points[:, 0], points[:, 1], s=36, color="#333333", zorder=3)
    for number, (source, target) in enumerate(arrows):
        start, end = position[source], position[target]
        axes.annotate(
            "",
            xy=end,
            xytext=start,
            arrowprops={
                "arrowstyle": "-|>",
                "color": colors(number % 10),
                "lw": 2,
                "shrinkA": 6,
                "shrinkB": 6,
            },
            zorder=2,
        )
    span = float(np.ptp(points, axis=0).max()) or 1.0
    margin = 0.15 * span
    axes.set_xlim(points[:, 0].min() - 2 * margin, points[:, 0].max() + 2 * margin)
    axes.set_ylim(points[:, 1].min() - margin, points[:, 1].max() + margin)
    axes.set_xlabel(f"principal component 1 ({variance_shares[0]:.0%} of variance)")
    axes.set_ylabel(f"principal component 2 ({variance_shares[1]:.0%} of variance)")
    axes.set_title(title, fontsize=13)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    placed: list[Bbox] = []
    for word, point in position.items():
        placed.append(_place_label(axes, renderer, word, point, word in in_arrow, placed))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    plt.close(figure)
    return placed


# Where a label may go around its point (offset in points, horizontal and vertical alignment), in order
# of preference: close first, then further out, so that words at nearly the same place stay readable.
LABEL_SPOTS = [
    ((dx * distance, dy * distance), "left" if dx > 0 else "right", "bottom" if dy > 0 else "top")
    for distance in (6, 16, 28)
    for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1))
]


def _place_label(
    axes: Any, renderer: Any, word: str, point: np.ndarray, bold: bool, taken: list[Bbox]
) -> Bbox:
    """Draws word's label at the first spot around point that overlaps no label drawn before it."""
    label = None
    for offset, horizontal, vertical in LABEL_SPOTS:
        if label is not None:
            label.remove()
        label = axes.annotate(
            word,
            xy=point,
            xytext=offset,
            textcoords="offset points",
            ha=horizontal,
            va=vertical,
            fontsize=12,
            fontweight="bold" if bold else "normal",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.75},
            zorder=4,
        )
        extent = label.get_window_extent(renderer)
        if not any(extent.overlaps(other) for other in taken):
            return extent
    return extent  # every spot is taken: keep the last, furthest one


def run_plot(args: argparse.Namespace) -> int:
    try:
        words, arrows = parse_plot_words(args.words, args.pairs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(words) < 2:
        print("error: give at least two words to plot", file=sys.stderr)
        return 2
    with connect(args) as client:
        # Words written as the server writes them for its built-in vocabulary, so that plotted points
        # are the vectors that analogies and relation comparisons are computed from.
        word_template = client.get_vocabulary().word_template
        if not word_template:
            print("error: the server does not report its word template (a version too old)", file=sys.stderr)
            return 1
        vectors = client.embed_array([word_template.format(word) for word in words], normalize=True)
    points, shares = project_2d(vectors)
    title = args.title or (", ".join(f"{a} → {b}" for a, b in arrows) if arrows else f"{len(words)} words")
    draw_plot(words, points, arrows, args.out, title, shares)
    if args.json:
        print_json(
            {
                "out": str(args.out),
                "words": [
                    {"word": word, "x": round(float(x), 6), "y": round(float(y), 6)}
                    for word, (x, y) in zip(words, points, strict=True)
                ],
                "arrows": [list(arrow) for arrow in arrows],
            }
        )
    else:
        print(f"wrote {args.out} ({len(words)} words, {len(arrows)} arrows)")
    return 0


# eval analogies


@dataclass
class _Progress:
    total: int
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def step(self) -> None:
        with self.lock:
            self.done += 1
            if self.done % 1000 == 0 or self.done == self.total:
                print(f"\r{self.done}/{self.total} questions", end="", file=sys.stderr, flush=True)
                if self.done == self.total:
                    print(file=sys.stderr)


def _ask(
    client: VecserveClient, question: AnalogyQuestion, method: str, vocabulary_index: str, progress: _Progress
) -> str | None:
    """The service's top answer, or None when it refuses the question."""
    first, second, third, _ = question.words
    try:
        answers = client.solve_analogy(
            [second, third], [first], method=method, k=1, vocabulary_index=vocabulary_index
        )
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:  # type: ignore[attr-defined]
            raise
        return None
    finally:
        progress.step()
    return answers[0].word if answers else None


def evaluate_analogies(
    client: VecserveClient,
    questions: Sequence[AnalogyQuestion],
    method: str = "cosmul",
    vocabulary_index: str = "",
    workers: int = EVAL_WORKERS,
) -> dict[str, Any]:
    """Asks the service every question (concurrently) and scores the top answers per section."""
    expected = list(dict.fromkeys(q.answer for q in questions))
    vocabulary = client.get_vocabulary(expected, vocabulary_index=vocabulary_index)
    in_vocabulary = {word for word, held in zip(expected, vocabulary.contains, strict=True) if held}
    progress = _Progress(len(questions))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        answers = list(pool.map(lambda q: _ask(client, q, method, vocabulary_index, progress), questions))
    scores = score_analogies(questions, answers, in_vocabulary)
    return {
        "method": method,
        "vocabulary": vocabulary_index or "built-in",
        "vocabulary_words": vocabulary.word_count,
        "sections": {name: score.as_dict() for name, score in scores.sections.items()},
        "total": scores.total.as_dict(),
    }


def print_analogy_report(report: dict[str, Any]) -> None:
    sections = report["sections"]
    width = max(len(name) for name in [*sections, "total"])
    print(f"{'section':<{width}}  {'questions':>9}  {'correct':>7}  {'accuracy':>8}  {'coverage':>8}")
    for name, row in [*sections.items(), ("total", report["total"])]:
        print(
            f"{name:<{width}}  {row['questions']:>9}  {row['correct']:>7}  {row['accuracy']:>8.1%}  "
            f"{row['coverage']:>8.1%}"
        )


def run_eval_analogies(args: argparse.Namespace) -> int:
    try:
        questions = read_analogy_questions(args.file)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.limit is not None:
        questions = questions[: args.limit]
    if not questions:
        print(f"error: {args.file} holds no questions", file=sys.stderr)
        return 2
    with connect(args) as client:
        report = evaluate_analogies(client, questions, args.method, args.vocabulary_index, args.workers)
    if args.json:
        print_json({"file": str(args.file), **report})
        return 0
    print(
        f"{args.file}: method {args.method}, vocabulary {report['vocabulary']} "
        f"({report['vocabulary_words']:,} words)"
    )
    print_analogy_report(report)
    return 0


# eval similarity


def evaluate_similarity(client: VecserveClient, pairs: Sequence[WordPairScore]) -> float:
    """Spearman correlation of the gold scores with the service's pair similarities."""
    batch = 64
    similarities: list[float] = []
    # Every pair is a candidate of a CompareRelations call; its pair_similarity is the words' cosine.
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        response = client.compare_relations(
            (chunk[0].first, chunk[0].second), [(p.first, p.second) for p in chunk]
        )
        similarities += [c.pair_similarity for c in response.comparisons]
    return spearman([p.gold for p in pairs], similarities)


def run_eval_similarity(args: argparse.Namespace) -> int:
    try:
        pairs = read_similarity_pairs(args.file)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(pairs) < 2:
        print(f"error: {args.file} needs at least two scored pairs", file=sys.stderr)
        return 2
    with connect(args) as client:
        correlation = evaluate_similarity(client, pairs)
    if args.json:
        print_json({"file": str(args.file), "pairs": len(pairs), "spearman": round(correlation, 6)})
        return 0
    print(f"{args.file}: {len(pairs)} pairs, Spearman correlation {correlation:.4f}")
    return 0

"""`vecserve analogy|relate|pairs|similar|plot|eval`: the AnalogyService from the command line."""

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
# Words per GetVocabulary lookup (the server's limit).
MAX_LOOKUP_WORDS = 100_000
EVAL_WORKERS = 8
# Arguments of `plot` that name a relation: FROM->TO.
ARROW = "->"


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    vocabulary = argparse.ArgumentParser(add_help=False)
    vocabularies = vocabulary.add_mutually_exclusive_group()
    vocabularies.add_argument(
        "--vocabulary-index",
        default="",
        metavar="INDEX",
        help="take candidate words from this index's document texts (default: the built-in English words)",
    )
    vocabularies.add_argument(
        "--space",
        default="",
        metavar="NAME",
        help="answer in this index of word vectors (see `vecserve index import-vectors`): words are looked "
        "up in it, not embedded by the model",
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
        parents=[common, vocabulary, method],
        help="compare relations: is a->b like c->d?",
        description="The first two words are the reference relation (A -> B); each following pair is a "
        "candidate relation (C -> D), ranked by how alike its offset is to the reference's. Two figures "
        "say whether that likeness means anything: the percentile of the offset similarity among random "
        "pairs of vocabulary words, and the rank of D among the answers to A : B :: C : ?.",
    )
    relate.add_argument("words", nargs="+", metavar="WORD", help="A B C D [E F ...]")
    relate.set_defaults(handler=run_relate)

    pairs = subparsers.add_parser(
        "pairs",
        parents=[common, vocabulary, count],
        help="find more pairs of a relation: which c->d are like a->b?",
        description="`vecserve pairs man king` lists vocabulary pairs (C, D) whose offset D - C is most "
        "like king - man. The search is bounded: C is one of the vocabulary's first --first-word-count "
        "words (the most frequent, for the built-in vocabulary) or of --first-words, and D one of C's "
        "--neighbours nearest words.",
    )
    pairs.add_argument("first", metavar="A")
    pairs.add_argument("second", metavar="B")
    pairs.add_argument(
        "--first-words", nargs="+", default=[], metavar="WORD", help="search from these words C only"
    )
    pairs.add_argument(
        "--first-word-count",
        type=int,
        default=0,
        metavar="N",
        help="search from the vocabulary's first N words, 1 to 10,000 (server default 1,000)",
    )
    pairs.add_argument(
        "--neighbours",
        type=int,
        default=0,
        metavar="N",
        help="try each C's N nearest words as D, 1 to 1,000 (server default 50)",
    )
    pairs.set_defaults(handler=run_pairs)

    similar = subparsers.add_parser(
        "similar", parents=[common, vocabulary, count], help="nearest vocabulary words to words or phrases"
    )
    similar.add_argument("words", nargs="+", metavar="WORD")
    similar.set_defaults(handler=run_similar)

    plot = subparsers.add_parser(
        "plot",
        parents=[common, vocabulary],
        help="draw words in 2-D (PCA) with relations as arrows",
        description="Projects the words' embeddings onto their first two principal components and saves "
        "a PNG. An argument FROM->TO draws an arrow from FROM to TO; with --pairs, plain words are "
        "taken two by two as arrows (man king woman queen: man->king, woman->queen). With two arrows or "
        "more, the legend compares every arrow with the first as `relate` does.",
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
        parents=[common, vocabulary],
        help="accuracy on a questions-words.txt file",
        description="Accuracy on analogy questions in the Google questions-words.txt format (': section' "
        "lines, then 'a b c d' per line meaning a:b :: c:d). A question counts as right when d is the "
        "top answer; one the service cannot answer counts as wrong. Coverage is the share of questions "
        "whose words the model can represent (with --space: are in the space) and whose answer is in the "
        "vocabulary; 'of covered' is the accuracy over those questions only, the figure gensim's "
        "evaluate_word_analogies reports.",
    )
    analogies.add_argument("file", type=Path, metavar="FILE")
    analogies.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="analogy scoring (default: cosadd with --space, as in gensim's evaluate_word_analogies; "
        "else cosmul)",
    )
    analogies.add_argument(
        "--workers", type=int, default=EVAL_WORKERS, help="concurrent calls (default %(default)s)"
    )
    analogies.add_argument("--limit", type=int, default=None, help="only the first N questions")
    analogies.set_defaults(handler=run_eval_analogies)
    similarity = kinds.add_parser(
        "similarity",
        parents=[common, vocabulary],
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
            positive,
            negative,
            method=args.method,
            k=args.k,
            vocabulary_index=args.vocabulary_index,
            space=args.space,
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
        response = client.compare_relations(
            reference,
            candidates,
            method=args.method,
            vocabulary_index=args.vocabulary_index,
            space=args.space,
        )
    if args.json:
        print_json(
            {
                "reference": {"first": reference[0], "second": reference[1]},
                "reference_pair_similarity": round(response.reference_pair_similarity, 6),
                "method": args.method,
                "null_pair_count": response.null_pair_count,
                "vocabulary_word_count": response.vocabulary_word_count,
                "comparisons": [
                    {
                        "first": c.candidate.first,
                        "second": c.candidate.second,
                        "offset_similarity": round(c.offset_similarity, 6),
                        "pair_similarity": round(c.pair_similarity, 6),
                        "offset_percentile": round(c.offset_percentile, 2),
                        "answer_rank": c.answer_rank,
                        "answer_in_vocabulary": c.answer_in_vocabulary,
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
    print(f"rank  {'candidate':<{width}}  relation  percentile  answer rank    pair")
    for position, (label, comparison) in enumerate(zip(labels, ranked, strict=True), start=1):
        print(
            f"{position:>4}  {label:<{width}}  {comparison.offset_similarity:>8.4f}  "
            f"{comparison.offset_percentile:>10.1f}  {answer_rank_text(comparison):>11}  "
            f"{comparison.pair_similarity:>6.4f}"
        )
    print("relation:    cosine of the offsets (second - first)")
    print(
        f"percentile:  where that cosine falls among {response.null_pair_count:,} random pairs of vocabulary "
        "words (95 or more: rarely so alike by chance)"
    )
    print(
        f"answer rank: where second comes among the answers to {reference[0]} : {reference[1]} :: first : ? "
        f"over {response.vocabulary_word_count:,} words ({args.method}); * not a vocabulary word (ranked by "
        "its own vector), - a question word"
    )
    print("pair:        cosine of the pair's own words")
    return 0


def answer_rank_text(comparison: Any) -> str:
    """A RelationComparison's answer rank as `relate` and `plot` print it: 3, 3* (not a vocabulary
    word) or - (a question word, never an answer)."""
    if not comparison.answer_rank:
        return "-"
    return f"{comparison.answer_rank:,}{'' if comparison.answer_in_vocabulary else '*'}"


def run_pairs(args: argparse.Namespace) -> int:
    with connect(args) as client:
        response = client.find_related_pairs(
            (args.first, args.second),
            k=args.k,
            first_words=args.first_words,
            first_word_count=args.first_word_count,
            neighbour_count=args.neighbours,
            vocabulary_index=args.vocabulary_index,
            space=args.space,
        )
    if args.json:
        print_json(
            {
                "reference": {"first": args.first, "second": args.second},
                "compared_pair_count": response.compared_pair_count,
                "pairs": [
                    {
                        "first": p.pair.first,
                        "second": p.pair.second,
                        "offset_similarity": round(p.offset_similarity, 6),
                        "pair_similarity": round(p.pair_similarity, 6),
                    }
                    for p in response.pairs
                ],
            }
        )
        return 0
    print(f"pairs like {args.first} -> {args.second}   ({response.compared_pair_count:,} pairs compared)")
    labels = [f"{p.pair.first} -> {p.pair.second}" for p in response.pairs]
    width = max(len(label) for label in [*labels, "pair"])
    print(f"rank  {'pair':<{width}}  relation    pair")
    for position, (label, found) in enumerate(zip(labels, response.pairs, strict=True), start=1):
        print(
            f"{position:>4}  {label:<{width}}  {found.offset_similarity:>8.4f}  {found.pair_similarity:>6.4f}"
        )
    print("relation: cosine of the offsets (second - first); pair: cosine of the pair's own words")
    return 0


def run_similar(args: argparse.Namespace) -> int:
    with connect(args) as client:
        results = client.find_similar_words(
            args.words, k=args.k, vocabulary_index=args.vocabulary_index, space=args.space
        )
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
    arrow_labels: Sequence[str] = (),
) -> list[Bbox]:
    """Saves the plot as PNG; returns where the labels went (display coordinates), none overlapping
    another when there is room around the points. arrow_labels, one per arrow, make a legend."""
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
    if arrow_labels:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colors(number % 10), lw=2) for number in range(len(arrow_labels))]
        axes.legend(handles, arrow_labels, loc="best", fontsize=9, framealpha=0.85)
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
        # The vectors that analogies and relation comparisons are computed from, in the same space.
        vectors = client.word_vectors(words, vocabulary_index=args.vocabulary_index, space=args.space)
        if len(vectors) != len(words):
            print("error: the server does not return word vectors (a version too old)", file=sys.stderr)
            return 1
        relations = (
            client.compare_relations(
                arrows[0], arrows[1:], vocabulary_index=args.vocabulary_index, space=args.space
            )
            if len(arrows) >= 2
            else None
        )
    points, shares = project_2d(vectors)
    title = args.title or (", ".join(f"{a} → {b}" for a, b in arrows) if arrows else f"{len(words)} words")
    labels = relation_labels(arrows, relations) if relations else []
    draw_plot(words, points, arrows, args.out, title, shares, labels)
    if args.json:
        print_json(
            {
                "out": str(args.out),
                "words": [
                    {"word": word, "x": round(float(x), 6), "y": round(float(y), 6)}
                    for word, (x, y) in zip(words, points, strict=True)
                ],
                "arrows": [list(arrow) for arrow in arrows],
                "relations": [
                    {
                        "first": c.candidate.first,
                        "second": c.candidate.second,
                        "offset_similarity": round(c.offset_similarity, 6),
                        "offset_percentile": round(c.offset_percentile, 2),
                        "answer_rank": c.answer_rank,
                        "answer_in_vocabulary": c.answer_in_vocabulary,
                    }
                    for c in (relations.comparisons if relations else [])
                ],
            }
        )
    else:
        print(f"wrote {args.out} ({len(words)} words, {len(arrows)} arrows)")
        for label in labels:
            print(f"  {label}")
    return 0


def relation_labels(arrows: Sequence[tuple[str, str]], relations: Any) -> list[str]:
    """Legend entries: the first arrow as the reference, every other compared with it."""
    first, second = arrows[0]
    labels = [f"{first} → {second} (reference)"]
    for comparison in relations.comparisons:
        labels.append(
            f"{comparison.candidate.first} → {comparison.candidate.second}: relation "
            f"{comparison.offset_similarity:.2f}, percentile {comparison.offset_percentile:.0f}, "
            f"answer rank {answer_rank_text(comparison)}"
        )
    return labels


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


@dataclass(frozen=True)
class VocabularyChoice:
    """Where an evaluation's words come from: the built-in vocabulary, an index's, or a space."""

    index: str = ""
    space: str = ""

    @property
    def name(self) -> str:
        return f"space {self.space}" if self.space else self.index or "built-in"


def _ask(
    client: VecserveClient,
    question: AnalogyQuestion,
    method: str,
    vocabulary: VocabularyChoice,
    progress: _Progress,
) -> str | None:
    """The service's top answer, or None when it refuses the question."""
    first, second, third, _ = question.words
    try:
        answers = client.solve_analogy(
            [second, third],
            [first],
            method=method,
            k=1,
            vocabulary_index=vocabulary.index,
            space=vocabulary.space,
        )
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:  # type: ignore[attr-defined]
            raise
        return None
    finally:
        progress.step()
    return answers[0].word if answers else None


def held_words(
    client: VecserveClient, words: Sequence[str], vocabulary: VocabularyChoice
) -> tuple[int, set[str]]:
    """The vocabulary's size and which of `words` it holds; NOT_FOUND when it does not exist."""
    words = list(dict.fromkeys(words))
    held: set[str] = set()
    word_count = 0
    for start in range(0, max(len(words), 1), MAX_LOOKUP_WORDS):
        chunk = words[start : start + MAX_LOOKUP_WORDS]
        description = client.get_vocabulary(chunk, vocabulary_index=vocabulary.index, space=vocabulary.space)
        held |= {word for word, contained in zip(chunk, description.contains, strict=True) if contained}
        word_count = description.word_count
    return word_count, held


def evaluate_analogies(
    client: VecserveClient,
    questions: Sequence[AnalogyQuestion],
    method: str = "cosmul",
    vocabulary: VocabularyChoice = VocabularyChoice(),
    workers: int = EVAL_WORKERS,
) -> dict[str, Any]:
    """Asks the service every question (concurrently) and scores the top answers per section.

    In a space, a question with a word outside it is refused without being asked: the space cannot
    look the word up (gensim's evaluation leaves such questions out, and so does covered_accuracy).
    """
    looked_up = [word for q in questions for word in (q.words if vocabulary.space else (q.answer,))]
    word_count, held = held_words(client, looked_up, vocabulary)
    progress = _Progress(len(questions))

    def answer(question: AnalogyQuestion) -> str | None:
        if vocabulary.space and not all(word in held for word in question.words[:3]):
            progress.step()
            return None
        return _ask(client, question, method, vocabulary, progress)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        answers = list(pool.map(answer, questions))
    scores = score_analogies(questions, answers, held)
    return {
        "method": method,
        "vocabulary": vocabulary.name,
        "vocabulary_words": word_count,
        "sections": {name: score.as_dict() for name, score in scores.sections.items()},
        "total": scores.total.as_dict(),
    }


def print_analogy_report(report: dict[str, Any]) -> None:
    sections = report["sections"]
    width = max(len(name) for name in [*sections, "total"])
    print(
        f"{'section':<{width}}  {'questions':>9}  {'correct':>7}  {'accuracy':>8}  {'coverage':>8}  "
        f"{'of covered':>10}"
    )
    for name, row in [*sections.items(), ("total", report["total"])]:
        print(
            f"{name:<{width}}  {row['questions']:>9}  {row['correct']:>7}  {row['accuracy']:>8.1%}  "
            f"{row['coverage']:>8.1%}  {row['covered_accuracy']:>10.1%}"
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
    method = args.method or ("cosadd" if args.space else "cosmul")
    with connect(args) as client:
        report = evaluate_analogies(
            client, questions, method, VocabularyChoice(args.vocabulary_index, args.space), args.workers
        )
    if args.json:
        print_json({"file": str(args.file), **report})
        return 0
    print(
        f"{args.file}: method {method}, vocabulary {report['vocabulary']} "
        f"({report['vocabulary_words']:,} words)"
    )
    print_analogy_report(report)
    return 0


# eval similarity


def evaluate_similarity(
    client: VecserveClient, pairs: Sequence[WordPairScore], vocabulary: VocabularyChoice = VocabularyChoice()
) -> tuple[float, int]:
    """Spearman correlation of the gold scores with the service's pair similarities, and the number
    of pairs it is over: in a space, pairs with a word outside it are left out (as gensim does)."""
    if vocabulary.space:
        _, held = held_words(
            client, [word for pair in pairs for word in (pair.first, pair.second)], vocabulary
        )
        pairs = [pair for pair in pairs if pair.first in held and pair.second in held]
    if len(pairs) < 2:
        return 0.0, len(pairs)
    batch = 64
    similarities: list[float] = []
    # Every pair is a candidate of a CompareRelations call; its pair_similarity is the words' cosine.
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        response = client.compare_relations(
            (chunk[0].first, chunk[0].second),
            [(p.first, p.second) for p in chunk],
            vocabulary_index=vocabulary.index,
            space=vocabulary.space,
        )
        similarities += [c.pair_similarity for c in response.comparisons]
    return spearman([p.gold for p in pairs], similarities), len(pairs)


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
        correlation, used = evaluate_similarity(
            client, pairs, VocabularyChoice(args.vocabulary_index, args.space)
        )
    if args.json:
        print_json(
            {
                "file": str(args.file),
                "pairs": len(pairs),
                "pairs_used": used,
                "spearman": round(correlation, 6),
            }
        )
        return 0
    left_out = f" ({len(pairs) - used} with a word outside the space left out)" if used < len(pairs) else ""
    print(f"{args.file}: {used} pairs{left_out}, Spearman correlation {correlation:.4f}")
    return 0

"""Analogy quality and speed with the default model, measured through a real server and client.

`python -m benchmarks.analogy_bench [--sizes 30000 100000] [--data-dir DIR] [--limit N]`

For each vocabulary size: accuracy on gensim's questions-words.txt (19,544 questions; a question
whose answer cannot be produced counts as wrong) for 3CosMul and 3CosAdd, per section for the
default method; the same accuracies in process with the textbook (gensim) formulas beside the
default scoring, on those questions and on the hand-written development set (--dev); Spearman
correlation on WordSim353 and SimLex-999; latency of one analogy query
(end to end through gRPC, and in the engine alone), of CompareRelations and of FindRelatedPairs.
Vocabularies are kept in --data-dir, so a second run does not embed them again.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clients import VecserveClient
from clients.commands.analogy import evaluate_analogies, evaluate_similarity, print_analogy_report
from service.analogy.engine import AnalogyEngine
from service.analogy.evaluation import (
    AnalogyQuestion,
    WordPairScore,
    read_analogy_questions,
    read_similarity_pairs,
)
from service.analogy.scoring import (
    DEFAULT_SCORING,
    TEXTBOOK_SCORING,
    AnalogyMethod,
    AnalogyScoring,
    score_similarities,
    top_k,
    variant_rows,
)
from service.analogy.space import Vocabulary, normalize_word
from service.config import Settings, default_model_path
from service.embedding.encoder import Encoder
from service.grpc_server.server import create_server

LATENCY_CALLS = 50


def gensim_data(name: str) -> Path:
    from gensim.test.utils import datapath

    return Path(datapath(name))


def latency_ms(call: object, calls: int = LATENCY_CALLS) -> tuple[float, float]:
    """Median and 95th percentile of sequential calls, in milliseconds."""
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        call()  # type: ignore[operator]
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


# Hand-written relations that questions-words.txt does not hold, for choosing scoring methods.
DEVELOPMENT_SET = Path(__file__).with_name("analogy_dev.txt")


def read_development_questions(path: Path) -> list[tuple[str, str, str, frozenset[str]]]:
    """(a, b, c, accepted answers) for every ordered pair of two pairs of each relation of a file of
    ': relation' lines and 'x y1|y2' pairs; questions whose answer is one of a, b and c are skipped."""
    relations: dict[str, list[tuple[str, list[str]]]] = {}
    name = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            name = line[1:].strip()
            continue
        first, seconds = line.split()
        relations.setdefault(name, []).append((first, seconds.split("|")))
    questions = []
    for pairs in relations.values():
        for a, (b, *_) in pairs:
            for c, answers in pairs:
                if c != a and not {a, b, c} & set(answers):
                    questions.append((a, b, c, frozenset(answers)))
    return questions


def scoring_accuracies(
    encoder: Encoder, vocabulary: Vocabulary, questions: list[tuple[str, str, str, frozenset[str]]]
) -> dict[tuple[str, str], float]:
    """Accuracy per (scoring, method) in process, from cosines computed once for every query word;
    questions are (a, b, c, accepted answers)."""
    scorings: dict[str, AnalogyScoring] = {"textbook": TEXTBOOK_SCORING, "default": DEFAULT_SCORING}
    normalized = [
        (*(normalize_word(word) for word in question[:3]), {normalize_word(d) for d in question[3]})
        for question in questions
    ]
    words = sorted({word for question in normalized for word in question[:3]})
    vectors = vocabulary.project(encoder.encode([vocabulary.template.format(word) for word in words]))
    similarities = vectors @ vocabulary.vectors.T
    row = {word: position for position, word in enumerate(words)}
    accuracies = {}
    for scoring_name, scoring in scorings.items():
        for method in AnalogyMethod:
            correct = 0
            for a, b, c, d in normalized:
                positive, negative = [row[b], row[c]], [row[a]]
                scores = score_similarities(
                    vocabulary,
                    similarities[positive],
                    similarities[negative],
                    vectors[positive],
                    vectors[negative],
                    method,
                    scoring,
                )
                variants = variant_rows(
                    vocabulary,
                    [b, c],
                    [a],
                    similarities[positive],
                    similarities[negative],
                    vectors[positive],
                    vectors[negative],
                    scoring.variant_alignment,
                )
                best = top_k(scores, 1, vocabulary.rows_of([a, b, c]) + variants)
                correct += bool(best) and vocabulary.words[best[0][0]] in d
            accuracies[(scoring_name, method.value)] = correct / len(questions)
    return accuracies


def bench_size(
    encoder: Encoder,
    size: int,
    data_root: Path,
    questions: list[AnalogyQuestion],
    development: list[tuple[str, str, str, frozenset[str]]],
    similarity_sets: dict[str, list[WordPairScore]],
    workers: int,
) -> list[tuple[int, str, float]]:
    """Runs every measurement with a vocabulary of `size` words; returns (size, method, accuracy)."""
    summary = []
    settings = Settings(listen="127.0.0.1:0", data_dir=data_root / f"vocabulary-{size}", vocabulary_size=size)
    running = create_server(settings, encoder=encoder)
    try:
        assert running.vocabulary is not None
        began = time.perf_counter()
        vocabulary = running.vocabulary(timeout=None)
        ready_seconds = time.perf_counter() - began
        how = "embedded" if running.vocabulary.words_embedded else "loaded from disk"
        print(f"\n== vocabulary of {size:,} words: {how} in {ready_seconds:.1f} s")
        google = [(*question.words[:3], frozenset([question.answer])) for question in questions]
        for set_name, set_questions in (("questions-words", google), ("development set", development)):
            accuracies = scoring_accuracies(encoder, vocabulary, set_questions)
            for method in AnalogyMethod:
                textbook, default = (
                    accuracies[("textbook", method.value)],
                    accuracies[("default", method.value)],
                )
                print(
                    f"in process, {set_name} ({len(set_questions)} questions), {method.value}: textbook "
                    f"formulas {textbook:.2%}, default scoring {default:.2%} ({default - textbook:+.2%})"
                )
        with VecserveClient(f"127.0.0.1:{running.port}", timeout=600) as client:
            for method in ("cosmul", "cosadd"):
                began = time.perf_counter()
                report = evaluate_analogies(client, questions, method, workers=workers)
                seconds = time.perf_counter() - began
                total = report["total"]
                print(
                    f"analogies {method}: accuracy {total['accuracy']:.2%} ({total['correct']}/"
                    f"{total['questions']}), coverage {total['coverage']:.2%}, "
                    f"{len(questions) / seconds:.0f} questions/s with {workers} concurrent calls"
                )
                if method == "cosmul":
                    print_analogy_report(report)
                summary.append((size, method, total["accuracy"]))
            for name, pairs in similarity_sets.items():
                correlation, _ = evaluate_similarity(client, pairs)
                print(f"similarity {name}: Spearman {correlation:.4f} ({len(pairs)} pairs)")
            median, p95 = latency_ms(lambda: client.solve_analogy(["king", "woman"], ["man"], k=10))
            print(f"latency of one analogy through gRPC: median {median:.1f} ms, p95 {p95:.1f} ms")
            median, p95 = latency_ms(
                lambda: client.compare_relations(("man", "king"), [("woman", "queen")] * 8)
            )
            print(
                f"latency of CompareRelations, 8 candidates (percentiles and ranks) through gRPC: median "
                f"{median:.1f} ms, p95 {p95:.1f} ms"
            )
            median, p95 = latency_ms(lambda: client.find_related_pairs(("man", "king"), k=10), calls=20)
            print(
                "latency of FindRelatedPairs (default bound: 1,000 first words x 50 neighbours) through "
                f"gRPC: median {median:.1f} ms, p95 {p95:.1f} ms"
            )
        engine = AnalogyEngine(encoder, running.vocabulary)
        median, p95 = latency_ms(
            lambda: engine.solve_analogy(["king", "woman"], ["man"], AnalogyMethod.COSMUL, k=10)
        )
        print(f"latency of one analogy in the engine: median {median:.1f} ms, p95 {p95:.1f} ms")
        query = vocabulary.vectors[:3]
        median, _ = latency_ms(lambda: query @ vocabulary.vectors.T, calls=200)
        print(f"  of which scoring {size:,} words (one matrix product): median {median:.2f} ms")
    finally:
        running.stop(grace=5)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[Settings().vocabulary_size])
    parser.add_argument("--data-dir", type=Path, default=Path("benchmarks/.cache/analogy"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions (smoke runs)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--dev", type=Path, default=DEVELOPMENT_SET, help="development analogies (default %(default)s)"
    )
    args = parser.parse_args(argv)

    encoder = Encoder(default_model_path(), "cpu", batching=Settings().batching)
    questions = read_analogy_questions(gensim_data("questions-words.txt"))[: args.limit]
    development = read_development_questions(args.dev)[: args.limit]
    similarity_sets = {
        name: read_similarity_pairs(gensim_data(name)) for name in ("wordsim353.tsv", "simlex999.txt")
    }
    print(
        f"model all-MiniLM-L6-v2 on {encoder.info.device}; {len(questions)} analogy questions; "
        f"{os.cpu_count()} CPUs"
    )
    summary: list[tuple[int, str, float]] = []
    for size in args.sizes:
        summary += bench_size(
            encoder, size, args.data_dir, questions, development, similarity_sets, args.workers
        )
    print("\nsummary (accuracy of all questions):")
    for size, method, accuracy in summary:
        print(f"  {size:>7,} words  {method}  {accuracy:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

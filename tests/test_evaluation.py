"""service.analogy.evaluation: test-set readers, analogy scoring and Spearman, without a server."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.analogy.evaluation import (
    AnalogyQuestion,
    SectionScore,
    WordPairScore,
    average_ranks,
    read_analogy_questions,
    read_similarity_pairs,
    score_analogies,
    spearman,
)

ROOT = Path(__file__).resolve().parent.parent


def test_the_module_needs_no_grpc() -> None:
    # A fresh interpreter, so that modules other tests loaded do not count.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, service.analogy.evaluation; print(' '.join(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not [name for name in loaded if name.split(".")[0] in ("grpc", "vecserve")]


# Analogy files


def test_analogy_questions_keep_their_sections_in_file_order(tmp_path: Path) -> None:
    questions = tmp_path / "questions-words.txt"
    questions.write_text(
        "man king woman queen\n"  # before any ': section' line
        "# a comment\n"
        "\n"
        ": capital-common-countries\n"
        "Athens Greece  Baghdad\tIraq\n"
        ":\n"  # a section line without a name
        "  good better bad worse  \n",
        encoding="utf-8",
    )
    assert read_analogy_questions(questions) == [
        AnalogyQuestion("default", ("man", "king", "woman", "queen")),
        AnalogyQuestion("capital-common-countries", ("Athens", "Greece", "Baghdad", "Iraq")),
        AnalogyQuestion("default", ("good", "better", "bad", "worse")),
    ]
    assert read_analogy_questions(questions)[1].answer == "Iraq"


@pytest.mark.parametrize(("bad_line", "count"), [("man king woman", 3), ("man king woman queen prince", 5)])
def test_an_analogy_line_of_other_than_four_words_names_its_line(
    tmp_path: Path, bad_line: str, count: int
) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text(f": family\n\n# comment\nboy girl brother sister\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        read_analogy_questions(questions)
    assert str(raised.value) == f"{questions}:5: expected four words 'a b c d', got {count}"


def test_an_empty_analogy_file_holds_no_questions(tmp_path: Path) -> None:
    questions = tmp_path / "empty.txt"
    questions.write_text(": only a section\n# and a comment\n", encoding="utf-8")
    assert read_analogy_questions(questions) == []


# Similarity files


def test_similarity_file_formats(tmp_path: Path) -> None:
    simlex = tmp_path / "SimLex-999.txt"
    simlex.write_text(
        "word1\tword2\tPOS\tSimLex999\tconc(w1)\nold\tnew\tA\t1.58\t2.72\nsmart\tintelligent\tA\t9.2\t1.75\n"
    )
    assert [(p.first, p.second, p.gold) for p in read_similarity_pairs(simlex)] == [
        ("old", "new", 1.58),
        ("smart", "intelligent", 9.2),
    ]
    csv = tmp_path / "wordsim.csv"
    csv.write_text("Word 1,Word 2,Human (mean)\nlove,sex,6.77\n")
    assert [(p.first, p.gold) for p in read_similarity_pairs(csv)] == [("love", 6.77)]


def test_similarity_rows_split_on_tabs_commas_or_spaces(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "# Word 1\tWord 2\tHuman (mean)\n"
        "tiger\tcat\t7.35\n"
        "\n"
        "  # an indented comment\n"
        "car automobile 8.94\n"
        "noon , string , 0.54\n",
        encoding="utf-8",
    )
    assert read_similarity_pairs(pairs) == [
        WordPairScore("tiger", "cat", 7.35),
        WordPairScore("car", "automobile", 8.94),
        WordPairScore("noon", "string", 0.54),
    ]


def test_a_header_without_a_simlex_column_keeps_the_third(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("first\tsecond\tscore\textra\nking\tqueen\t8.58\t0.1\n", encoding="utf-8")
    assert read_similarity_pairs(pairs) == [WordPairScore("king", "queen", 8.58)]


def test_a_short_similarity_row_names_its_line(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("# header comment\ntiger\tcat\t7.35\n\nking\tqueen\n", encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        read_similarity_pairs(pairs)
    assert str(raised.value) == f"{pairs}:4: expected 'word1 word2 score', got 'king\\tqueen'"


def test_a_score_that_is_not_a_number_after_the_first_pair_names_its_line(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("tiger\tcat\t7.35\nking\tqueen\thigh\n", encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        read_similarity_pairs(pairs)
    assert str(raised.value) == f"{pairs}:2: score 'high' is not a number"


# Analogy scoring

QUESTIONS = [
    AnalogyQuestion("family", ("man", "king", "woman", "queen")),
    AnalogyQuestion("family", ("boy", "girl", "brother", "sister")),
    AnalogyQuestion("capitals", ("Athens", "Greece", "Baghdad", "Iraq")),
    AnalogyQuestion("family", ("he", "she", "his", "her")),
    AnalogyQuestion("capitals", ("Paris", "France", "Rome", "Italy")),
]


def test_analogy_scores_per_section_and_in_total() -> None:
    answers = [
        "QUEEN",  # right: words compare case-insensitively
        "brother",  # wrong, but its gold answer is in the vocabulary
        "iraq",  # right
        None,  # refused: wrong and not covered
        "italy",  # matches the gold answer, which the vocabulary lacks
    ]
    scores = score_analogies(QUESTIONS, answers, {"queen", "sister", "Iraq", "her"})
    assert list(scores.sections) == ["family", "capitals"]
    assert scores.sections["family"] == SectionScore(total=3, correct=1, covered=2, refused=1)
    assert scores.sections["capitals"] == SectionScore(total=2, correct=2, covered=1, refused=0)
    assert scores.total == SectionScore(total=5, correct=3, covered=3, refused=1)
    assert scores.sections["family"].accuracy == 1 / 3
    assert scores.total.coverage == 0.6
    assert scores.sections["family"].as_dict() == {
        "questions": 3,
        "correct": 1,
        "accuracy": 0.333333,
        "coverage": 0.666667,
        "covered_accuracy": 0.5,  # as gensim reports it: of the questions inside the vocabulary
        "refused": 1,
    }


def test_no_questions_score_zero() -> None:
    scores = score_analogies([], [], set())
    assert scores.sections == {}
    assert scores.total.as_dict() == {
        "questions": 0,
        "correct": 0,
        "accuracy": 0.0,
        "coverage": 0.0,
        "covered_accuracy": 0.0,
        "refused": 0,
    }


def test_answers_must_match_the_questions_one_to_one() -> None:
    with pytest.raises(ValueError):
        score_analogies(QUESTIONS, ["queen"], {"queen"})


# Spearman correlation


def test_tied_values_share_their_mean_rank() -> None:
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert average_ranks(np.array([0.5, -1.0])).tolist() == [2.0, 1.0]


def test_spearman_by_hand() -> None:
    # Ranks [1, 2.5, 2.5, 4] and [1, 3, 2, 4]: covariance 4.5 over sqrt(4.5 * 5), which is 3 / sqrt(10).
    assert spearman([1, 2, 2, 3], [10, 30, 20, 40]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotonic, not linear
    assert spearman([1, 2, 3, 4], [9, 7, 5, -1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) == 0.0  # a constant side has no ranking to correlate


def test_spearman_matches_scipy() -> None:
    spearmanr = pytest.importorskip("scipy.stats").spearmanr
    generator = np.random.default_rng(7)
    for _ in range(5):
        left = generator.integers(0, 5, size=40).astype(float)  # many ties
        right = left + generator.normal(0, 2, size=40)
        assert spearman(left, right) == pytest.approx(spearmanr(left, right).correlation, abs=1e-12)

"""Word-embedding test sets: reading analogy and word-similarity files and scoring answers to them.

Plain Python and numpy, no gRPC: the caller obtains the answers (through the service, or in process)
and this module turns them into accuracies, coverage and Spearman correlations.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Section of the questions that precede the first ': section' line.
DEFAULT_SECTION = "default"
# Column of the gold score in a similarity file without a header naming one.
DEFAULT_SCORE_COLUMN = 2
# Header of the score column in the original SimLex-999 file.
SIMLEX_SCORE_HEADER = "SimLex999"


# Analogies


@dataclass(frozen=True)
class AnalogyQuestion:
    section: str
    words: tuple[str, str, str, str]  # a b c d: a is to b as c is to d

    @property
    def answer(self) -> str:
        return self.words[3]


def read_analogy_questions(path: Path) -> list[AnalogyQuestion]:
    """Questions of a Google questions-words.txt file: ': section' lines, then 'a b c d' lines.

    Blank lines and '#' comments are skipped; a line of other than four words raises ValueError
    naming the file and line number.
    """
    questions = []
    section = DEFAULT_SECTION
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            section = line[1:].strip() or DEFAULT_SECTION
            continue
        words = line.split()
        if len(words) != 4:
            raise ValueError(f"{path}:{number}: expected four words 'a b c d', got {len(words)}")
        questions.append(AnalogyQuestion(section, (words[0], words[1], words[2], words[3])))
    return questions


@dataclass
class SectionScore:
    """Counts over the questions of one section (or of all of them)."""

    total: int = 0
    correct: int = 0
    covered: int = 0  # answered, and the gold answer is in the vocabulary
    refused: int = 0  # no answer: the service refused the question (unrepresentable words)

    def add(self, correct: bool, covered: bool, refused: bool) -> None:
        self.total += 1
        self.correct += correct
        self.covered += covered
        self.refused += refused

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def coverage(self) -> float:
        return self.covered / self.total if self.total else 0.0

    @property
    def covered_accuracy(self) -> float:
        """Accuracy over the covered questions only: gensim's evaluate_word_analogies leaves out the
        questions with a word outside the vocabulary, and reports this."""
        return self.correct / self.covered if self.covered else 0.0

    def as_dict(self) -> dict[str, float | int]:
        """The row of a JSON report, ratios rounded to six decimals."""
        return {
            "questions": self.total,
            "correct": self.correct,
            "accuracy": round(self.accuracy, 6),
            "coverage": round(self.coverage, 6),
            "covered_accuracy": round(self.covered_accuracy, 6),
            "refused": self.refused,
        }


@dataclass
class AnalogyScores:
    sections: dict[str, SectionScore] = field(default_factory=dict)  # in the order of the file
    total: SectionScore = field(default_factory=SectionScore)


def score_analogies(
    questions: Sequence[AnalogyQuestion],
    answers: Sequence[str | None],
    answers_in_vocabulary: Set[str],
) -> AnalogyScores:
    """Scores the top answer to each question, in order (None: refused, which counts as wrong and
    uncovered); answers and questions of different lengths raise ValueError.

    `answers_in_vocabulary` holds the gold answers that the vocabulary contains: a question whose
    answer it lacks cannot be right, and is left out of the coverage.
    """
    scores = AnalogyScores()
    for question, answer in zip(questions, answers, strict=True):
        # Answers and gold words compare as the service compares words: case-insensitively.
        correct = answer is not None and answer.lower() == question.answer.lower()
        covered = answer is not None and question.answer in answers_in_vocabulary
        for score in (scores.sections.setdefault(question.section, SectionScore()), scores.total):
            score.add(correct, covered, answer is None)
    return scores


# Word similarity


@dataclass(frozen=True)
class WordPairScore:
    first: str
    second: str
    gold: float  # the human similarity score


def read_similarity_pairs(path: Path) -> list[WordPairScore]:
    """Word pairs with gold scores: 'w1 w2 score' rows (tab, comma or space separated), '#' comments.

    A header row (its third field not a number) may name the score column: 'SimLex999' when
    present (the original SimLex-999 file), otherwise the third column. A row too short, or a
    score that is not a number after the first pair, raises ValueError naming the file and line.
    """
    pairs = []
    score_column = DEFAULT_SCORE_COLUMN
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        separator = "\t" if "\t" in line else ("," if "," in line else None)
        fields = [part.strip() for part in line.split(separator)]
        if len(fields) <= score_column:
            raise ValueError(f"{path}:{number}: expected 'word1 word2 score', got {line!r}")
        try:
            gold = float(fields[score_column])
        except ValueError:
            if pairs:
                raise ValueError(f"{path}:{number}: score {fields[score_column]!r} is not a number") from None
            score_column = (
                fields.index(SIMLEX_SCORE_HEADER) if SIMLEX_SCORE_HEADER in fields else DEFAULT_SCORE_COLUMN
            )
            continue
        pairs.append(WordPairScore(fields[0], fields[1], gold))
    return pairs


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing their mean rank (as Spearman's correlation needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(left: Sequence[float], right: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson correlation of the (tie-averaged) ranks; 0.0 when either
    side is constant."""
    left_ranks = average_ranks(np.asarray(left, float))
    right_ranks = average_ranks(np.asarray(right, float))
    left_ranks -= left_ranks.mean()
    right_ranks -= right_ranks.mean()
    denominator = float(np.sqrt((left_ranks**2).sum() * (right_ranks**2).sum()))
    return float((left_ranks * right_ranks).sum() / denominator) if denominator else 0.0

"""`vecserve analogy|relate|pairs|similar|plot|eval` against a real server with the real model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clients import VecserveClient
from clients.cli import main
from clients.commands.analogy import draw_plot, parse_plot_words, project_2d
from service.analogy import engine as analogy
from service.config import Settings
from service.embedding.encoder import Encoder
from service.grpc_server.server import RunningServer, create_server


@pytest.fixture(scope="module")
def address(encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The same data directory and size as test_analogy_service, so the vocabulary is embedded once.
    data_dir = tmp_path_factory.getbasetemp() / "analogy-data"
    data_dir.mkdir(exist_ok=True)
    running: RunningServer = create_server(
        Settings(listen="127.0.0.1:0", data_dir=data_dir, vocabulary_size=5000), encoder=encoder
    )
    yield f"127.0.0.1:{running.port}"
    running.stop(grace=5)


def run(capsys: pytest.CaptureFixture[str], address: str, *args: str) -> tuple[int, str, str]:
    code = main(["--address", address, "--timeout", "300", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_analogy_prints_ranked_answers(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, _ = run(capsys, address, "analogy", "man", "king", "woman", "-k", "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("man is to king as woman is to ?")
    assert lines[1].split()[:2] == ["1.", "queen"]
    assert len(lines) == 4


def test_analogy_json_and_general_form(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, _ = run(
        capsys,
        address,
        "analogy",
        "--positive",
        "king",
        "woman",
        "--negative",
        "man",
        "--json",
        "--method",
        "cosadd",
    )
    assert code == 0
    result = json.loads(out)
    assert result["method"] == "cosadd" and result["negative"] == ["man"]
    assert len(result["answers"]) == 10
    assert "queen" in [a["word"] for a in result["answers"][:3]]


def test_analogy_usage_errors(capsys: pytest.CaptureFixture[str], address: str) -> None:
    assert run(capsys, address, "analogy", "man", "king")[0] == 2
    assert run(capsys, address, "analogy", "man", "king", "woman", "--positive", "x")[0] == 2
    code, _, err = run(capsys, address, "analogy", "man", "king", "woman", "-k", "5000")
    assert code == 1 and "INVALID_ARGUMENT" in err


def test_relate_ranks_candidates(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, _ = run(capsys, address, "relate", "man", "woman", "apple", "car", "king", "queen")
    assert code == 0
    rows = [line for line in out.splitlines() if line.strip().startswith("1 ")]
    assert "king -> queen" in rows[0]
    code, out, _ = run(
        capsys, address, "relate", "dugong", "manatee", "hammerhead shark", "great hammerhead shark", "--json"
    )
    result = json.loads(out)
    assert result["null_pair_count"] == 5000 and result["vocabulary_word_count"] == 5000
    [comparison] = result["comparisons"]
    assert comparison["second"] == "great hammerhead shark"
    assert set(comparison) == {
        "first",
        "second",
        "offset_similarity",
        "pair_similarity",
        "offset_percentile",
        "answer_rank",
        "answer_in_vocabulary",
    }
    assert 0 <= comparison["offset_percentile"] <= 100
    assert comparison["answer_rank"] >= 1 and not comparison["answer_in_vocabulary"]  # a phrase
    assert run(capsys, address, "relate", "a", "b", "c")[0] == 2


def test_relate_prints_percentiles_and_answer_ranks(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, _ = run(capsys, address, "relate", "man", "king", "woman", "queen", "woman", "man")
    assert code == 0
    header, first, second = out.splitlines()[1:4]
    assert header.split() == ["rank", "candidate", "relation", "percentile", "answer", "rank", "pair"]
    assert first.split()[1:4] == ["woman", "->", "queen"] and first.split()[6] == "1"
    assert second.split()[6] == "-"  # man is a question word: never an answer
    assert "5,000 random pairs" in out


def test_pairs_lists_pairs_of_the_relation(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, _ = run(capsys, address, "pairs", "big", "bigger", "-k", "5", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["compared_pair_count"] > 0 and len(result["pairs"]) == 5
    found = {(p["first"], p["second"]) for p in result["pairs"]}
    assert found & {("small", "smaller"), ("large", "larger"), ("long", "longer")}
    code, out, _ = run(capsys, address, "pairs", "big", "bigger", "--first-words", "small", "cold", "-k", "2")
    assert code == 0 and "pairs like big -> bigger" in out
    assert {line.split()[1] for line in out.splitlines()[2:4]} <= {"small", "cold"}


def test_similar(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, _ = run(capsys, address, "similar", "ocean", "-k", "4", "--json")
    assert code == 0
    [result] = json.loads(out)
    assert result["query"] == "ocean" and len(result["words"]) == 4
    assert "sea" in [w["word"] for w in result["words"]]


def test_plot_writes_a_readable_png(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path, encoder: Encoder
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    out = tmp_path / "plots" / "royals.png"
    code, printed, _ = run(
        capsys,
        address,
        "plot",
        "man->king",
        "woman->queen",
        "boy",
        "girl",
        "--pairs",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 400
    assert image.std() > 0.01  # not a blank canvas
    result = json.loads(printed)
    assert [w["word"] for w in result["words"]] == ["man", "king", "woman", "queen", "boy", "girl"]
    assert result["arrows"] == [["man", "king"], ["woman", "queen"], ["boy", "girl"]]
    # Every arrow after the first is compared with it, as `relate` does.
    assert [(r["first"], r["second"]) for r in result["relations"]] == [("woman", "queen"), ("boy", "girl")]
    assert result["relations"][0]["answer_rank"] == 1 and result["relations"][0]["offset_percentile"] > 95
    # The points are the words in the vocabulary's space, where analogies are computed: embedded as the
    # service embeds them and centered like its vocabulary. Distances are kept by the projection of these
    # six vectors (only up to the signs of its axes, so distances are compared).
    with VecserveClient(address, timeout=300) as client:
        vectors = client.word_vectors([w["word"] for w in result["words"]])
        # They are the vectors nearest words are ranked by: their cosine is FindSimilarWords' score.
        [[nearest]] = client.find_similar_words(["king"], k=1)
        king, near = client.word_vectors(["king", nearest.word])
    assert float(king @ near) == pytest.approx(nearest.score, abs=1e-5)
    raw = encoder.encode([analogy.WORD_TEMPLATE.format(w["word"]) for w in result["words"]])
    assert np.abs(vectors - raw).max() > 0.01  # centered like the vocabulary, not the raw embeddings
    expected, _ = project_2d(vectors)
    plotted = np.array([[w["x"], w["y"]] for w in result["words"]])
    distances = np.linalg.norm(plotted[:, None] - plotted[None], axis=2)
    np.testing.assert_allclose(
        distances, np.linalg.norm(expected[:, None] - expected[None], axis=2), atol=1e-4
    )


def test_plot_argument_errors() -> None:
    assert parse_plot_words(["a", "b->c", "a"], pairs=False) == (["a", "b", "c"], [("b", "c")])
    for bad in (["->x"], ["a->"], ["a->b->c"]):
        with pytest.raises(ValueError):
            parse_plot_words(bad, pairs=False)
    with pytest.raises(ValueError):
        parse_plot_words(["a", "b", "c"], pairs=True)


QUESTIONS = """\
: family
man king woman queen
boy girl brother sister
: gram3-comparative
big bigger small smaller
good better bad worse
: unanswerable
man king woman zyzzyvas
"""


def test_eval_analogies(capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text(QUESTIONS)
    code, out, _ = run(capsys, address, "eval", "analogies", str(questions), "--json", "--workers", "3")
    assert code == 0
    report = json.loads(out)
    assert report["method"] == "cosmul" and report["vocabulary_words"] == 5000
    assert list(report["sections"]) == ["family", "gram3-comparative", "unanswerable"]
    assert report["sections"]["gram3-comparative"]["accuracy"] == 1.0
    assert report["sections"]["unanswerable"] == {
        "questions": 1,
        "correct": 0,
        "accuracy": 0.0,
        "coverage": 0.0,  # the answer is not in the vocabulary
        "covered_accuracy": 0.0,
        "refused": 0,
    }
    total = report["total"]
    assert total["questions"] == 5 and total["coverage"] == 0.8
    assert total["correct"] == report["sections"]["family"]["correct"] + 2
    assert total["accuracy"] == pytest.approx(total["correct"] / 5)

    code, out, _ = run(capsys, address, "eval", "analogies", str(questions), "--method", "cosadd")
    assert code == 0
    assert "method cosadd" in out.splitlines()[0]
    assert out.splitlines()[-1].split()[0] == "total"


def test_eval_analogies_counts_refused_questions_as_wrong(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path
) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text(": odd\nman king \U0001f600 queen\nman king woman queen\n")
    code, out, _ = run(capsys, address, "eval", "analogies", str(questions), "--json")
    assert code == 0
    total = json.loads(out)["total"]
    assert total == {
        "questions": 2,
        "correct": 1,
        "accuracy": 0.5,
        "coverage": 0.5,
        "covered_accuracy": 1.0,
        "refused": 1,
    }


PAIRS = """\
# Word 1\tWord 2\tHuman (mean)
tiger\tcat\t7.35
king\tqueen\t8.58
car\tautomobile\t8.94
noon\tstring\t0.54
professor\tcucumber\t0.31
ocean\tsea\t8.70
"""


def test_eval_similarity(capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(PAIRS)
    code, out, _ = run(capsys, address, "eval", "similarity", str(pairs), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["pairs"] == 6
    assert report["spearman"] > 0.5  # unrelated pairs score lowest


def test_plot_labels_of_words_at_nearly_the_same_place_do_not_overlap(tmp_path: Path) -> None:
    words = ["man", "woman", "king", "queen", "germany", "berlin"]
    # Pairs of words almost on top of each other, as in real projections (man/woman, germany/berlin).
    points = np.array([[0.0, 0.0], [0.01, -0.005], [1.0, 0.1], [1.0, 0.09], [0.5, 0.8], [0.52, 0.81]])
    labels = draw_plot(
        words, points, [("man", "king")], tmp_path / "crowded.png", "crowded", np.array([0.6, 0.3])
    )
    assert len(labels) == len(words)
    for first in range(len(labels)):
        for second in range(first + 1, len(labels)):
            assert not labels[first].overlaps(labels[second]), (words[first], words[second])
    assert (tmp_path / "crowded.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Word-vector files: reading each format, refusing bad files by line, `vecserve index import-vectors`
against a real server, analogies inside an imported space, and the same accuracy as gensim's."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import VecserveClient
from clients.cli import main
from service.analogy.word_vector_files import WordVectorFileError, read_word_vectors

# Planted so that every analogy has one exact answer: axes person, royal, female, fruit, size.
PLANTED = {
    "man": [1.0, 0.0, 0.0, 0.0, 0.0],
    "woman": [1.0, 0.0, 1.0, 0.0, 0.0],
    "king": [1.0, 1.0, 0.0, 0.0, 0.0],
    "queen": [1.0, 1.0, 1.0, 0.0, 0.0],
    "Apple": [0.0, 0.0, 0.0, 1.0, 0.5],
    "melon": [0.0, 0.0, 0.0, 1.0, 2.0],
    "grape": [0.0, 0.0, 0.0, 1.0, 0.25],
}
DIMENSION = 5


def text_lines(vectors: dict[str, list[float]]) -> list[str]:
    return [" ".join([word, *(repr(value) for value in vector)]) for word, vector in vectors.items()]


def write_word2vec(path: Path, vectors: dict[str, list[float]] = PLANTED) -> Path:
    path.write_text("\n".join([f"{len(vectors)} {DIMENSION}", *text_lines(vectors)]) + "\n", encoding="utf-8")
    return path


def write_word2vec_binary(path: Path, vectors: dict[str, list[float]] = PLANTED) -> Path:
    with open(path, "wb") as file:
        file.write(f"{len(vectors)} {DIMENSION}\n".encode())
        for word, vector in vectors.items():
            file.write(word.encode() + b" " + struct.pack(f"<{DIMENSION}f", *vector) + b"\n")
    return path


def write_glove(path: Path, vectors: dict[str, list[float]] = PLANTED) -> Path:
    path.write_text("\n".join(text_lines(vectors)) + "\n", encoding="utf-8")
    return path


def write_fasttext_vec(path: Path, vectors: dict[str, list[float]] = PLANTED) -> Path:
    # fastText writes a space after the last value of every line.
    lines = [f"{len(vectors)} {DIMENSION}", *(line + " " for line in text_lines(vectors))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


WRITERS = {
    "word2vec": write_word2vec,
    "word2vec-binary": write_word2vec_binary,
    "fasttext": write_fasttext_vec,
    "glove": write_glove,
}


# Reading


@pytest.mark.parametrize("file_format", list(WRITERS))
def test_each_format_gives_back_the_files_vectors_exactly(tmp_path: Path, file_format: str) -> None:
    loaded = read_word_vectors(WRITERS[file_format](tmp_path / "vectors"), file_format)
    assert loaded.words == list(PLANTED) and loaded.dimension == DIMENSION
    np.testing.assert_array_equal(loaded.vectors, np.array(list(PLANTED.values()), dtype=np.float32))
    limited = read_word_vectors(tmp_path / "vectors", file_format, limit=3)
    assert limited.words == list(PLANTED)[:3] and limited.vectors.shape == (3, DIMENSION)


def test_a_fasttext_model_gives_its_whole_word_vectors(tmp_path: Path) -> None:
    from gensim.models.fasttext import FastText, load_facebook_vectors, save_facebook_model

    sentences = [["the", "king", "and", "the", "queen"], ["a", "man", "and", "a", "woman"]] * 20
    model = FastText(sentences, vector_size=8, min_count=1, epochs=2, seed=1, workers=1, bucket=1000)
    save_facebook_model(model, str(tmp_path / "model.bin"))
    loaded = read_word_vectors(tmp_path / "model.bin", "fasttext")
    expected = load_facebook_vectors(str(tmp_path / "model.bin"))
    assert loaded.words == list(expected.index_to_key) and loaded.dimension == 8
    np.testing.assert_array_equal(loaded.vectors, np.array([expected[word] for word in loaded.words]))


BAD_TEXT_FILES = [
    ("truncated", "3 2\na 1 2\nb 3 4\n", ":3: the file ends here, with 2 of the 3 words"),
    ("cut mid-line", "3 2\na 1 2\nb 3 4\nc 5", ":4: word 'c' has 1 values, expected 2"),
    ("wrong dimension", "3 2\na 1 2\nb 3 4 5\nc 5 6\n", ":3: word 'b' has 3 values, expected 2"),
    ("not a number", "2 2\na 1 2\nb 3 x4\n", ":3: value 2 of word 'b' is 'x4', not a number"),
    ("not finite", "2 2\na 1 nan\nb 3 4\n", ":2: value 2 of word 'a' is 'nan'"),
    ("beyond float32", "2 2\na 1 1e39\nb 3 4\n", ":2: value 2 of word 'a' is '1e39'"),
    ("duplicate word", "3 2\na 1 2\nb 3 4\na 5 6\n", ":4: word 'a' appears again (first at line 2)"),
    ("empty", "", "is empty"),
    ("no header", "a 1 2\nb 3 4\n", ":1: expected the header 'COUNT DIMENSION'"),
    (
        "more lines than announced",
        "1 2\na 1 2\nb 3 4\n",
        ":3: a line after the 1 words the header announces: is it right?",
    ),
    ("blank line", "2 2\na 1 2\n\nb 3 4\n", ":3: blank line"),
    ("not UTF-8", "2 2\na 1 2\n\xff 3 4\n", ":3: not UTF-8"),
]


@pytest.mark.parametrize(("case", "content", "message"), BAD_TEXT_FILES, ids=[c[0] for c in BAD_TEXT_FILES])
def test_a_bad_text_file_is_refused_naming_its_line(
    tmp_path: Path, case: str, content: str, message: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content.encode("latin-1") if case == "not UTF-8" else content.encode())
    with pytest.raises(WordVectorFileError) as raised:
        read_word_vectors(path, "word2vec")
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_bad_glove_files_are_refused_naming_their_line(tmp_path: Path) -> None:
    for content, message in [
        ("a 1 2\nb 3\n", ":2: word 'b' has 1 values, expected 2 (the first line's dimension)"),
        ("a 1 2\na 3 4\n", ":2: word 'a' appears again (first at line 1)"),
        ("", "is empty"),
    ]:
        path = tmp_path / "glove.txt"
        path.write_text(content)
        with pytest.raises(WordVectorFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_word_vectors(path, "glove")


def test_bad_binary_files_are_refused_naming_their_entry(tmp_path: Path) -> None:
    whole = write_word2vec_binary(tmp_path / "whole.bin").read_bytes()

    def entry(number: int, word: bytes) -> str:
        """How an error places the entry: it starts with the newline ending the vector before it."""
        offset = whole.index(b"\n" + word)
        return f"entry {number} of 7 (byte {offset})"

    cases = [
        (whole[:-10], f"{entry(7, b'grape')}: the file ends inside the vector of 'grape'"),
        (whole[: whole.index(b"melon") + 2], f"{entry(6, b'melon')}: the file ends inside a word"),
        (whole.replace(b"king", b"kin\xff"), f"{entry(3, b'king')}: the word b'kin\\xff' is not UTF-8"),
        (
            whole.replace(b"queen", b"woman"),
            f"{entry(4, b'queen')}: word 'woman' appears again (first at entry 2)",
        ),
        # A wrong dimension in the header: words start inside vectors, or vectors end too early.
        (b"7 6\n" + whole[4:], "is the header's dimension not the vectors'?"),
        (
            b"7 4\n" + whole[4:],
            "entry 2 of 7 (byte 24): word '\\x00\\x00\\x00\\x00\\nwoman' holds a control character",
        ),
        (
            b"6 5\n" + whole[4:],
            f"byte {whole.index(b'grape') - 1}: data after the 6 words the header announces",
        ),
        (b"", "is empty"),
    ]
    for content, message in cases:
        path = tmp_path / "bad.bin"
        path.write_bytes(content)
        with pytest.raises(WordVectorFileError) as raised:
            read_word_vectors(path, "word2vec-binary")
        assert message in str(raised.value), (message, str(raised.value))


# Importing into a server


def run(capsys: pytest.CaptureFixture[str], address: str, *args: str) -> tuple[int, str, str]:
    code = main(["--address", address, "--timeout", "300", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def imported(address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[str]:
    """The planted vectors imported from a word2vec file as space `planted`."""
    path = write_word2vec(tmp_path / "planted.txt")
    code, out, err = run(capsys, address, "index", "import-vectors", "planted", str(path), "--json")
    assert code == 0, err
    assert json.loads(out) == {"index": "planted", "words": len(PLANTED), "dimension": DIMENSION}
    yield "planted"
    with VecserveClient(address) as client:
        client.delete_index("planted")


@pytest.mark.parametrize("file_format", list(WRITERS))
def test_import_stores_each_word_with_the_files_vector(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], file_format: str
) -> None:
    path = WRITERS[file_format](tmp_path / "vectors")
    name = f"import-{file_format}"
    code, out, err = run(capsys, address, "index", "import-vectors", name, str(path), "--format", file_format)
    assert code == 0, err
    assert f"imported 7 words of dimension 5 into index {name}" in out
    with VecserveClient(address) as client:
        try:
            index = client.get_index(name)
            assert (index.dimension, index.document_count) == (DIMENSION, len(PLANTED))
            for word, vector in PLANTED.items():
                document = client.get_document(name, word)
                assert document.text == word
                assert list(document.vector) == vector  # exactly the file's numbers
        finally:
            client.delete_index(name)


@pytest.mark.parametrize(
    ("case", "content", "message"), BAD_TEXT_FILES[:8], ids=[c[0] for c in BAD_TEXT_FILES[:8]]
)
def test_a_bad_file_imports_nothing(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, content: str, message: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content)
    code, _, err = run(capsys, address, "index", "import-vectors", "bad-import", str(path))
    assert code == 2
    assert message in err and "nothing was imported" in err
    with VecserveClient(address) as client:
        assert "bad-import" not in {index.name for index in client.all_indexes()}


def test_an_upload_that_fails_midway_deletes_its_index(address: str) -> None:
    words = list(PLANTED)
    vectors = np.array(list(PLANTED.values()), dtype=np.float32)
    vectors[5, 0] = np.nan  # refused by the server, in the third message of two words each
    with VecserveClient(address) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.import_word_vectors("half-imported", words, vectors, batch_size=2)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "half-imported" not in {index.name for index in client.all_indexes()}


def test_analogies_inside_an_imported_space(address: str, imported: str) -> None:
    with VecserveClient(address) as client:
        for method in ("cosadd", "cosmul"):
            [best] = client.solve_analogy(["king", "woman"], ["man"], method=method, k=1, space=imported)
            assert best.word == "queen"
        # Words compare case-insensitively, as in the built-in vocabulary: APPLE is the file's Apple.
        [similar] = client.find_similar_words(["APPLE"], k=1, space=imported)
        assert similar[0].word == "grape"
        relations = client.compare_relations(("man", "king"), [("woman", "queen")], space=imported)
        # The offsets of the unit vectors, as gensim and SolveAnalogy use them.
        unit = {word: np.array(vector) / np.linalg.norm(vector) for word, vector in PLANTED.items()}
        reference, candidate = unit["king"] - unit["man"], unit["queen"] - unit["woman"]
        expected = reference @ candidate / (np.linalg.norm(reference) * np.linalg.norm(candidate))
        assert relations.comparisons[0].offset_similarity == pytest.approx(float(expected), abs=1e-6)
        assert relations.comparisons[0].answer_rank == 1
        pairs = client.find_related_pairs(("man", "king"), k=1, space=imported)
        assert (pairs.pairs[0].pair.first, pairs.pairs[0].pair.second) == ("woman", "queen")
        with pytest.raises(grpc.RpcError) as raised:
            client.solve_analogy(["king", "dugong"], ["man"], space=imported)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert "positive[1] 'dugong' is not a word of space 'planted'" in raised.value.details()


def test_the_cli_answers_in_a_space(
    address: str, imported: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, address, "analogy", "man", "king", "woman", "--space", imported, "--json")
    assert code == 0 and json.loads(out)["answers"][0]["word"] == "queen"
    code, out, _ = run(capsys, address, "similar", "melon", "--space", imported, "-k", "1", "--json")
    assert code == 0 and json.loads(out)[0]["words"][0]["word"] == "Apple"  # as the file spells it
    code, out, _ = run(
        capsys, address, "relate", "man", "king", "woman", "queen", "--space", imported, "--json"
    )
    assert code == 0 and json.loads(out)["vocabulary_word_count"] == len(PLANTED)
    code, out, _ = run(capsys, address, "pairs", "man", "king", "--space", imported, "-k", "1", "--json")
    assert code == 0 and json.loads(out)["pairs"][0]["second"] == "queen"
    code, out, _ = run(
        capsys,
        address,
        "plot",
        "man->king",
        "woman->queen",
        "--space",
        imported,
        "--out",
        str(tmp_path / "p.png"),
    )
    assert code == 0 and (tmp_path / "p.png").stat().st_size > 0
    code, _, err = run(capsys, address, "similar", "dugong", "--space", imported)
    assert code == 1 and "NOT_FOUND" in err and "'dugong'" in err
    questions = tmp_path / "questions.txt"
    questions.write_text(
        ": royals\nman king woman queen\nman king dugong manatee\n: fruit\nApple melon grape melon\n"
    )
    code, out, _ = run(capsys, address, "eval", "analogies", str(questions), "--space", imported, "--json")
    report = json.loads(out)
    assert code == 0 and report["method"] == "cosadd" and report["vocabulary"] == "space planted"
    assert report["sections"]["royals"] == {
        "questions": 2,
        "correct": 1,
        "accuracy": 0.5,
        "coverage": 0.5,
        "covered_accuracy": 1.0,
        "refused": 1,  # dugong is not in the space
    }


# Parity with gensim


def with_case_variants(source: Path, target: Path) -> Path:
    """source's words plus capitalized variants with other vectors, some before their lower-case form
    (then gensim's case-insensitive evaluation takes the variant's vector) and some after it."""
    from gensim.models import KeyedVectors

    vectors = KeyedVectors.load_word2vec_format(str(source))
    generator = np.random.default_rng(5)
    words: list[str] = []
    rows: list[np.ndarray] = []
    for position, word in enumerate(vectors.index_to_key):
        entries = [(word, vectors[word])]
        variant = word.capitalize()
        if position % 3 == 0 and variant not in vectors.key_to_index and variant not in words:
            noisy = vectors[word] + generator.normal(scale=0.5, size=vectors.vector_size)
            entries = [(variant, noisy), *entries] if position % 2 else [*entries, (variant, noisy)]
        for entry_word, entry_vector in entries:
            words.append(entry_word)
            rows.append(entry_vector)
    lines = [" ".join([w, *(f"{v:.6f}" for v in row)]) for w, row in zip(words, rows, strict=True)]
    target.write_text("\n".join([f"{len(words)} {vectors.vector_size}", *lines]) + "\n", encoding="utf-8")
    return target


@pytest.mark.parametrize(
    ("file_name", "file_format"),
    [
        ("euclidean_vectors.bin", "word2vec-binary"),
        ("lee_fasttext.vec", "fasttext"),
        ("word2vec_pre_kv_c", "word2vec"),
        ("case variants", "word2vec"),
    ],
)
def test_the_same_accuracy_as_gensims_evaluate_word_analogies(
    address: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, file_name: str, file_format: str
) -> None:
    from gensim.models import KeyedVectors
    from gensim.test.utils import datapath

    if file_name == "case variants":
        path = str(with_case_variants(Path(datapath("lee_fasttext.vec")), tmp_path / "variants.txt"))
    else:
        path = datapath(file_name)
    name = f"parity-{file_format}"
    code, _, err = run(capsys, address, "index", "import-vectors", name, path, "--format", file_format)
    assert code == 0, err
    try:
        code, out, _ = run(
            capsys, address, "eval", "analogies", datapath("questions-words.txt"), "--space", name, "--json"
        )
        assert code == 0
        report = json.loads(out)
    finally:
        with VecserveClient(address) as client:
            client.delete_index(name)
    vectors = KeyedVectors.load_word2vec_format(path, binary=file_format == "word2vec-binary")
    score, sections = vectors.evaluate_word_analogies(datapath("questions-words.txt"))
    assert report["method"] == "cosadd"  # gensim's evaluation is 3CosAdd
    assert report["total"]["covered_accuracy"] == pytest.approx(score, abs=0.001)
    gensim_total = sections[-1]
    assert report["total"]["correct"] == len(gensim_total["correct"])
    evaluated = len(gensim_total["correct"]) + len(gensim_total["incorrect"])
    assert round(report["total"]["coverage"] * report["total"]["questions"]) == evaluated
    for section in sections[:-1]:
        ours = report["sections"][section["section"]]
        assert ours["correct"] == len(section["correct"]), section["section"]

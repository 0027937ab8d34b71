"""`vecserve index|add|search` against the session's real server, and the filter syntax."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from vecserve.v1 import index_pb2

from clients import VecserveClient
from clients.cli import main
from clients.client import python_value
from clients.commands.index import DEFAULT_BATCH_SIZE, parse_filter, upload_batch_size

ARTICLES = [
    {
        "id": "paris",
        "text": "Paris is the capital of France and home of the Louvre.",
        "metadata": {"region": "europe", "year": 2019},
    },
    {
        "id": "tokyo",
        "text": "Tokyo is a huge city in Japan known for sushi and trains.",
        "metadata": {"region": "asia", "year": 2021},
    },
    {
        "id": "nile",
        "text": "The Nile is the longest river in Africa.",
        "metadata": {"region": "africa", "year": 2015},
    },
    {
        "id": "alps",
        "text": "The Alps are mountains where people go skiing in winter.",
        "metadata": {"region": "europe", "year": 2022},
    },
    {
        "id": "kyoto",
        "text": "Kyoto has thousands of old Buddhist temples.",
        "metadata": {"region": "asia", "year": 2012, "unesco": True},
    },
]


def run_cli(capsys: pytest.CaptureFixture[str], address: str, *args: str) -> tuple[int, str, str]:
    code = main(["--address", address, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_parse_filter_syntax() -> None:
    conditions = parse_filter(
        [
            "lang=en",
            "year>=2000",
            "year<2010",
            "tag=a,b, c",
            'zip="02134"',
            'name="Smith, J."',
            "flag=true",
            "n=3.5",
        ]
    ).conditions
    assert conditions[0].key == "lang" and conditions[0].equals.string_value == "en"
    assert conditions[1].range.HasField("gte") and conditions[1].range.gte == 2000
    assert not conditions[1].range.HasField("lt")
    assert conditions[2].range.lt == 2010
    assert [python_value(v) for v in conditions[3].any_of.values] == ["a", "b", "c"]
    assert conditions[4].equals.string_value == "02134"  # quoted: stays a string
    assert conditions[5].equals.string_value == "Smith, J."
    assert conditions[6].equals.bool_value is True
    assert conditions[7].equals.number_value == 3.5
    mixed = parse_filter(['v=1,"1",false']).conditions[0].any_of.values
    assert [python_value(v) for v in mixed] == [1.0, "1", False]
    for bad in ["no-operator", "=value", "year>=soon", 'a="open']:
        with pytest.raises(ValueError):
            parse_filter([bad])


def test_index_create_list_get_delete(capsys: pytest.CaptureFixture[str], address: str) -> None:
    name = unique("cli")
    code, out, _ = run_cli(
        capsys, address, "index", "create", name, "--kind", "hnsw", "--m", "12", "--metric", "ip"
    )
    assert code == 0 and "hnsw" in out and '"m": 12' in out and "inner_product" in out
    code, out, _ = run_cli(capsys, address, "index", "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "KIND", "METRIC"]
    assert any(line.split()[:3] == [name, "hnsw", "inner_product"] for line in out.splitlines())
    code, out, _ = run_cli(capsys, address, "index", "get", name, "--json")
    fields = json.loads(out)
    assert (fields["name"], fields["kind"], fields["dimension"], fields["hnsw"]["m"]) == (
        name,
        "hnsw",
        384,
        12,
    )
    code, out, _ = run_cli(
        capsys, address, "index", "create", unique("ivf"), "--kind", "ivf_flat", "--nlist", "8"
    )
    assert code == 0 and "exact search until 312 vectors" in out

    code, _, err = run_cli(capsys, address, "index", "create", "../escape")
    assert code == 1 and "INVALID_ARGUMENT" in err
    code, _, err = run_cli(capsys, address, "index", "delete", name)  # stdin is not a terminal here
    assert code == 2 and "--yes" in err
    code, out, _ = run_cli(capsys, address, "index", "delete", name, "--yes")
    assert code == 0 and name in out
    code, _, err = run_cli(capsys, address, "index", "get", name)
    assert code == 1 and "NOT_FOUND" in err


def test_add_batches_within_the_server_limit(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path
) -> None:
    assert upload_batch_size(None, 1024) == DEFAULT_BATCH_SIZE
    assert upload_batch_size(None, 100) == 100
    assert upload_batch_size(None, 0) == DEFAULT_BATCH_SIZE  # a server that does not report its limit
    assert upload_batch_size(1024, 1024) == 1024
    name = unique("limited")
    run_cli(capsys, address, "index", "create", name)
    source = write_jsonl(tmp_path / "articles.jsonl", ARTICLES)
    # Refused before anything is sent: the session server takes 1024 documents per message.
    code, _, err = run_cli(capsys, address, "add", name, str(source), "--batch-size", "1025")
    assert code == 2 and "max_documents_per_request 1024" in err
    with VecserveClient(address) as client:
        assert client.get_index(name).document_count == 0
    code, _, err = run_cli(capsys, address, "add", name, str(source), "--batch-size", "0")
    assert code == 2 and "at least 1" in err


def test_add_jsonl_then_search_with_a_table_json_and_filters(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path
) -> None:
    name = unique("articles")
    run_cli(capsys, address, "index", "create", name)
    source = write_jsonl(tmp_path / "articles.jsonl", ARTICLES)
    code, out, _ = run_cli(capsys, address, "add", name, str(source), "--batch-size", "2")
    assert code == 0 and f"stored 5 documents in {name}" in out

    code, out, _ = run_cli(capsys, address, "search", name, "temples in Japan", "-k", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "query: temples in Japan" and lines[1].split() == ["#", "SCORE", "ID", "TEXT"]
    assert lines[2].split()[2] == "kyoto" and "Buddhist temples" in lines[2]
    assert "region=asia" in lines[3] and "unesco=true" in lines[3] and "year=2012" in lines[3]

    code, out, _ = run_cli(capsys, address, "search", name, "a big city", "skiing", "-k", "5", "--json")
    results = json.loads(out)
    assert [result["query"] for result in results] == ["a big city", "skiing"]
    assert results[1]["hits"][0]["id"] == "alps" and len(results[0]["hits"]) == 5
    assert results[1]["hits"][0]["metadata"] == {"region": "europe", "year": 2022.0}

    def filtered(*filters: str) -> list[str]:
        arguments = [arg for f in filters for arg in ("--filter", f)]
        code, out, _ = run_cli(
            capsys, address, "search", name, "temples in Japan", "-k", "5", "--json", *arguments
        )
        assert code == 0
        return [hit["id"] for hit in json.loads(out)[0]["hits"]]

    assert set(filtered("region=europe")) == {"paris", "alps"}
    assert set(filtered("region=europe,africa")) == {"paris", "alps", "nile"}
    assert set(filtered("year>=2019", "year<2022")) == {"paris", "tokyo"}
    assert filtered("unesco=true") == ["kyoto"]
    code, out, _ = run_cli(capsys, address, "search", name, "--like", "kyoto", "-k", "1", "--json")
    assert json.loads(out)[0]["hits"][0]["id"] == "tokyo"
    code, _, err = run_cli(capsys, address, "search", name, "x", "--filter", "year>=soon")
    assert code == 2 and "needs a number" in err

    # Re-running the load changes nothing: the ids make it idempotent.
    run_cli(capsys, address, "add", name, str(source))
    with VecserveClient(address) as client:
        assert client.get_index(name).document_count == 5


def test_add_csv_and_text_with_derived_ids_is_idempotent(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path
) -> None:
    name = unique("mixed")
    run_cli(capsys, address, "index", "create", name)
    csv_file = tmp_path / "facts.csv"
    csv_file.write_text(
        'id,text,topic,score,zip\nc1,"Honey never spoils, archaeologists say.",food,4.5,02134\n'
        "c2,Octopuses have three hearts.,animals,5,\n"
    )
    text_file = tmp_path / "notes.txt"
    text_file.write_text("Bananas are berries.\n\n   \nThe Moon drifts away from Earth slowly.\n")
    for _ in range(2):
        code, out, _ = run_cli(capsys, address, "add", name, str(csv_file), str(text_file), "--json")
        assert code == 0 and json.loads(out)["upserted"] == 4
    with VecserveClient(address) as client:
        assert client.get_index(name).document_count == 4
        honey = client.get_document(name, "c1")
        assert honey.text == "Honey never spoils, archaeologists say."
        metadata = {key: python_value(value) for key, value in honey.metadata.items()}
        assert metadata == {"topic": "food", "score": 4.5, "zip": "02134"}  # leading zero: kept as text
        assert "zip" not in client.get_document(name, "c2").metadata  # empty cell skipped
        hits = client.search(name, ["fruit"], k=1)[0]
        assert hits[0].text == "Bananas are berries." and len(hits[0].id) == 32


def test_add_refuses_bad_input_before_sending_anything(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path
) -> None:
    name = unique("refused")
    run_cli(capsys, address, "index", "create", name)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "ok", "text": "fine"}\n{"id": "bad", "text": \n')
    code, _, err = run_cli(capsys, address, "add", name, str(broken))
    assert code == 2 and f"{broken}:2: not valid JSON" in err
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"id": "x", "body": "wrong key"}])
    code, _, err = run_cli(capsys, address, "add", name, str(unknown))
    assert code == 2 and "unknown keys ['body']" in err
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"id": "x", "metadata": {"a": 1}}])
    code, _, err = run_cli(capsys, address, "add", name, str(empty))
    assert code == 2 and "needs a text or a vector" in err
    code, _, err = run_cli(capsys, address, "add", name, str(tmp_path / "missing.jsonl"))
    assert code == 2 and "No such file" in err
    with VecserveClient(address) as client:
        assert client.get_index(name).document_count == 0
    vectors = write_jsonl(tmp_path / "vectors.jsonl", [{"id": "v", "vector": [1.0, 2.0]}])
    code, _, err = run_cli(capsys, address, "add", name, str(vectors))
    assert code == 1 and "INVALID_ARGUMENT" in err and "dimension 384" in err


def test_the_installed_command_loads_and_searches(address: str, tmp_path: Path) -> None:
    name = unique("process")
    source = write_jsonl(tmp_path / "articles.jsonl", ARTICLES)
    environment = {**os.environ, "VECSERVE_ADDRESS": address}

    def vecserve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "clients.cli", *args],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
        )

    assert vecserve("index", "create", name).returncode == 0
    loaded = vecserve("add", name, str(source))
    assert loaded.returncode == 0, loaded.stderr
    assert f"stored 5 documents in {name}" in loaded.stdout
    found = vecserve("search", name, "a long river", "-k", "1", "--json")
    assert json.loads(found.stdout)[0]["hits"][0]["id"] == "nile"
    with VecserveClient(address) as client:
        hits = client.search(name, [index_pb2.Query(document_id="paris")], k=4)[0]
        assert "paris" not in {hit.id for hit in hits}


def test_search_with_ef_search_and_nprobe(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "articles.jsonl", ARTICLES)
    graph, lists = unique("cli-hnsw"), unique("cli-ivf")
    run_cli(capsys, address, "index", "create", graph, "--kind", "hnsw")
    run_cli(capsys, address, "index", "create", lists, "--kind", "ivf_flat", "--nlist", "4")
    for name in (graph, lists):
        run_cli(capsys, address, "add", name, str(source), "--no-progress")

    def top_hit(name: str, *tuning: str) -> str:
        code, out, err = run_cli(capsys, address, "search", name, "temples in Japan", "--json", *tuning)
        assert code == 0, err
        return json.loads(out)[0]["hits"][0]["id"]

    assert top_hit(graph, "--ef-search", "200") == top_hit(graph) == "kyoto"
    assert top_hit(lists, "--nprobe", "4") == "kyoto"
    for name, tuning, field in [
        (graph, ("--nprobe", "2"), "nprobe"),
        (graph, ("--ef-search", "0"), "ef_search"),
        (lists, ("--nprobe", "5"), "nprobe"),
        (lists, ("--ef-search", "20"), "ef_search"),
    ]:
        code, _, err = run_cli(capsys, address, "search", name, "temples", *tuning)
        assert code == 1 and "INVALID_ARGUMENT" in err and field in err, err

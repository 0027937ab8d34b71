"""The web page in a real browser: Debian's chromium, headless, driven by Selenium through chromedriver.

For each view the test types into the page (and, separately, opens the view's link) and checks what is
shown, against the HTTP API's own answers where numbers are involved; it saves a screenshot of each view
under its tmp_path. Waits are on the page's own state (each result says what it shows: data-state and
data-for), never fixed sleeps. The page also runs against a server with tokens, and shows errors in
words.

`make test` installs chromium and chromium-driver with apt-get when they are missing; only where
neither they nor apt-get exist are the browser tests skipped.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.config import Settings
from service.embedding.encoder import Encoder
from service.grpc_server.server import RunningServer, create_server
from tests.test_auth import READ_TOKEN, WRONG_TOKEN, write_tokens_file

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1200,1000",
)
# Small enough to embed in seconds on first use, large enough that queen still answers man:king::woman.
VOCABULARY_SIZE = 5000
# Generous bounds on waiting for the page: the first vocabulary call waits for the vocabulary's build.
RESULT_SECONDS = 60
VOCABULARY_SECONDS = 300
SONGS = [
    ("s1", "a song about the ocean and its waves", "rock", 1991),
    ("s2", "quiet piano music for sleeping", "classical", 2005),
    ("s3", "surfing the big waves at sunrise", "pop", 2012),
    ("s4", "a storm at sea, with thunder", "rock", 2019),
]


def _chromium() -> str:
    """The chromium binary; fails (make test installs it) unless neither chromium nor apt-get exists."""
    chromium = shutil.which("chromium")
    if chromium is not None and CHROMEDRIVER.exists():
        return chromium
    if shutil.which("apt-get") is None:
        pytest.skip("neither chromium nor apt-get is available, so the browser tests cannot run here")
    pytest.fail("chromium or chromium-driver is missing: `make browser` (run by `make test`) installs them")


@contextmanager
def page_server(encoder: Encoder, data_dir: Path, **settings: Any) -> Iterator[RunningServer]:
    running = create_server(
        Settings(
            listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            data_dir=data_dir,
            vocabulary_size=VOCABULARY_SIZE,
            **settings,
        ),
        encoder=encoder,
    )
    try:
        yield running
    finally:
        running.stop(grace=5)


def api(base_url: str, rpc: str, request: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    """One call of the HTTP API, as the page makes it."""
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    response = httpx.post(
        f"{base_url}/vecserve.v1.{rpc}", content=json.dumps(request), headers=headers, timeout=300
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def server(encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with page_server(encoder, tmp_path_factory.mktemp("page-data")) as running:
        running.vocabulary.start()  # as `vecserve serve` does: the page meanwhile shows its progress
        base_url = f"http://127.0.0.1:{running.http_port}"
        api(base_url, "IndexService/CreateIndex", {"name": "songs"})
        api(base_url, "IndexService/CreateIndex", {"name": "songs-hnsw", "kind": "INDEX_KIND_HNSW"})
        documents = [
            {
                "id": song_id,
                "text": text,
                "metadata": {"genre": {"stringValue": genre}, "year": {"numberValue": year}},
            }
            for song_id, text, genre, year in SONGS
        ]
        for index in ("songs", "songs-hnsw"):
            api(base_url, "IndexService/UpsertDocuments", {"indexName": index, "documents": documents})
        yield running


@pytest.fixture(scope="module")
def base_url(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.http_port}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _chromium()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


# -- reading the page -------------------------------------------------------------------------------


def result_of(browser: WebDriver, view: str, query: str, timeout: float = RESULT_SECONDS) -> WebElement:
    """The view's result once it is ready for `query` (the URL query it was computed for)."""
    selector = f"#view-{view} .result"

    def settled(driver: WebDriver) -> bool:
        out = driver.find_element(By.CSS_SELECTOR, selector)
        return out.get_attribute("data-for") == query and out.get_attribute("data-state") in (
            "ready",
            "error",
        )

    try:
        WebDriverWait(browser, timeout).until(settled)
    except TimeoutException:
        out = browser.find_element(By.CSS_SELECTOR, selector)
        pytest.fail(
            f"the {view} view never showed a result for {query!r}: state {out.get_attribute('data-state')}, "
            f"for {out.get_attribute('data-for')!r}, text {out.text!r}"
        )
    out = browser.find_element(By.CSS_SELECTOR, selector)
    assert out.get_attribute("data-state") == "ready", out.text
    return out


def error_of(browser: WebDriver, view: str, query: str) -> str:
    selector = f"#view-{view} .result"
    WebDriverWait(browser, RESULT_SECONDS).until(
        lambda driver: (
            driver.find_element(By.CSS_SELECTOR, selector).get_attribute("data-for") == query
            and driver.find_element(By.CSS_SELECTOR, selector).get_attribute("data-state") == "error"
        )
    )
    return browser.find_element(By.CSS_SELECTOR, f"{selector} .error").text


def type_into(browser: WebDriver, view: str, values: dict[str, str]) -> None:
    for name, text in values.items():
        field = browser.find_element(By.CSS_SELECTOR, f"#view-{view} [name={name}]")
        field.clear()
        field.send_keys(text)


def cells(out: WebElement, column: str) -> list[str]:
    return [cell.text for cell in out.find_elements(By.CSS_SELECTOR, f"tbody td.{column}")]


def path_of(browser: WebDriver, base_url: str) -> str:
    return browser.current_url.removeprefix(base_url)


def screenshot(browser: WebDriver, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(path)), path
    assert path.stat().st_size > 0


# -- analogy ----------------------------------------------------------------------------------------


def check_king_queen(out: WebElement) -> None:
    words = cells(out, "word")
    assert words[0] == "queen", words
    assert len(words) == 10
    assert out.find_element(By.CSS_SELECTOR, ".answer").text == "queen"
    assert "3CosMul" in out.find_element(By.CSS_SELECTOR, ".method-name").text
    scores = [float(score) for score in cells(out, "score")]
    assert scores == sorted(scores, reverse=True)


def test_analogy_typed(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/")
    type_into(browser, "analogy", {"a": "man", "b": "king", "c": "woman"})
    out = result_of(browser, "analogy", "a=man&b=king&c=woman", timeout=VOCABULARY_SECONDS)
    check_king_queen(out)
    assert path_of(browser, base_url) == "/analogy?a=man&b=king&c=woman"
    screenshot(browser, tmp_path, "analogy")


def test_analogy_linked(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/analogy?a=man&b=king&c=woman")
    check_king_queen(result_of(browser, "analogy", "a=man&b=king&c=woman", timeout=VOCABULARY_SECONDS))
    assert browser.find_element(By.CSS_SELECTOR, "#view-analogy [name=c]").get_attribute("value") == "woman"
    Select(browser.find_element(By.CSS_SELECTOR, "#view-analogy [name=method]")).select_by_value("cosadd")
    out = result_of(browser, "analogy", "a=man&b=king&c=woman&method=cosadd")
    assert "3CosAdd" in out.find_element(By.CSS_SELECTOR, ".method-name").text
    assert path_of(browser, base_url) == "/analogy?a=man&b=king&c=woman&method=cosadd"
    screenshot(browser, tmp_path, "analogy-linked")


# -- relations --------------------------------------------------------------------------------------

RELATE_QUERY = "a=dugong&b=manatee&pairs=hammerhead%20shark:great%20hammerhead%20shark"


def check_relations(out: WebElement, base_url: str) -> None:
    expected = api(
        base_url,
        "AnalogyService/CompareRelations",
        {
            "reference": {"first": "dugong", "second": "manatee"},
            "candidates": [{"first": "hammerhead shark", "second": "great hammerhead shark"}],
        },
    )
    (comparison,) = expected["comparisons"]
    assert cells(out, "pair") == ["hammerhead shark → great hammerhead shark"]
    assert cells(out, "offset") == [f"{comparison['offsetSimilarity']:.3f}"]
    assert cells(out, "own") == [f"{comparison['pairSimilarity']:.3f}"]
    assert cells(out, "percentile") == [f"{comparison.get('offsetPercentile', 0):.1f}"]
    assert cells(out, "rank") == [str(comparison["answerRank"])]
    shown = out.find_element(By.CSS_SELECTOR, ".reference-similarity").text
    assert shown == f"{expected['referencePairSimilarity']:.3f}"


def test_relations_typed(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/relate")
    type_into(
        browser,
        "relate",
        {"a": "dugong", "b": "manatee", "pairs": "hammerhead shark : great hammerhead shark"},
    )
    check_relations(result_of(browser, "relate", RELATE_QUERY, timeout=VOCABULARY_SECONDS), base_url)
    assert path_of(browser, base_url) == f"/relate?{RELATE_QUERY}"
    screenshot(browser, tmp_path, "relate")


def test_relations_linked(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/relate?{RELATE_QUERY}")
    check_relations(result_of(browser, "relate", RELATE_QUERY, timeout=VOCABULARY_SECONDS), base_url)
    pairs = browser.find_element(By.CSS_SELECTOR, "#view-relate [name=pairs]").get_attribute("value")
    assert pairs == "hammerhead shark : great hammerhead shark"
    screenshot(browser, tmp_path, "relate-linked")


# -- similar words ----------------------------------------------------------------------------------


def check_ocean(out: WebElement, base_url: str) -> None:
    expected = api(base_url, "AnalogyService/FindSimilarWords", {"queries": ["ocean"], "k": 10})
    words = [item["word"] for item in expected["results"][0]["words"]]
    assert cells(out, "word") == words
    assert "sea" in words[:3]


def test_similar_typed(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/similar")
    type_into(browser, "similar", {"word": "ocean"})
    check_ocean(result_of(browser, "similar", "word=ocean", timeout=VOCABULARY_SECONDS), base_url)
    assert path_of(browser, base_url) == "/similar?word=ocean"
    screenshot(browser, tmp_path, "similar")


def test_similar_linked(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/similar?word=ocean")
    check_ocean(result_of(browser, "similar", "word=ocean", timeout=VOCABULARY_SECONDS), base_url)
    screenshot(browser, tmp_path, "similar-linked")


# -- map --------------------------------------------------------------------------------------------

MAP_QUERY = "words=king,queen,man,woman&pairs=man:woman,king:queen"


def arrow_direction(out: WebElement, pair: str) -> tuple[float, float]:
    line = out.find_element(By.CSS_SELECTOR, f"line.arrow[data-pair='{pair}']")
    x1, y1, x2, y2 = (float(line.get_attribute(name) or "nan") for name in ("x1", "y1", "x2", "y2"))
    return x2 - x1, y2 - y1


def check_map(out: WebElement) -> None:
    words = [point.get_attribute("data-word") for point in out.find_elements(By.CSS_SELECTOR, "g.point")]
    assert words == ["king", "queen", "man", "woman"]
    labels = [label.text for label in out.find_elements(By.CSS_SELECTOR, "g.point text")]
    assert labels == words
    man_woman = arrow_direction(out, "man:woman")
    king_queen = arrow_direction(out, "king:queen")
    # The point of the map: the two relations' arrows are close to parallel in the plane.
    cosine = (man_woman[0] * king_queen[0] + man_woman[1] * king_queen[1]) / (
        math.hypot(*man_woman) * math.hypot(*king_queen)
    )
    assert cosine > 0.8, cosine
    assert cells(out, "pair") == ["man → woman", "king → queen"]


def test_map_typed(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/map")
    type_into(browser, "map", {"words": "king, queen, man, woman", "pairs": "man:woman, king:queen"})
    check_map(result_of(browser, "map", MAP_QUERY, timeout=VOCABULARY_SECONDS))
    assert path_of(browser, base_url) == f"/map?{MAP_QUERY}"
    screenshot(browser, tmp_path, "map")


def test_map_linked(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/map?{MAP_QUERY}")
    check_map(result_of(browser, "map", MAP_QUERY, timeout=VOCABULARY_SECONDS))
    screenshot(browser, tmp_path, "map-linked")


# -- tokenizer --------------------------------------------------------------------------------------

TOKEN_TEXT = "The dugong grazes."
TOKEN_QUERY = "text=The%20dugong%20grazes."


def check_tokens(out: WebElement, base_url: str, token: str | None = None) -> None:
    tokenized = api(base_url, "EmbeddingService/Tokenize", {"texts": [TOKEN_TEXT]}, token)
    expected = tokenized["results"][0]["tokens"]
    shown = [cell.text for cell in out.find_elements(By.CSS_SELECTOR, "tbody td.token code")]
    assert shown == [token["text"] for token in expected]
    assert cells(out, "id") == [str(token["id"]) for token in expected]
    assert cells(out, "offsets") == [
        "—" if token.get("special") else f"{token.get('start', 0)}\u2013{token['end']}" for token in expected
    ]
    marked = [mark.text for mark in out.find_elements(By.CSS_SELECTOR, ".token-text mark")]
    assert marked == ["The", "dug", "ong", "graz", "es", "."]
    assert out.find_element(By.CSS_SELECTOR, ".token-text").text == TOKEN_TEXT


def test_tokenizer_typed(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/tokenize")
    type_into(browser, "tokenize", {"text": TOKEN_TEXT})
    check_tokens(result_of(browser, "tokenize", TOKEN_QUERY), base_url)
    assert path_of(browser, base_url) == f"/tokenize?{TOKEN_QUERY}"
    screenshot(browser, tmp_path, "tokenize")


def test_tokenizer_linked(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/tokenize?{TOKEN_QUERY}")
    check_tokens(result_of(browser, "tokenize", TOKEN_QUERY), base_url)
    screenshot(browser, tmp_path, "tokenize-linked")


# -- search -----------------------------------------------------------------------------------------


def hit_ids(out: WebElement) -> list[str]:
    return [hit.text for hit in out.find_elements(By.CSS_SELECTOR, ".hit-id")]


def wait_for_index_choice(browser: WebDriver, name: str) -> Select:
    """The index menu, once ListIndexes has filled it."""
    selector = f"#view-search [name=index] option[value='{name}']"
    WebDriverWait(browser, RESULT_SECONDS).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, selector)
    )
    return Select(browser.find_element(By.CSS_SELECTOR, "#view-search [name=index]"))


def test_search_typed_with_filters(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/search")
    wait_for_index_choice(browser, "songs").select_by_value("songs")
    type_into(browser, "search", {"q": "waves", "k": "5", "filter": "genre=rock,pop\nyear>=2000"})
    query = "index=songs&q=waves&k=5&filter=genre%3Drock,pop&filter=year%3E%3D2000"
    out = result_of(browser, "search", query)
    expected = api(
        base_url,
        "IndexService/Search",
        {
            "indexName": "songs",
            "queries": [{"text": "waves"}],
            "k": 5,
            "filter": {
                "conditions": [
                    {"key": "genre", "anyOf": {"values": [{"stringValue": "rock"}, {"stringValue": "pop"}]}},
                    {"key": "year", "range": {"gte": 2000}},
                ]
            },
        },
    )
    assert hit_ids(out) == [hit["id"] for hit in expected["results"][0]["hits"]]
    assert sorted(hit_ids(out)) == ["s3", "s4"]
    chips = [chip.text for chip in out.find_elements(By.CSS_SELECTOR, ".hit .chip")]
    assert "genre=pop" in chips and "year=2012" in chips
    assert path_of(browser, base_url) == f"/search?{query}"
    info = browser.find_element(By.CSS_SELECTOR, "#view-search .index-info").text
    assert "4 documents" in info and "cosine" in info
    screenshot(browser, tmp_path, "search")


def test_search_linked_with_ef_search(browser: WebDriver, base_url: str, tmp_path: Path) -> None:
    browser.get(f"{base_url}/search?index=songs&q=waves&k=5")
    out = result_of(browser, "search", "index=songs&q=waves&k=5")
    expected = api(
        base_url, "IndexService/Search", {"indexName": "songs", "queries": [{"text": "waves"}], "k": 5}
    )
    assert hit_ids(out) == [hit["id"] for hit in expected["results"][0]["hits"]]
    assert len(hit_ids(out)) == 4

    browser.get(f"{base_url}/search?index=songs-hnsw&q=waves&k=2&ef_search=16")
    out = result_of(browser, "search", "index=songs-hnsw&q=waves&k=2&ef_search=16")
    assert len(hit_ids(out)) == 2
    wait_for_index_choice(browser, "songs-hnsw")
    setting = browser.find_element(By.CSS_SELECTOR, "#view-search [data-setting=ef_search]")
    WebDriverWait(browser, RESULT_SECONDS).until(
        lambda _: "HNSW" in browser.find_element(By.CSS_SELECTOR, "#view-search .index-info").text
    )
    assert setting.is_displayed()
    assert not browser.find_element(By.CSS_SELECTOR, "#view-search [data-setting=nprobe]").is_displayed()
    screenshot(browser, tmp_path, "search-linked")


# -- errors, navigation and what the page loads --------------------------------------------------------


def test_server_errors_are_shown_in_words(browser: WebDriver, base_url: str) -> None:
    browser.get(f"{base_url}/search?index=absent&q=waves")
    message = error_of(browser, "search", "index=absent&q=waves")
    assert message.startswith("Not found: ") and "'absent'" in message
    browser.get(f"{base_url}/search?index=songs-hnsw&q=waves&nprobe=4")
    message = error_of(browser, "search", "index=songs-hnsw&q=waves&nprobe=4")
    assert message.startswith("Invalid input: ") and "nprobe" in message


def test_tabs_keep_their_inputs_and_the_back_button_works(browser: WebDriver, base_url: str) -> None:
    browser.get(f"{base_url}/tokenize?{TOKEN_QUERY}")
    result_of(browser, "tokenize", TOKEN_QUERY)
    browser.find_element(By.CSS_SELECTOR, "nav a[data-view=relate]").click()
    WebDriverWait(browser, RESULT_SECONDS).until(lambda _: path_of(browser, base_url) == "/relate")
    browser.find_element(By.CSS_SELECTOR, "nav a[data-view=tokenize]").click()
    result_of(browser, "tokenize", TOKEN_QUERY)
    assert path_of(browser, base_url) == f"/tokenize?{TOKEN_QUERY}"
    browser.back()
    WebDriverWait(browser, RESULT_SECONDS).until(lambda _: path_of(browser, base_url) == "/relate")
    assert browser.find_element(By.CSS_SELECTOR, "#view-relate").is_displayed()


def test_the_page_loads_nothing_from_elsewhere(browser: WebDriver, base_url: str) -> None:
    browser.get(f"{base_url}/tokenize?{TOKEN_QUERY}")
    result_of(browser, "tokenize", TOKEN_QUERY)
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map((entry) => entry.name)"
    )
    assert loaded and all(url.startswith(f"{base_url}/") for url in loaded), loaded
    page = httpx.get(f"{base_url}/map", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_page_paths_are_served_and_others_are_not(base_url: str) -> None:
    for path in ("/", "/analogy", "/relate", "/similar", "/map", "/tokenize", "/search"):
        assert httpx.get(f"{base_url}{path}", timeout=10).text == httpx.get(f"{base_url}/", timeout=10).text
    script = httpx.get(f"{base_url}/static/app.js", timeout=10)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{base_url}/static/missing.js", timeout=10).status_code == 404
    assert httpx.get(f"{base_url}/elsewhere", timeout=10).status_code == 404
    assert httpx.post(f"{base_url}/analogy", timeout=10).status_code == 405


# -- a server with tokens ---------------------------------------------------------------------------


def dialog_open(browser: WebDriver) -> bool:
    return bool(browser.execute_script("return document.getElementById('token-dialog').open"))


def give_token(browser: WebDriver, value: str) -> None:
    WebDriverWait(browser, RESULT_SECONDS).until(dialog_open)
    field = browser.find_element(By.CSS_SELECTOR, "#token-dialog [name=token]")
    field.clear()
    field.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "#token-dialog button[value=use]").click()


def test_the_page_against_a_server_with_tokens(browser: WebDriver, encoder: Encoder, tmp_path: Path) -> None:
    tokens = write_tokens_file(tmp_path / "tokens")
    with page_server(encoder, tmp_path / "data", tokens_file=tokens) as running:
        url = f"http://127.0.0.1:{running.http_port}"
        browser.get(f"{url}/tokenize?{TOKEN_QUERY}")
        assert error_of(browser, "tokenize", TOKEN_QUERY).startswith("Token needed: ")
        reason = browser.find_element(By.CSS_SELECTOR, "#token-dialog .token-reason").text
        assert reason.startswith("this server requires a token")
        screenshot(browser, tmp_path, "token-dialog")

        give_token(browser, WRONG_TOKEN)  # refused: the page asks again
        WebDriverWait(browser, RESULT_SECONDS).until(dialog_open)
        give_token(browser, READ_TOKEN)
        check_tokens(result_of(browser, "tokenize", TOKEN_QUERY), url, READ_TOKEN)
        assert not dialog_open(browser)
        stored = browser.execute_script(
            "return [sessionStorage.getItem('vecserve.token'), localStorage.length, document.cookie]"
        )
        assert stored == [READ_TOKEN, 0, ""]

        browser.refresh()  # the same tab keeps its token for the session
        check_tokens(result_of(browser, "tokenize", TOKEN_QUERY), url, READ_TOKEN)
        assert not dialog_open(browser)
        browser.execute_script("sessionStorage.clear()")

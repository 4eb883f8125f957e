"""The search page in headless Chromium: type a query, read the ranked results.

Skips where no Chromium/chromedriver is installed (Debian: apt-get install chromium chromium-driver)
or selenium is missing; nothing is downloaded (Selenium Manager is kept offline).
"""

from __future__ import annotations

import shutil
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from .test_web import index_searcher, index_server, serving  # noqa: E402, F401 (the fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no chromium/chromedriver (apt-get install chromium chromium-driver)",
)
# Closed network: no first-run tasks, no background fetches, no component or sync updates.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not try to download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _search(browser, base_url: str, query: str, mode: str) -> list[dict[str, str]]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{base_url}/")
    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    Select(browser.find_element(By.ID, "mode")).select_by_value(mode)
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "status").text not in ("", "Searching..."))
    return [
        {
            "path": item.find_element(By.CLASS_NAME, "path").text,
            "title": item.find_element(By.CLASS_NAME, "title").text,
            "snippet": item.find_element(By.CLASS_NAME, "snippet").text,
        }
        for item in browser.find_elements(By.CSS_SELECTOR, "#results li")
    ]


def test_typing_a_query_shows_ranked_results(browser, index_server):  # noqa: F811
    results = _search(browser, index_server, "close the file", "bm25")
    assert results[0] == {
        "path": "files.rst:9",
        "title": "files.rst: Files",
        "snippet": "Write the first word to the file and close the file.",
    }
    hybrid = _search(browser, index_server, "the red planet mars", "hybrid")
    assert hybrid and any(r["path"].startswith("planets.md:") for r in hybrid)


def test_the_page_on_the_embedding_server_searches_through_its_queue(browser, index_searcher, tiny_embedder):  # noqa: F811
    """`embeddinggemma serve --index`: the same page, its dense queries embedded by the server's worker."""
    pytest.importorskip("prometheus_client", reason="the serve extra is not installed")
    from prometheus_client.parser import text_string_to_metric_families

    from embeddinggemma.serve import ServeSettings, create_app

    def embedded_texts(url: str) -> float:
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
            families = text_string_to_metric_families(response.read().decode())
        return next(s.value for f in families for s in f.samples if s.name == "embeddinggemma_embedded_texts_total")

    with serving(create_app(tiny_embedder, ServeSettings(model_name="tiny"), searcher=index_searcher)) as url:
        before = embedded_texts(url)
        shown = _search(browser, url, "the red planet mars", "dense")
        expected = index_searcher.search("the red planet mars", k=10, mode="dense")
        assert shown and [r["path"] for r in shown] == [f"{r.path}:{r.line}" for r in expected]
        assert embedded_texts(url) == before + 1  # the query was embedded by the server's worker

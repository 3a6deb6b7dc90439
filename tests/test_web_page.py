"""The page at GET /, driven in headless Debian chromium: paste reviews, see stars and five probability bars."""

from __future__ import annotations

import shutil

import httpx
import pytest
from support import Server, review_texts

pytestmark = pytest.mark.slow
API_KEY = "page-key-51c2"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


@pytest.fixture(scope="module")
def page_server(registry, tmp_path_factory):
    log = tmp_path_factory.mktemp("page-serve") / "serve.log"
    running = Server("--version", "v1", "--registry", str(registry), "--api-key", API_KEY, log=log)
    yield running.wait_ready()
    running.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for tool in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(tool), f"{tool} missing: apt-get install -y chromium chromium-driver (.ci/run does this)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def submit(browser, reviews_text: str, key: str):
    from selenium.webdriver.common.by import By

    textarea = browser.find_element(By.ID, "reviews")
    textarea.clear()
    textarea.send_keys(reviews_text)
    key_field = browser.find_element(By.ID, "api-key")
    key_field.clear()
    key_field.send_keys(key)
    browser.find_element(By.ID, "classify").click()


def test_page_shows_stars_and_probability_bars(page_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Short real reviews, one paragraph each: the page splits reviews at blank lines.
    texts = [" ".join(text.split()) for text in review_texts()[:3]]
    answer = httpx.post(f"{page_server.url}/v1/classify", json={"texts": texts}, headers={"X-API-Key": API_KEY}, timeout=120).json()

    browser.get(page_server.url + "/")
    wait = WebDriverWait(browser, 120)
    wait.until(lambda b: "v1" in b.find_element(By.ID, "model").text)
    submit(browser, "\n\n".join(texts), API_KEY)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".result")) == 3)

    cards = browser.find_elements(By.CSS_SELECTOR, ".result")
    for card, text, expected in zip(cards, texts, answer["results"]):
        assert card.find_element(By.CSS_SELECTOR, ".text").text == text
        stars = card.find_element(By.CSS_SELECTOR, ".stars")
        assert stars.get_attribute("data-stars") == str(expected["stars"])
        assert stars.text == "★" * expected["stars"] + "☆" * (5 - expected["stars"])
        assert expected["label"] in card.find_element(By.CSS_SELECTOR, ".verdict").text
        bars = card.find_elements(By.CSS_SELECTOR, ".bar")
        assert [bar.get_attribute("data-label") for bar in bars] == list(expected["probabilities"])
        for bar in bars:
            p = expected["probabilities"][bar.get_attribute("data-label")]
            assert float(bar.get_attribute("data-p")) == pytest.approx(p, abs=1e-7)
            assert bar.find_element(By.CSS_SELECTOR, ".value").text == f"{100 * p:.1f}%"
            fill = bar.find_element(By.CSS_SELECTOR, ".fill")
            track = bar.find_element(By.CSS_SELECTOR, ".track")
            assert fill.size["width"] == pytest.approx(p * track.size["width"], abs=1.5)  # drawn to scale
        top = card.find_element(By.CSS_SELECTOR, ".bar.top")
        assert top.get_attribute("data-label") == expected["label"]
    assert f"sha256 {answer['model']['adapter_sha256'][:12]}" in browser.find_element(By.ID, "model").text


def test_page_reports_errors(page_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_server.url + "/")
    wait = WebDriverWait(browser, 60)
    error = browser.find_element(By.ID, "error")

    submit(browser, "Decent coffee, slow service.", "not-the-key")
    wait.until(lambda b: error.is_displayed())
    assert error.text == "401: wrong API key"

    submit(browser, "  \n\n  ", API_KEY)
    wait.until(lambda b: error.text == "Paste at least one review.")
    assert not browser.find_elements(By.CSS_SELECTOR, ".result")

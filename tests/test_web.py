"""The web page in a real headless Chromium (Debian's `chromium` + `chromedriver`), against
`fruits serve` started on a loopback port: upload a sample banana, read "Banana" on the page."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _need(ok: bool, reason: str) -> None:
    """Skip locally, but fail in CI, where .ci/run installs everything (the shared rule)."""
    from conftest import require_service

    require_service("the browser test setup", ok, f"{reason} (see .ci/run)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(sample_run, tmp_path_factory):
    """`fruits serve` as a user runs it, in its own process."""
    yield from _serve(sample_run.output, tmp_path_factory)


@pytest.fixture(scope="module")
def unsure_server(sample_run, tmp_path_factory):
    """The same run with a "not sure" threshold no answer reaches."""
    run = tmp_path_factory.mktemp("unsure") / "run"
    shutil.copytree(sample_run.output, run)
    meta_file = run / "models" / "serving.json"
    meta = json.loads(meta_file.read_text())
    meta["recognition"]["threshold"] = 1.01
    meta_file.write_text(json.dumps(meta))
    yield from _serve(str(run), tmp_path_factory)


def _serve(run: str, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fruits.cli", "serve", "--run", run,
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fruits serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    _need(
        Path(CHROMIUM).exists() and shutil.which(CHROMEDRIVER) is not None,
        f"Debian's chromium and chromium-driver are not installed ({CHROMIUM}, {CHROMEDRIVER})",
    )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need(False, "selenium is not installed (pip install -e '.[dev]')")
        raise
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=412,915"):  # a phone-sized viewport  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_upload_a_banana_and_see_banana(server, browser, sample_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    picker = browser.find_element(By.CSS_SELECTOR, "input[type=file]")
    assert picker.get_attribute("accept") == "image/*"
    assert picker.get_attribute("capture") == "environment"
    assert not browser.find_element(By.ID, "result").is_displayed()

    banana = sorted((sample_dir / "Test" / "Banana 1").glob("*.jpg"))[0]
    picker.send_keys(str(banana))
    WebDriverWait(browser, 60).until(
        ec.text_to_be_present_in_element((By.ID, "result-name"), "Banana")
    )

    assert browser.find_element(By.ID, "result").is_displayed()
    assert browser.find_element(By.ID, "result-name").text == "Banana"
    assert browser.find_element(By.ID, "result-confidence").text.endswith("%")
    assert browser.find_element(By.ID, "fact-family").text == "Musaceae"
    assert "89 kcal" in browser.find_element(By.ID, "fact-energy").text
    # the page fits a phone screen: no horizontal scrolling
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    )


def test_a_bad_file_shows_the_servers_message(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo")
    browser.get(server + "/")
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(bad))
    WebDriverWait(browser, 60).until(
        ec.text_to_be_present_in_element((By.ID, "status"), "not an image")
    )
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    assert not browser.find_element(By.ID, "result").is_displayed()


def test_an_unsure_answer_says_not_sure_instead_of_a_confident_name(
    unsure_server, browser, sample_dir
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(unsure_server + "/")
    banana = sorted((sample_dir / "Test" / "Banana 1").glob("*.jpg"))[0]
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(banana))
    WebDriverWait(browser, 60).until(
        ec.text_to_be_present_in_element((By.ID, "result-name"), "Not sure")
    )
    assert "Not sure" in browser.find_element(By.ID, "result-message").text
    assert not browser.find_element(By.ID, "result-variety").is_displayed()
    assert not browser.find_element(By.ID, "result-facts").is_displayed()

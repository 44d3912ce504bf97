"""The dashboard in headless Chromium (Debian's chromium + chromium-driver, installed by `make browser`), against
a real uvicorn server on a loopback port; plus raw HTTP requests that a browser or client would normalise away."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest
from planted_run import APPLES, DEAD, SCRIPT, SCRIPT_TOKEN

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")


@pytest.fixture(scope="module")
def server(planted_features):
    from sparsecode.dashboard.server import background_server

    with background_server(planted_features) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            "headless Chromium is not installed: `make browser` installs it (apt-get install chromium chromium-driver; "
            "needs root, as in CI)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # the driver's path is given, so Selenium Manager never runs (and never downloads a browser)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1280, 1000)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def _navigate(browser, action) -> None:
    """Run ``action`` (a click, a submitted form) that loads a new page, and wait until that page has loaded:
    reading right away may meet the old page's elements, stale a moment later."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    action()
    WebDriverWait(browser, 10).until(expected_conditions.staleness_of(old))
    WebDriverWait(browser, 10).until(lambda b: b.execute_script("return document.readyState") == "complete")


def _rows(browser):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, "table#features tbody tr[data-id]")


def test_list_sort_open_a_feature_and_check_its_shading(browser, server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(server + "/features")
    assert browser.title.startswith("Features")
    rows = _rows(browser)
    assert len(rows) == 8
    browser.save_screenshot(str(tmp_path / "list.png"))

    _navigate(browser, browser.find_element(By.CSS_SELECTOR, 'a.sort[data-sort="density"]').click)  # descending
    densities = [float(r.get_attribute("data-density")) for r in _rows(browser)]
    assert densities == sorted(densities, reverse=True) and densities[0] == 1.0
    assert "sort=density" in browser.current_url
    _navigate(browser, browser.find_element(By.CSS_SELECTOR, 'a.sort[data-sort="density"]').click)  # again: ascending
    rows = _rows(browser)
    densities = [float(r.get_attribute("data-density")) for r in rows]
    assert densities == sorted(densities) and int(rows[0].get_attribute("data-id")) == DEAD

    row = next(r for r in _rows(browser) if int(r.get_attribute("data-id")) == APPLES)
    _navigate(browser, row.find_elements(By.TAG_NAME, "td")[2].click)  # a click on the row (not its link) opens it
    assert urlparse(browser.current_url).path == f"/features/{APPLES}"
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(f"Feature {APPLES}")

    first = browser.find_element(By.CSS_SELECTOR, "#top-contexts .ctx")
    tokens = first.find_elements(By.CSS_SELECTOR, ".tok")
    centre = first.find_element(By.CSS_SELECTOR, ".tok.center")
    assert centre.text == "apples"
    assert centre.value_of_css_property("background-color") in ("rgba(242, 120, 20, 1)", "rgb(242, 120, 20)")
    others = [t for t in tokens if t != centre]
    assert others and all(t.value_of_css_property("background-color") == "rgba(242, 120, 20, 0)" for t in others)
    assert [t.text for t in tokens] == [t.get_attribute("textContent") for t in tokens]
    ActionChains(browser).move_to_element(centre).perform()  # hover shows the activation
    tip = browser.execute_script("return getComputedStyle(arguments[0], '::after').content", centre)
    assert tip == '"1"'
    browser.save_screenshot(str(tmp_path / "feature.png"))
    for name in ("list.png", "feature.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    if os.environ.get("SPARSECODE_SCREENSHOTS"):  # to look at them: SPARSECODE_SCREENSHOTS=DIR pytest ...
        keep = Path(os.environ["SPARSECODE_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("list.png", "feature.png"):
            shutil.copy(tmp_path / name, keep / name)


def test_script_token_is_shown_as_text(browser, server):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/features/{SCRIPT}")
    centre = browser.find_element(By.CSS_SELECTOR, "#top-contexts .tok.center")
    assert centre.text == SCRIPT_TOKEN
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 -- the token's script never ran
    scripts = browser.find_elements(By.TAG_NAME, "script")
    assert [s.get_attribute("src").endswith("/static/app.js") for s in scripts] == [True]


def test_search_box_finds_features_by_token(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/features")
    box = browser.find_element(By.CSS_SELECTOR, ".search input")
    _navigate(browser, lambda: box.send_keys("apples", Keys.ENTER))
    assert "q=apples" in browser.current_url
    ids = [int(r.get_attribute("data-id")) for r in _rows(browser)]
    assert APPLES in ids and SCRIPT not in ids


def _raw_get(url: str, target: str) -> tuple[int, bytes]:
    """Send ``GET target`` byte for byte (no client-side normalisation of '..' or '%2e')."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.parametrize(
    "target",
    [
        "/static/../config.json",
        "/static/../../run/config.json",
        "/static/%2e%2e/%2e%2e/run/config.json",
        "/static/..%2f..%2frun%2fconfig.json",
        "/static/../db.py",
        "/static/%2e%2e/app.py",
        "/static/../../../../../../etc/passwd",
        "/features/../config.json",
        "/features/..%2fconfig.json",
        "/../config.json",
    ],
)
def test_raw_paths_cannot_leave_the_static_folder(server, target):
    status, data = _raw_get(server, target)
    assert status in (400, 404), (target, status)
    assert b'"hook"' not in data and b"root:" not in data and b"import" not in data


def test_server_listens_on_loopback_only(server):
    assert urlparse(server).hostname == "127.0.0.1"
    status, _ = _raw_get(server, "/features.json")
    assert status == 200

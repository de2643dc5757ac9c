"""The dashboard in a real browser: headless Chromium (Debian `chromium` and
`chromium-driver`, which .ci/run installs) driven by selenium against `kairos serve`
on the demo shop, behind API keys. Each page must render real numbers, the live chart
must move after events are posted, and the console must stay clean. A screenshot of
each page is saved in build/screenshots/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from kairos.client import Kairos

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "build" / "screenshots"
DEMO = ["--users", "100", "--items", "120", "--events", "5000", "--seed", "7"]
DEMO_USER = "user-00000"  # the first user of that demo (datasets/demo.py is deterministic)
KEYS = "admin:k-admin,read+ingest:k-app"
TINY = {"depth": 1, "width": 32, "heads": 1, "max_len": 16, "batch_size": 64, "epochs": 3, "patience": 3}
QUIET_PUSH = {"KAIROS_PUSH_DEFAULT_QUIET_HOURS": '["00:00", "00:00"]', "KAIROS_PUSH_POLL_S": "0.1"}


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = condition()
        except Exception:  # noqa: BLE001 - an element not rendered yet
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout} s")


@pytest.fixture
def demo_shop(tmp_path: Path) -> tuple[Path, Path]:
    """The demo shop's database and an evaluation report of it, made by the CLI (in the
    test's own store: on PostgreSQL too under KAIROS_TEST_BACKEND=postgres)."""
    folder = tmp_path
    db = folder / "demo.db"
    made = subprocess.run([sys.executable, "-m", "kairos", "demo", "--db", str(db), "--no-serve", *DEMO],
                          capture_output=True, text=True, timeout=300, check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    reports = folder / "runs"
    evaluated_db = db
    if os.environ.get("KAIROS_STORE_URL"):  # `kairos evaluate --data` reads a SQLite file: make one
        evaluated_db = folder / "evaluated.db"
        sqlite_env = {k: v for k, v in os.environ.items() if k not in ("KAIROS_STORE_URL", "KAIROS_REDIS_URL")}
        made = subprocess.run([sys.executable, "-m", "kairos", "demo", "--db", str(evaluated_db), "--no-serve", *DEMO],
                              capture_output=True, text=True, timeout=300, check=False, env=sqlite_env)
        assert made.returncode == 0, made.stdout + made.stderr
    evaluated = subprocess.run([sys.executable, "-m", "kairos", "evaluate", "--data", str(evaluated_db), "--protocol", "loo",
                                "--models", "popular,covisit", "--out", str(reports / "demo-loo")],
                               capture_output=True, text=True, timeout=300, check=False)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    return db, reports


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def snap(driver: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def number(text: str) -> int:
    return int(text.replace(",", "").strip())


def test_every_page_in_a_real_browser(server_factory: Any, demo_shop: tuple[Path, Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    db, reports = demo_shop
    server = server_factory(db, env={"KAIROS_API_KEYS": KEYS, "KAIROS_REPORTS_DIR": str(reports), **QUIET_PUSH})
    app = Kairos(server.url, api_key="k-app")
    admin = Kairos(server.url, api_key="k-admin")
    events_before = admin.health().events
    assert events_before >= 5000

    def element(css: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, css)

    # Signed out: every page leads to the sign-in page; a key without admin is refused.
    browser.get(f"{server.url}/dashboard")
    assert browser.current_url.endswith("/dashboard/login")
    element("#key").send_keys("k-app")
    element("#sign-in").click()
    wait_until(lambda: "failed=true" in browser.current_url, what="a refused sign-in")
    element("#key").send_keys("k-admin")
    element("#sign-in").click()
    wait_until(lambda: browser.current_url.rstrip("/").endswith("/dashboard"), what="the overview")

    # Overview: real counts, trending items, and a live chart that moves with new events.
    assert number(element("#count-events").text) == events_before
    assert number(element("#count-items").text) == 120
    trending = browser.find_elements(By.CSS_SELECTOR, "#trending tbody tr")
    assert len(trending) == 10 and trending[0].text.startswith("1 item-")
    chart = element("#live-chart")
    wait_until(lambda: int(chart.get_attribute("data-samples")) >= 2, what="two live samples")
    assert chart.find_elements(By.CSS_SELECTOR, "canvas")
    app.send_events([{"user_id": f"live-{k % 20}", "item_id": f"item-{k % 120:05d}", "type": "click"}
                     for k in range(600)])
    wait_until(lambda: number(element("#count-events").text) == events_before + 600, what="the new count")
    wait_until(lambda: float(element("#event-rate").text) > 0, timeout=10, what="a non-zero event rate")
    snap(browser, "overview")

    # A user: their sequence, what they are served now (sources, reasons), push preferences.
    browser.get(f"{server.url}/dashboard/users")
    element("#user-id").send_keys(DEMO_USER)
    element("#user-search").click()
    rows = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#recommendations tbody tr"),
                      what="recommendations")
    assert len(rows) == 10
    served = app.recommendations(DEMO_USER, n=10)
    assert [r.find_element(By.CSS_SELECTOR, "code").text for r in rows] == [i.item_id for i in served.items]
    assert all(r.find_elements(By.CSS_SELECTOR, "td")[2].text for r in rows)  # sources named
    assert number(element("#user-events").text) == app.get_user(DEMO_USER).event_count > 0
    assert browser.find_elements(By.CSS_SELECTOR, "#sequence tbody tr")
    assert "time zone" in element("#preferences").text
    snap(browser, "user")

    # Models: train a small behaviour model; the page shows it serving, its curve, the report.
    started = admin.train(TINY)
    assert started.training.state == "running"
    wait_until(lambda: admin.models().training.state != "running", timeout=240, what="training")  # type: ignore[union-attr]
    version = admin.models().training.version  # type: ignore[union-attr]
    assert version is not None
    wait_until(lambda: admin.models().sequential is not None, what="the new model served")
    browser.get(f"{server.url}/dashboard/models")
    assert version in element("#serving").text
    assert "serving" in element("#versions tr.current").text
    wait_until(lambda: element("#training-chart canvas"), what="the training curve")
    history = json.loads(browser.find_element(By.ID, "training-history").get_attribute("textContent"))
    assert len(history) >= 1 and "loss" in history[0]
    plot = element("#report-demo-loo img")
    wait_until(lambda: browser.execute_script("return arguments[0].naturalWidth", plot) > 0, what="the plot")
    snap(browser, "models")

    # Push: a campaign to a few demo users; the funnel, the campaign and its counts.
    admin.create_campaign({"id": "spring", "item_id": "item-00001",
                           "audience": {"user_ids": [f"user-{u:05d}" for u in range(5)]}})
    browser.get(f"{server.url}/dashboard/push")
    funnel = {row.find_element(By.CSS_SELECTOR, ".bar-label").text: number(row.find_element(
        By.CSS_SELECTOR, ".bar-value").text) for row in browser.find_elements(By.CSS_SELECTOR, "#funnel .bar-row")}
    assert list(funnel) == ["decided", "not suppressed", "delivered", "opened", "clicked"]
    assert funnel["decided"] >= 5 and funnel["decided"] == sum(admin.push_stats().by_status.values())
    assert "spring" in element("#campaigns").text
    snap(browser, "push")

    # Experiments: two arms, requests through both, rates with intervals.
    admin.create_experiment({"id": "ranker-test", "arms": [{"name": "control", "traffic": 0.5},
                                                           {"name": "diverse", "traffic": 0.5,
                                                            "config": {"diversity": 0.5}}]})
    for u in range(40):
        app.recommendations(f"user-{u:05d}", n=5)
    browser.get(f"{server.url}/dashboard/experiments")
    arms = browser.find_elements(By.CSS_SELECTOR, "#experiment-ranker-test .arms tbody tr")
    assert [a.find_element(By.CSS_SELECTOR, "td").text for a in arms] == ["control", "diverse"]
    assert sum(number(a.find_elements(By.CSS_SELECTOR, "td")[2].text) for a in arms) == 40  # users
    snap(browser, "experiments")

    assert console_errors(browser) == []
    app.close()
    admin.close()

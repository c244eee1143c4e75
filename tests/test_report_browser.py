"""The report in a real browser: Playwright for Python driving Debian's chromium, from a file:// URL.

Checks that every image decoded, the console shows no error, no request left file://, every
section is on the page; saves a full-page screenshot in the test's tmp_path, and also in the
folder named by MINIMASCOPE_ARTIFACTS when that is set. Skipped only when no chromium executable
is found (MINIMASCOPE_CHROMIUM names one explicitly).

``check_report_in_browser(index_html, screenshot)`` takes any written report: the fake study's
here, and the tiny preset's, run end to end.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from minimascope.report import write_report
from minimascope.report.page import SECTIONS

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    candidates = [os.environ.get("MINIMASCOPE_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                  shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def check_report_in_browser(index: Path, screenshot: Path) -> dict:
    """Open a written report (``STUDY_DIR/report/index.html``) in chromium and assert what a reader
    needs: every image decoded, no console error, nothing fetched outside file://, every section
    present. Saves a full-page screenshot to ``screenshot``; returns what the page showed."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium executable found (set MINIMASCOPE_CHROMIUM)")
    requests, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))

            def only_files(route) -> None:  # anything else is recorded and never leaves the machine
                requests.append(route.request.url)
                if route.request.url.startswith("file://"):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", only_files)
            page.goto(index.resolve().as_uri(), wait_until="load")
            images = page.evaluate("""() => Array.from(document.images).map(
                image => ({src: image.getAttribute('src'), complete: image.complete, width: image.naturalWidth}))""")
            sections = page.evaluate("""() => Array.from(document.querySelectorAll('section')).map(
                section => ({id: section.id, heading: section.querySelector('h2')?.innerText ?? '',
                             visible: section.getBoundingClientRect().height > 0}))""")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert not errors, f"browser errors: {errors}"
    outside = [url for url in requests if not url.startswith("file://")]
    assert not outside, f"requests left file://: {outside}"
    assert images, "the report shows no image"
    undecoded = [image["src"] for image in images if not (image["complete"] and image["width"] > 0)]
    assert not undecoded, f"images that did not decode: {undecoded}"
    assert [s["id"] for s in sections] == [s.id for s in SECTIONS]
    for section, expected in zip(sections, SECTIONS):
        assert section["visible"] and expected.title in section["heading"]
    assert screenshot.stat().st_size > 0
    return {"images": images, "sections": sections, "requests": requests}


def keep_artifact(screenshot: Path) -> None:
    folder = os.environ.get("MINIMASCOPE_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(screenshot, Path(folder) / screenshot.name)


def test_fake_study_report_in_browser(report_page: Path, tmp_path: Path) -> None:
    shown = check_report_in_browser(report_page, tmp_path / "report-fake.png")
    keep_artifact(tmp_path / "report-fake.png")
    sources = {image["src"] for image in shown["images"]}
    assert {"curves.svg", "similarity-cka.png", "filters-conv1.png"} <= sources
    assert len(shown["requests"]) == 1 + len(sources)  # the page and its images, nothing else


@pytest.mark.slow
def test_tiny_study_report_in_browser(tiny_study: Path, tmp_path: Path) -> None:
    """The report of a real study: the tiny preset run end to end (every arm, its comparisons and
    analyses), written by the same call as `minimascope report`."""
    screenshot = tmp_path / "report-tiny.png"
    index = write_report(tiny_study)
    shown = check_report_in_browser(index, screenshot)
    keep_artifact(screenshot)
    page = index.read_text()
    assert "type cpu" in page and "torch 2.14.1" in page  # the device and versions study.json records
    assert {"similarity-cka.png", "filters-conv1.png"} <= {image["src"] for image in shown["images"]}

"""The search service's web page in a real browser (headless Chromium driven by Playwright): upload a photo, see the
grid, click a result to search from it, search by path, see an error in the page, fit a phone-sized window."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from simclr.data.images import find_images
from simclr.embed.encoder import EncoderSpec
from simclr.ports import free_port
from simclr.search.server import SearchServer
from simclr.search.service import SearchService

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / ".cache" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _wait_for(page, condition: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript condition from here: the page's Content-Security-Policy forbids eval, which Playwright's
    wait_for_function needs (evaluate calls a function through the debugger, which the policy does not cover)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({condition})"):
        assert time.monotonic() < deadline, f"the page never met: {condition}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install "
                                                                  "'simclr[dev]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_the_page_searches_by_upload_by_click_and_by_path(browser, photo_collection: Path, tiny_repo: Path,
                                                          real_photos: Path) -> None:
    spec = EncoderSpec(model=str(tiny_repo / "tiny"))
    photo = find_images(real_photos / "sample")[3]
    with SearchServer(SearchService(photo_collection, spec), port=free_port()) as server:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        messages: list[str] = []
        page.on("console", lambda message: messages.append(message.text))
        page.goto(server.url + "/")
        _wait_for(page, "document.getElementById('info').textContent.includes('images')")
        page.fill("#k", "8")
        page.set_input_files("#file", str(photo))
        _wait_for(page, "document.querySelectorAll('#grid .hit').length === 8")
        first = page.inner_text("#grid .hit >> nth=0")
        assert photo.name in first and "#1" in first and "1.000" in first
        assert "ms" in page.inner_text("#status")
        _wait_for(page, "[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "search_page.png"), full_page=True)

        clicked = page.get_attribute("#grid .hit >> nth=2", "data-path")
        page.click("#grid .hit >> nth=2")
        _wait_for(page, f"document.getElementById('status').textContent.includes({clicked!r})")
        assert clicked in page.inner_text("#grid .hit >> nth=0")  # the clicked image is its own best match

        page.fill("#path", clicked)
        page.click("button[type=submit]")
        _wait_for(page, f"document.getElementById('status').textContent.includes({clicked!r})")

        page.set_input_files("#file", {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not an image"})
        page.wait_for_selector("#status.error")
        assert "not an image file" in page.inner_text("#status")

        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        page.set_input_files("#file", str(photo))
        _wait_for(page, "document.querySelectorAll('#grid .hit').length === 8 && "
                        "!document.getElementById('status').classList.contains('error')")
        boxes = [page.locator("#grid .hit").nth(i).bounding_box() for i in range(3)]
        assert boxes[0]["y"] == boxes[1]["y"] < boxes[2]["y"] and boxes[1]["x"] + boxes[1]["width"] <= 390
        page.screenshot(path=str(ARTIFACTS / "search_page_phone.png"), full_page=True)
        assert not [message for message in messages if "Content Security Policy" in message]  # nothing blocked
        page.close()

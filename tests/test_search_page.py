"""The search service's web page in a real browser (headless Chromium driven by Playwright): upload a photo through
the drop zone's one control, see the query and the grid with one-line captions, click a result to search from it,
search by path, leave the query out, reproduce a search from the page's address (with a token), see an error in
the page, fit a phone-sized window."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from simclr.data.images import find_images
from simclr.embed.encoder import EncoderSpec
from simclr.ports import free_port
from simclr.search.api import ServiceOptions
from simclr.search.server import SearchServer
from simclr.search.service import SearchService

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / ".cache" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
TOKEN = "page-token"
PHONE = {"width": 390, "height": 844}
LONG_FOLDER = "a_class_folder_with_a_name_far_too_long_for_any_phone_screen"
LONG_NAME = "a_photo_file_name_with_no_spaces_that_is_much_longer_than_a_card_{}.png"
ONE_LINE = "(el => el.getBoundingClientRect().height <= 1.5 * parseFloat(getComputedStyle(el).lineHeight))"
LOADED = "(img => img.complete && img.naturalWidth > 0)"


def _wait_for(page, condition: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript condition from here: the page's Content-Security-Policy forbids eval, which Playwright's
    wait_for_function needs (evaluate calls a function through the debugger, which the policy does not cover)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({condition})"):
        assert time.monotonic() < deadline, f"the page never met: {condition}"
        time.sleep(0.05)


def _grid_shows(count: int) -> str:
    return (f"document.querySelectorAll('#grid .hit').length === {count} && "
            "!document.getElementById('query').hidden")


def _query_title(page) -> str:
    return page.get_attribute("#query .caption", "title")


def _address(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


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


@pytest.fixture(scope="module")
def server(photo_collection: Path, tiny_repo: Path):
    with SearchServer(SearchService(photo_collection, EncoderSpec(model=str(tiny_repo / "tiny"))),
                      port=free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def long_names(tiny_repo: Path, real_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight photos whose folder and file names are far wider than a phone, embedded: feats.npy."""
    from simclr.embed.onnx_encoder import OnnxEncoder
    from simclr.embed.runner import embed_images

    folder = tmp_path_factory.mktemp("long") / LONG_FOLDER
    folder.mkdir()
    for number, photo in enumerate(find_images(real_photos / "sample")[:8]):
        shutil.copy(photo, folder / LONG_NAME.format(number))
    features = tmp_path_factory.mktemp("long_features") / "feats.npy"
    embed_images([folder.parent], features, OnnxEncoder(tiny_repo / "tiny"), workers=0, progress=False)
    return features


@pytest.fixture()
def page(browser):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text
            else None)
    yield page
    page.close()
    assert not blocked  # the page's policy blocked nothing it does (the uploaded picture is a blob: URL)


def test_an_upload_through_the_drop_zone_shows_its_picture_name_and_one_line_captions(page, server: SearchServer,
                                                                                     real_photos: Path) -> None:
    photo = find_images(real_photos / "sample")[3]
    page.goto(server.url + "/?row=1&k=8")
    _wait_for(page, "document.getElementById('info').textContent.includes('images')")
    _wait_for(page, _grid_shows(8))
    assert page.inner_text("#drop").split() == ["Drop", "a", "photo", "here", "or", "choose", "one"]
    native = page.locator("#file").bounding_box()
    assert native["width"] <= 1 and native["height"] <= 1 and page.eval_on_selector(
        "#file", "el => getComputedStyle(el).opacity") == "0"  # the browser's own button and "No file chosen" hidden
    with page.expect_file_chooser() as chooser:
        page.click("#drop")  # anywhere in the zone
    chooser.value.set_files(str(photo))
    _wait_for(page, "document.querySelector('#query img')?.src.startsWith('blob:')")  # the uploaded file itself
    _wait_for(page, _grid_shows(8))
    _wait_for(page, f"[document.querySelector('#query img'), ...document.querySelectorAll('#grid img')]"
                    f".every({LOADED})")
    assert page.inner_text("#query .name") == photo.name and _query_title(page) == photo.name
    assert page.inner_text("#query .folder").startswith("uploaded, ") and "ms" in page.inner_text("#status")
    assert _address(page) == {}  # the row searched before is gone: an upload cannot be put in the address

    first = page.locator("#grid .hit").first
    assert first.locator(".name").inner_text() == photo.name  # the upload finds its own file first
    assert first.locator(".meta").inner_text() == f"#1 · 1.000 · {photo.parent.name}"
    cards = page.eval_on_selector_all("#grid .hit", "cards => cards.map(card => [card.title, card.dataset.path, "
                                                    "card.querySelector('.name').textContent])")
    assert all(title == path and path.endswith("/" + name) for title, path, name in cards)  # the path on hover
    assert page.evaluate(f"() => [...document.querySelectorAll('.hit .name, .hit .meta, #query .caption > div')]"
                         f".every({ONE_LINE})")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "search_page.png"), full_page=True)

    page.set_input_files("#file", {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not an image"})
    page.wait_for_selector("#status.error")
    assert "not an image file" in page.inner_text("#status") and page.locator("#query").is_hidden()


def test_a_search_by_path_or_click_shows_the_query_leaves_it_out_and_goes_in_the_address(
        page, server: SearchServer) -> None:
    page.goto(server.url + "/")
    page.fill("#k", "5")
    path = server.service.collection.features.paths[4]
    page.fill("#path", path)
    page.click("button[type=submit]")
    _wait_for(page, _grid_shows(5))
    _wait_for(page, f"{LOADED}(document.querySelector('#query img'))")
    assert page.get_attribute("#query img", "src") == "/thumbs/4?size=200"  # the indexed image's thumbnail
    assert _query_title(page) == path and page.inner_text("#query .name") == Path(path).name
    assert page.is_checked("#exclude")  # on by default: the query is not its own first result
    assert path not in page.eval_on_selector_all("#grid .hit", "cards => cards.map(card => card.dataset.path)")
    assert _address(page) == {"path": [path], "k": ["5"]}

    clicked_row, clicked = page.get_attribute("#grid .hit >> nth=2", "data-row"), \
        page.get_attribute("#grid .hit >> nth=2", "data-path")
    assert page.get_attribute("#grid .hit >> nth=2", "href") == f"/?row={clicked_row}&k=5"  # a link to share
    page.click("#grid .hit >> nth=2")
    _wait_for(page, f"document.querySelector('#query .caption')?.title === {clicked!r}")
    _wait_for(page, _grid_shows(5))
    assert _address(page) == {"row": [clicked_row], "k": ["5"]} and page.input_value("#path") == clicked
    assert page.get_attribute("#query img", "src") == f"/thumbs/{clicked_row}?size=200"

    page.go_back()  # the address before the click, and its search
    _wait_for(page, f"document.querySelector('#query .caption')?.title === {path!r}")
    _wait_for(page, _grid_shows(5))
    assert _address(page) == {"path": [path], "k": ["5"]}

    page.uncheck("#exclude")  # the query itself comes back, first, and the address says so
    _wait_for(page, f"document.querySelector('#grid .hit')?.dataset.path === {path!r}")
    assert "#1 · 1.000" in page.inner_text("#grid .hit >> nth=0")
    assert _address(page) == {"path": [path], "k": ["5"], "exclude_query": ["0"]}
    page.screenshot(path=str(ARTIFACTS / "search_page_by_path.png"), full_page=True)


def test_the_address_reproduces_a_search_with_the_token_and_long_names_fit_a_phone(browser, long_names: Path,
                                                                                   tiny_repo: Path) -> None:
    service = SearchService(long_names, EncoderSpec(model=str(tiny_repo / "tiny")))
    with SearchServer(service, port=free_port(), options=ServiceOptions(token=TOKEN)) as server:
        page = browser.new_page(viewport=PHONE)
        page.goto(f"{server.url}/?token={TOKEN}&row=2&k=6")
        _wait_for(page, _grid_shows(6))
        _wait_for(page, f"[document.querySelector('#query img'), ...[...document.querySelectorAll('#grid img')]"
                        f".slice(0, 2)].every({LOADED})")  # the token reaches the thumbnails
        rows = page.eval_on_selector_all("#grid .hit", "cards => cards.map(card => card.dataset.row)")
        assert "2" not in rows and page.is_checked("#exclude")
        assert page.inner_text("#query .name") == Path(service.collection.features.paths[2]).name

        assert page.evaluate("() => document.scrollingElement.scrollWidth <= innerWidth")  # no sideways scrolling
        assert page.evaluate("() => [...document.querySelectorAll('body *')].every(el => "
                             "el.getBoundingClientRect().right <= innerWidth)")
        assert page.evaluate(f"() => [...document.querySelectorAll('.hit .name, .hit .meta, #query .caption > "
                             f"div')].every({ONE_LINE})")
        assert page.evaluate("() => [...document.querySelectorAll('.hit .name')].every(el => el.scrollWidth > "
                             "el.clientWidth && getComputedStyle(el).textOverflow === 'ellipsis')")  # cut with "…"
        boxes = [page.locator("#grid .hit").nth(i).bounding_box() for i in range(3)]
        assert boxes[0]["y"] == boxes[1]["y"] < boxes[2]["y"]  # two columns
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "search_page_phone.png"), full_page=True)

        clicked = page.get_attribute("#grid .hit >> nth=1", "data-path")
        page.click("#grid .hit >> nth=1")
        _wait_for(page, f"document.querySelector('#query .caption')?.title === {clicked!r}")
        assert _address(page) == {"token": [TOKEN], "row": [rows[1]], "k": ["6"]}

        path = service.collection.features.paths[5]
        page.goto(f"{server.url}/?token={TOKEN}&path={quote(path)}&k=3&exclude_query=0")
        _wait_for(page, _grid_shows(3))
        assert page.get_attribute("#grid .hit >> nth=0", "data-path") == path and not page.is_checked("#exclude")
        assert page.input_value("#k") == "3" and page.input_value("#path") == path
        page.close()

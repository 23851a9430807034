"""`make demo`: the local page's server, and the page itself in headless Chromium with a real
photo picked and dropped (skipped where Chromium or Playwright is absent)."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.datasets import FLOWERS
from pipeline.demo import TOP_K, load_demo_model, make_server
from pipeline.errors import MissingInputError, UnavailableError
from pipeline.predict import Predictor
from tests.exported import write_tiny_export

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLOWER_NAMES = ["daisy", "dandelion", "rose", "sunflower", "tulip", "other"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny export (model.keras and saved_model/) whose six classes are named like flowers
    (five shown on the page)."""
    return write_tiny_export(tmp_path_factory.mktemp("models") / "flowers", FLOWER_NAMES,
                             saved_model=True)


@pytest.fixture(scope="module")
def classify(model_dir):
    return load_demo_model(model_dir)


@contextmanager
def serving(classify, title: str = "flowers"):
    """The demo server on a free port of 127.0.0.1, in a thread; yields its address."""
    server = make_server(classify, title, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()


def a_photo(tmp_path: Path) -> Path:
    """A real flowers128 photo, or a generated JPEG where flowers128 is absent."""
    if FLOWERS.is_dir():
        return sorted((FLOWERS / "sunflower").glob("*.jpg"))[0]
    pixels = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.jpg")
    return tmp_path / "photo.jpg"


def post(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_server_answers_the_top_classes_of_posted_bytes(classify, model_dir, tmp_path):
    photo = a_photo(tmp_path)
    with serving(classify) as address:
        with urllib.request.urlopen(address + "/", timeout=60) as response:
            page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
        assert '<input id="file" type="file"' in page and "<code>flowers</code>" in page
        status, answer = post(address + "/classify", photo.read_bytes())
        assert status == 200
        assert answer["predictions"] == json.loads(json.dumps(classify(photo.read_bytes())))
        assert [entry["class"] for entry in answer["predictions"]] == [
            entry["class"] for entry in Predictor.load(model_dir).classify_bytes(
                photo.read_bytes(), top_k=TOP_K)]
        assert len(answer["predictions"]) == TOP_K
        assert post(address + "/classify", b"hello") == (400, {"error": (
            "not an image: the file holds text, not bmp, gif, jpeg, png, webp data")})
        assert post(address + "/classify", b"")[0] == 400
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(address + "/secrets", timeout=60)


def test_the_demo_runs_the_saved_model_alone(model_dir, tmp_path):
    """The page's answers come from saved_model/: with model.keras gone they are unchanged, and
    they agree with make predict's (model.keras) to float precision; an export without a
    SavedModel is refused with the fix."""
    photo = a_photo(tmp_path).read_bytes()
    only_saved_model = tmp_path / "flowers"
    shutil.copytree(model_dir / "saved_model", only_saved_model / "saved_model")
    answer = load_demo_model(only_saved_model)(photo)
    predicted = Predictor.load(model_dir).classify_bytes(photo, top_k=TOP_K)
    assert [entry["class"] for entry in answer] == [entry["class"] for entry in predicted]
    np.testing.assert_allclose([entry["probability"] for entry in answer],
                               [entry["probability"] for entry in predicted], atol=1e-5)
    shutil.rmtree(only_saved_model / "saved_model")
    with pytest.raises(MissingInputError, match=r"No exported SavedModel.*export.formats"):
        load_demo_model(only_saved_model)


def test_a_taken_port_names_the_fix(classify):
    with serving(classify) as address:
        port = int(address.rsplit(":", 1)[1])
        with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}.*make demo PORT="):
            make_server(classify, "flowers", port=port)


def classify_in_browser(address: str, photos: list[Path], screenshot: Path) -> list[list]:
    """Opens the page in headless Chromium, picks the first photo with the file chooser and
    drops each other one on the drop zone, waiting for the bars each time; saves a screenshot
    of the last. Returns, per photo, each shown class with its bar's width in percent."""
    from playwright.sync_api import sync_playwright

    shown = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(address + "/")
        for index, photo in enumerate(photos):
            page.evaluate("delete document.body.dataset.state")
            if index == 0:
                page.set_input_files("#file", str(photo))
            else:
                page.dispatch_event("#drop", "drop", {"dataTransfer": _transfer(page, photo)})
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            shown.append(page.eval_on_selector_all(".prediction", """rows => rows.map(row => [
                row.querySelector(".name").textContent,
                100 * row.querySelector(".bar").getBoundingClientRect().width
                    / row.querySelector(".track").getBoundingClientRect().width])"""))
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return shown


def _transfer(page, photo: Path):
    """A DataTransfer holding `photo`, as a drag from the desktop carries it."""
    return page.evaluate_handle("""([data, name]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        return transfer;
    }""", [base64.b64encode(photo.read_bytes()).decode(), photo.name])


def check_page(classify, photos: list[Path], screenshot: Path) -> list[list]:
    """Serves the demo, classifies `photos` in Chromium and checks that the page shows what
    the server answered: the classes in order, each bar as long as its probability."""
    with serving(classify) as address:
        shown = classify_in_browser(address, photos, screenshot)
    for photo, rows in zip(photos, shown, strict=True):
        expected = classify(photo.read_bytes())
        assert [name for name, _ in rows] == [entry["class"] for entry in expected]
        for (_, width), entry in zip(rows, expected, strict=True):
            assert width == pytest.approx(100 * entry["probability"], abs=0.5)
    assert screenshot.stat().st_size > 10_000
    return shown


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install "
                                             "chromium)")
def test_the_page_shows_the_top_classes_as_bars_in_chromium(classify, tmp_path):
    pytest.importorskip("playwright", reason="Playwright drives Chromium: pip install playwright")
    photo = a_photo(tmp_path)
    shown = check_page(classify, [photo, photo], tmp_path / "demo.png")
    assert len(shown[0]) == TOP_K and {name for name, _ in shown[1]} <= set(FLOWER_NAMES)

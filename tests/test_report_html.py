"""The self-contained HTML run report (`pipeline.report_html`), from a small real run: every
section filled, every image embedded as a PNG that decodes, user strings escaped, and the page
rendered by headless Chromium (skipped when it is not installed) is not blank and shows every
image it holds."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.run import run_stages

# Folder names become class names: markup in them must reach the page as text.
CLASSES = ("daisy & <b>co", 'tulip "red"')  # no "/": it cannot be in a folder name
SECTIONS = ("headline", "data", "augmentation", "model", "training", "test", "diagnosis",
            "calibration", "mistakes", "export", "config")
TINY = ["model.weights=none", "model.image_size=32", "data.image_size=32",
        "train.batch_size=8", "train.head_epochs=2", "train.fine_tune_epochs=1",
        "train.cached_views=1", "augment.preview_images=2", "augment.preview_views=2",
        "evaluate.tta=true", "name=tiny"]


class Page(html.parser.HTMLParser):
    """The parts of the page the tests read: image sources, section ids, scripts and links."""

    def __init__(self):
        super().__init__()
        self.images, self.ids, self.scripts, self.links = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "script":
            self.scripts += 1
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for name in ("href", "src"):
            if attrs.get(name, "").startswith(("http:", "https:", "//", "file:")):
                self.links.append(attrs[name])


def decode_png(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):], validate=True)))
    assert image.format == "PNG"
    image.load()
    return image


def synthetic_run(run_dir, class_names=CLASSES, seed=0) -> dict:
    """A run folder as the evaluate stage leaves it, from made-up predictions (no training):
    the data report, the preview, metrics.json's contents, the train history and the config."""
    from pipeline.calibration import calibration_report
    from pipeline.config import to_dict
    from pipeline.data.report import build_data_report, write_data_report
    from pipeline.evaluate import (
        classification_metrics,
        diagnose_bias_variance,
        most_confident_mistakes,
        most_confused_pairs,
    )

    rng = np.random.default_rng(seed)
    labels, probabilities, metrics = {}, {}, {}
    for split, count in (("train", 60), ("dev", 30), ("test", 30)):
        labels[split] = np.arange(count) % len(class_names)
        scores = rng.normal(0, 1, (count, len(class_names)))
        scores[np.arange(count), labels[split]] += 1.5
        probabilities[split] = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
        metrics[split] = classification_metrics(labels[split], probabilities[split], class_names)
    write_data_report(build_data_report(
        class_names=class_names, labels_by_split=labels, source="folder:/photos/<mine>",
        skipped=[{"path": "/photos/<img src=x>.jpg", "reason": "truncated JPEG"}],
        duplicate_groups=[["a/1.jpg", "b/1.jpg"]], label_conflicts=[["a/1.jpg", "b/1.jpg"]]),
        run_dir / "data")
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(
        run_dir / "augment_preview.png")
    metrics.update(
        class_names=list(class_names), timings={"extract_features_s": 3.0, "phase1_head_s": 2.0,
                                                "phase2_fine_tune_s": 30.0}, image_size=32,
        diagnosis=diagnose_bias_variance(train_error=metrics["train"]["error"],
                                         dev_error=metrics["dev"]["error"],
                                         test_error=metrics["test"]["error"]),
        model={"total": 1000, "trainable_phase1": 10, "trainable_phase2": 400,
               "frozen_phase2": 600},
        calibration=calibration_report(labels["dev"], probabilities["dev"], labels["test"],
                                       probabilities["test"]),
        mistakes=most_confident_mistakes(labels["test"], probabilities["test"], class_names),
        confused_pairs=most_confused_pairs(metrics["test"]["confusion_matrix"], class_names),
        tta={"views": ["original", "mirrored"], "crop_fraction": 0.875, "seconds": 2.0,
             "plain_seconds": 1.0, "cost": 2.0,
             "dev": {"accuracy": 0.5, "error": 0.5, "plain_accuracy": 0.4},
             "test": {"accuracy": 0.6, "error": 0.4, "plain_accuracy": 0.5}})
    series = {"loss": [1.0, 0.8, 0.7, 0.6], "val_loss": [1.1, 0.9, 0.85, 0.8],
              "accuracy": [0.5, 0.6, 0.7, 0.8], "val_accuracy": [0.45, 0.55, 0.6, 0.62],
              "learning_rate": [1e-3, 8e-4, 1e-4, 8e-5]}
    history = {"history": series, "phase_boundaries": [2], "timings": metrics["timings"],
               "image_size": 32, "extraction_engine": "litert", "extraction_precision": "float32"}
    config = to_dict(load_config("configs/folder.yaml", ["model.weights=none", "name=tiny"]))
    test_images = rng.integers(0, 255, (30, 32, 32, 3), dtype=np.uint8)
    return {"metrics": metrics, "history": history, "config_summary": config,
            "test_images": test_images}


def check_page(run_dir, mistakes: int) -> str:
    """Asserts the page is self-contained, has every section and every image decodes."""
    text = (run_dir / "report.html").read_text()
    page = Page()
    page.feed(text)
    assert page.scripts == 0 and page.links == []  # no JavaScript, no network, no local files
    assert set(SECTIONS) <= set(page.ids)
    # preview, learning curves, confusion matrix, bias/variance, reliability, the mistakes
    assert len(page.images) == 5 + mistakes
    sizes = [decode_png(uri).size for uri in page.images]
    assert all(width > 10 and height > 10 for width, height in sizes)
    for needle in ("Verdict:", "phase 1: head on cached features", "phase 2 trainable",
                   "Expected calibration error", "test-time augmentation", "All advice",
                   "Skipped files: 1", "label conflicts",
                   "<b>not kept</b>", "dev has 30 images, too few to fit it"):
        assert needle in text, needle
    return text


@pytest.fixture
def synthetic_page(tmp_path):
    from pipeline.report import write_report

    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / "data").mkdir(parents=True)
    inputs = synthetic_run(run_dir)
    write_report(run_dir, inputs["metrics"], inputs["history"],
                 config_summary=inputs["config_summary"], test_images=inputs["test_images"])
    return run_dir, inputs["metrics"]


def test_the_page_is_self_contained_with_every_section_filled(synthetic_page):
    run_dir, metrics = synthetic_page
    text = check_page(run_dir, len(metrics["mistakes"]))
    assert len(metrics["mistakes"]) > 0
    assert "Next steps for the largest gap" in text
    assert metrics["diagnosis"]["largest_gap"] in text


def test_the_model_section_says_where_phase_2_began_and_how_it_was_fed(tmp_path):
    """The depth and feeding path training recorded, not the backbone's default cut."""
    from pipeline.report import write_report

    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / "data").mkdir(parents=True)
    inputs = synthetic_run(run_dir)
    inputs["history"].update(fine_tune_from="block5a", phase2_feeding="pixels")
    write_report(run_dir, inputs["metrics"], inputs["history"],
                 config_summary=inputs["config_summary"], test_images=inputs["test_images"])
    text = (run_dir / "report.html").read_text()
    assert "block5a (layer block5a_expand_conv)" in text
    assert "augmented live" in text and "block6a" not in text


def test_user_strings_are_escaped(synthetic_page):
    run_dir, _ = synthetic_page
    text = (run_dir / "report.html").read_text()
    assert "<b>co" not in text and "<img src=x>" not in text and "<mine>" not in text
    assert "daisy &amp; &lt;b&gt;co" in text
    assert "tulip &#34;red&#34;" in text or "tulip &quot;red&quot;" in text
    assert "/photos/&lt;img src=x&gt;.jpg" in text


def test_the_markdown_twin_has_the_same_extra_sections(synthetic_page):
    run_dir, metrics = synthetic_page
    markdown = (run_dir / "report.md").read_text()
    for title in ("## Calibration", "## Test-time augmentation", "## Most confident mistakes",
                  "## Most confused pairs"):
        assert title in markdown
    assert f"{metrics['calibration']['temperature_fitted']:.3f}" in markdown


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                    "(Debian: apt-get install chromium)")
# Injected into a copy of the page only (the report itself has no script): after load, the
# body records how many images decoded (naturalWidth > 0) and how many there are.
IMAGE_CHECK = ("<script>window.addEventListener('load', () => { const images = "
               "[...document.images]; document.body.dataset.loaded = images.filter(i => "
               "i.complete && i.naturalWidth > 0).length + '/' + images.length; });</script>")


def chromium(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", *arguments], capture_output=True, text=True,
                          timeout=180)


def render_in_chromium(page_path, folder) -> np.ndarray:
    """Asserts Chromium loads every image of the page; returns its 1200 px wide screenshot
    (grey levels), which is also kept as `folder/report.png`."""
    checked = folder / "checked.html"
    checked.write_text(page_path.read_text().replace("</body>", IMAGE_CHECK + "</body>"))
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", checked.as_uri()).stdout
    page = Page()
    page.feed(page_path.read_text())
    assert f'data-loaded="{len(page.images)}/{len(page.images)}"' in dom
    screenshot = folder / "report.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1200,4000", page_path.as_uri())
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert pixels.shape == (4000, 1200)
    assert pixels.std() > 20  # text, tables and plots, not a blank page
    assert (pixels < 128).mean() > 0.02
    return pixels


@needs_chromium
def test_chromium_shows_every_image_of_the_page(synthetic_page, tmp_path):
    run_dir, _ = synthetic_page
    render_in_chromium(run_dir / "report.html", tmp_path)


@pytest.mark.slow
def test_a_small_real_run_writes_a_page_chromium_renders(tmp_path):
    """Data, preview, train and evaluate (with TTA) on a folder of generated photos."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(14):
            pixels = rng.integers(0, 120, (40, 40, 3)).astype(np.uint8)
            pixels[:, :, label] += 120  # a learnable colour cast per class
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{index}.jpg")
    (tmp_path / "photos" / CLASSES[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff")  # skipped
    config = load_config("configs/folder.yaml", [
        *TINY, f"data.path={tmp_path / 'photos'}", f"runs_dir={tmp_path / 'runs'}",
        f"export.models_dir={tmp_path / 'models'}"])
    run_stages(config, ("data", "preview", "train", "evaluate"))
    run_dir = config.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    wrong = metrics["test"]["num_examples"] - np.trace(metrics["test"]["confusion_matrix"])
    assert len(metrics["mistakes"]) == min(12, wrong)
    text = check_page(run_dir, len(metrics["mistakes"]))
    assert "daisy &amp; &lt;b&gt;co" in text and "<b>co" not in text
    assert metrics["tta"]["test"]["plain_accuracy"] == metrics["test"]["accuracy"]
    parameters = metrics["model"]
    assert 0 < parameters["trainable_phase1"] < parameters["trainable_phase2"] \
        < parameters["total"]
    for phase in ("phase1", "phase2"):
        assert any((run_dir / "tensorboard" / phase).rglob("events.out.tfevents.*"))
    assert "## Calibration" in (run_dir / "report.md").read_text()
    if CHROMIUM:
        render_in_chromium(run_dir / "report.html", tmp_path)


def test_backquoted_config_keys_become_code_after_escaping():
    from pipeline.report_html import inline_code

    assert str(inline_code("raise `model.l2` <now> & `a<b>`")) == \
        "raise <code>model.l2</code> &lt;now&gt; &amp; <code>a&lt;b&gt;</code>"

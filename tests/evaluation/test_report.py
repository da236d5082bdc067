"""report_<split>.html: every section present, every string escaped, nothing fetched from
elsewhere; the report of a tiny evaluation opened in headless Chromium, where every image must
decode."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import Image

from simclr_med.data.reader import open_build
from simclr_med.evaluation import metrics, report
from simclr_med.stages import evaluate
from tests import tiny
from tests.conftest import skip_unless_required

CHROMIUM = os.environ.get("SIMCLR_MED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--virtual-time-budget=10000"]
# Appended to a copy of the page: once everything is loaded, writes each image's state where
# --dump-dom shows it.
IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var states = Array.from(document.images).map(function (image) {
    return {alt: image.alt, complete: image.complete, width: image.naturalWidth};
  });
  var out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify(states);
  document.body.appendChild(out);
});
</script>"""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SYNTHETIC_CLASSES = ("disc", "ring", "bar", "cross")


def _png(side: int, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _result(names: tuple[str, ...]) -> tuple[dict, metrics.Targets, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    class_id = rng.integers(0, len(names), 60)
    probs = rng.dirichlet(np.ones(len(names)), 60)
    targets = metrics.Targets("multiclass", names, class_id=class_id)
    patients = np.array([f"p{i // 2}" for i in range(60)])
    result = evaluate.report(targets, probs, patients, evaluate.EvalConfig(bootstrap_samples=20),
                             split="test", data_dir="data/<b>ham</b>", global_step=3,
                             checkpoint="ckpt-3")
    return result, targets, probs, np.array([f"img&{i}" for i in range(60)])


class _Tags(html.parser.HTMLParser):
    """Every start tag with its attributes, and the text."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_the_page_holds_every_section_escaped_and_self_contained():
    names = ("nv", "<script>alert(1)</script>", "mel")
    result, targets, probs, image_ids = _result(names)
    result["calibration"] = {"temperature": 1.7, "fitted_on": "validation", "num_images": 40,
                             "global_step": 3, "nll_before": 1.2, "nll_after": 1.1,
                             "ece_before": 0.2, "ece_after": 0.05}
    errors = report.confident_errors(targets, probs, image_ids)
    page = report.render(
        result, model_dir="runs/<i>model</i>", created="2026-12-02 04:00 UTC",
        figures=[report.Picture(_png(40, 10), "roc_test.png"),
                 report.Picture(_png(40, 20), "reliability_test.png")],
        errors=[report.Picture(_png(8, 30 + i), error.caption) for i, error in enumerate(errors)],
        embedding_map=report.Picture(_png(40, 99), "embedding_map_test.png"))

    assert "<script" not in page and "<b>" not in page and "<i>" not in page
    parsed = _Tags()
    parsed.feed(page)
    text = "".join(parsed.text)
    for shown in ("Evaluation of runs/<i>model</i> on the test split", "data/<b>ham</b>",
                  "global step 3", "2026-12-02 04:00 UTC", "T = 1.7000", "validation",
                  "Embedding map", f"Errors: the {report.MOST_CONFIDENT_ERRORS} most confident"):
        assert shown in text, shown
    # the metrics table: every metric with its interval, as the printed table orders them
    rows = [row for row in report.metric_rows(result)]
    assert [name for name, _, _ in rows] == [
        line.split()[0] for line in evaluate.format_metrics_table(result).splitlines()[2:]]
    for name, value, interval in rows:
        assert f"{name}{value}{interval}" in text
    assert "auc/<script>alert(1)</script>" in text
    # images: the figures, the errors (captions say truth, prediction, probability), the map
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 2 + report.MOST_CONFIDENT_ERRORS + 1
    for image in images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix):], validate=True).startswith(
            PNG_SIGNATURE)
    first = errors[0]
    assert images[2]["alt"] == (f"{first.image_id}: true {first.truth}, predicted "
                                f"{first.predicted} ({first.probability:.3f})")
    # nothing from elsewhere: no URL but the data: ones, no script, no external style
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "link", "iframe", "object")
        for name, value in attrs.items():
            if name in ("src", "href"):
                assert value.startswith("data:image/png;base64,"), (tag, name, value[:40])
    assert not re.search(r"url\(|@import|https?://", page)


def test_confident_errors_are_the_most_probable_wrong_answers():
    result, targets, probs, image_ids = _result(("a", "b", "c"))
    errors = report.confident_errors(targets, probs, image_ids, count=5)
    wrong = np.flatnonzero(probs.argmax(axis=1) != targets.class_id)
    expected = wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")][:5]
    assert [e.index for e in errors] == expected.tolist()
    assert all(e.predicted != e.truth and e.probability == probs[e.index].max() for e in errors)

    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], float)
    mask = np.array([[1, 1], [1, 0], [1, 1], [1, 1]], float)
    scores = np.array([[0.9, 0.8], [0.95, 0.99], [0.1, 0.7], [0.3, 0.6]])
    targets = metrics.Targets("multilabel", ("Effusion", "Mass"), labels=labels, label_mask=mask)
    errors = report.confident_errors(targets, scores, np.array(["w", "x", "y", "z"]))
    # false positives: unmasked negatives, most probable first (x's masked Mass does not count)
    assert [(e.image_id, e.predicted, e.probability) for e in errors] == [
        ("x", "Effusion", 0.95), ("w", "Mass", 0.8), ("z", "Mass", 0.6), ("z", "Effusion", 0.3),
        ("y", "Effusion", 0.1)]
    assert errors[0].truth == "no finding" and errors[4].truth == "Mass"


@pytest.fixture(scope="module")
def evaluated(synthetic_build, tmp_path_factory) -> pathlib.Path:
    """A tiny evaluation with --calibrate, beside an embedding map: its output folder."""
    model_dir = tiny.model_folder(tmp_path_factory.mktemp("report") / "model", SYNTHETIC_CLASSES,
                                  logit_scale=40.0)
    (pathlib.Path(model_dir) / "embedding_map_test.png").write_bytes(_png(64, 128))
    evaluate.evaluate(model_dir, open_build(str(synthetic_build)), "test",
                      evaluate.EvalConfig(bootstrap_samples=20, calibrate=True))
    return pathlib.Path(model_dir)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary, or skip (a failure under SIMCLR_MED_REQUIRE_DATA=1, as in CI)."""
    if not os.access(CHROMIUM, os.X_OK):
        skip_unless_required(f"no Chromium at {CHROMIUM} (apt-get install chromium; "
                             "SIMCLR_MED_CHROMIUM names another)")
    return CHROMIUM


def _chromium_image_states(chromium: str, page: pathlib.Path,
                           work: pathlib.Path) -> list[dict]:
    """Opens a copy of `page` with IMAGE_CHECK in headless Chromium; the state of each image."""
    copy = work / "checked.html"
    copy.write_text(page.read_text().replace("</body>", IMAGE_CHECK + "</body>"))
    profile = tempfile.mkdtemp(dir=work)
    try:
        completed = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
             copy.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    found = re.search(r'<pre id="image-check">(.*?)</pre>', completed.stdout, re.S)
    assert found, completed.stdout[-2000:]
    return json.loads(html.unescape(found[1]))


@pytest.mark.subprocess
def test_every_image_of_a_real_report_renders_in_chromium(chromium, evaluated, tmp_path):
    page = evaluated / "report_test.html"
    assert page.stat().st_size < 500_000
    states = _chromium_image_states(chromium, page, tmp_path)
    names = [state["alt"] for state in states]
    assert names[:4] == ["roc_test.png", "confusion_matrix_test.png", "reliability_test.png",
                         "reliability_test_calibrated.png"]
    assert names[-1] == "embedding_map_test.png"
    assert len(states) == 4 + report.MOST_CONFIDENT_ERRORS + 1
    broken = [state for state in states if not (state["complete"] and state["width"] > 0)]
    assert not broken, broken

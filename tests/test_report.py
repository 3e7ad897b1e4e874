"""The HTML report: content, embedded pictures, and a real headless browser loading it."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch
from PIL import Image
from test_viz import make_classifier_run, make_run, tiny_config

from drawnet.checkpoint import load_model
from drawnet.cli import main
from drawnet.report import PAPER_TABLE2, build_report, load_split, read_metrics

EVAL = {"split": "test", "nll_bound": 123.456, "nll_iw": 120.5, "iw_samples": 50,
        "kl_per_step": [2.0, 1.0, 0.5, 0.25, 0.125], "L_x": 100.0, "L_z": 23.456, "num_images": 256}


class ImageCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def embedded_images(page: str) -> list[Image.Image]:
    parser = ImageCollector()
    parser.feed(page)
    images = []
    for src in parser.sources:
        match = re.fullmatch(r"data:image/(png|gif);base64,([A-Za-z0-9+/=]+)", src)
        assert match, f"not an embedded PNG/GIF: {src[:60]}"
        im = Image.open(io.BytesIO(base64.b64decode(match.group(2))))
        assert im.format.lower() == match.group(1)
        images.append(im)
    return images


def test_report_without_eval_says_so(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["report", str(run), "-n", "4", "--n-animate", "2"]) == 0
    path = run / "report.html"
    assert capsys.readouterr().out.strip() == str(path)
    page = path.read_text()
    assert "No eval.json yet" in page
    assert "last validation bound" in page and "120.00" in page  # the last validation record's bound
    assert "80.97" in page and "87.40" in page  # the paper's Table 2 rows
    assert "last validation, epoch 2" in page  # KL per step falls back to the validation record
    images = embedded_images(page)
    # curves, KL bars, samples, generation GIF + strip, reconstruction GIF + strip
    assert len(images) == 7
    assert all(im.size[0] > 0 and im.size[1] > 0 for im in images)
    assert sum(im.format == "GIF" for im in images) == 2
    assert '"preset": "tiny"' in page  # the configuration


def test_report_with_eval_shows_numbers_next_to_the_paper(tmp_path):
    run = make_run(tmp_path, eval_json=EVAL)
    page = build_report(run, n_samples=4, n_animate=2).read_text()
    assert "No eval.json" not in page
    assert "123.46" in page and "120.50" in page and "K = 50" in page
    assert "test set" in page  # the KL chart comes from eval.json
    for name, _, value in PAPER_TABLE2:
        assert name in page and f"{value:.2f}" in page


def test_report_from_a_checkpoint_alone(tmp_path):
    # No config.json / metrics.jsonl: the checkpoint carries the configuration.
    run = make_run(tmp_path, config=tiny_config(image_shape=(3, 8, 11), read_n=None, write_n=None))
    ckpt = tmp_path / "alone.safetensors"
    shutil.copy(run / "checkpoints" / "last.safetensors", ckpt)
    out = build_report(ckpt, n_samples=4, n_animate=2)
    assert out == tmp_path / "report.html"
    page = out.read_text()
    assert "No metrics.jsonl records" in page and "No per-step KL" in page
    assert len(embedded_images(page)) == 5  # samples, generation GIF + strip, reconstruction GIF + strip


def test_classifier_report_compares_with_table1(tmp_path):
    run = make_classifier_run(tmp_path)
    page = build_report(run, n_animate=2).read_text()
    assert "No eval.json yet" in page and "25.00 %" in page  # the last validation error
    assert "3.36 %" in page and "14.35 %" in page  # the paper's Table 1
    (run / "eval.json").write_text(json.dumps({"split": "test", "error": 0.125, "num_images": 256}))
    page = build_report(run, n_animate=2).read_text()
    assert "No eval.json" not in page and "12.50 %" in page
    images = embedded_images(page)
    assert [im.format for im in images] == ["PNG", "GIF", "PNG"]  # curves, glimpse animation, strip


def test_torn_metrics_lines_are_skipped_with_a_warning(tmp_path, capsys):
    """A line torn by a kill, last or not (a record glued after it), does not stop the report."""
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n{"kind": "tra')
    assert read_metrics(tmp_path) == [{"kind": "train", "step": 1}]
    (tmp_path / "metrics.jsonl").write_text('{"kind": "tra\n{"kind": "train", "step": 1}\n')
    assert read_metrics(tmp_path) == [{"kind": "train", "step": 1}]
    err = capsys.readouterr().err
    assert "skipping" in err and "metrics.jsonl:2" in err and "metrics.jsonl:1" in err


# ------------------------------------------------------------------------------ the browser
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)

# Injected first into a copy of the page: records page errors (including images that fail to
# load, caught in the capture phase) and console errors, then on "load" writes every image's
# natural size into an attribute that --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src)
  || "error")), true);
for (const level of ["error", "warn"]) {
  const original = console[level];
  console[level] = (...args) => { window.__errors.push(level + ": " + args.join(" ")); original(...args); };
}
window.addEventListener("load", () => {
  const sizes = [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]);
  document.documentElement.setAttribute("data-probe", JSON.stringify({errors: window.__errors, sizes}));
});
</script>"""


@pytest.mark.browser
@pytest.mark.skipif(BROWSER is None, reason="no Chromium / Chrome installed")
def test_report_renders_in_headless_chromium(tmp_path):
    run = make_run(tmp_path, eval_json=EVAL)
    page = build_report(run, n_samples=16, n_animate=4).read_text()
    expected_images = len(embedded_images(page))
    probe_page = run / "probe.html"
    probe_page.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
         "--dump-dom", probe_page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert match, f"the page did not finish loading; stderr: {result.stderr[-2000:]}"
    probe = json.loads(html.unescape(match.group(1)))
    assert probe["errors"] == []
    # Console messages of the page itself reach Chromium's log as "CONSOLE" lines: there must be none.
    assert [line for line in result.stderr.splitlines() if ":CONSOLE" in line] == []
    assert len(probe["sizes"]) == expected_images > 0
    for complete, width, height in probe["sizes"]:
        assert complete and width > 0 and height > 0


def test_classifier_report_shows_the_confusion_matrix_and_the_mistakes(tmp_path, capsys):
    """`classify eval` records the confusion matrix and the misclassified test images; the report shows
    both, the mistakes with their glimpses."""
    from drawnet.classifier import confused_pairs, evaluate_classifier

    run = make_classifier_run(tmp_path)
    assert main(["classify", "eval", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    confusion, wrong = torch.tensor(result["confusion"]), result["misclassified"]
    assert confusion.shape == (3, 3) and int(confusion.sum()) == result["num_images"]
    assert len(wrong) == result["num_images"] - int(confusion.trace()) == round(result["error"] * result["num_images"])
    # the recorded indices are exactly the test images this model gets wrong, and the matrix counts them
    model, _ = load_model(run)
    test = load_split(json.loads((run / "config.json").read_text()), "test", model.config.image_shape)
    with torch.no_grad():
        predicted = model(test.images).logits.argmax(1)
    assert wrong == torch.nonzero(predicted != test.labels).flatten().tolist()
    assert confusion[int(test.labels[wrong[0]]), int(predicted[wrong[0]])] > 0
    t, p, n = confused_pairs(result["confusion"])[0]
    assert f"{t} -> {p} ({n})" in out and n == max(confusion[i, j] for i in range(3) for j in range(3) if i != j)
    assert evaluate_classifier(model, test, 7)["error"] == result["error"]  # batching does not matter

    page = build_report(run, n_animate=2).read_text()
    assert "Confusion matrix (test set)" in page and "Misclassified test images" in page
    assert f"test set indices {wrong[0]}, {wrong[1]}" in page
    assert [im.format for im in embedded_images(page)] == ["PNG", "GIF", "PNG", "GIF", "PNG"]

    # an eval.json of another checkpoint, or of other data, is not drawn beside this model
    stale = result | {"step": 12345}
    (run / "eval.json").write_text(json.dumps(stale))
    page = build_report(run, n_animate=2).read_text()
    assert "measured on another checkpoint" in page and "Misclassified test images" not in page
    (run / "eval.json").write_text(json.dumps(result | {"misclassified": [10**6]}))
    page = build_report(run, n_animate=2).read_text()
    assert "does not have: it was measured on other data" in page

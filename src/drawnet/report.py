"""Reading a run directory, and the one-page HTML report of a run (``drawnet report RUN``).

The page is a single self-contained file: every picture is embedded as a data URI, there is no
script and nothing is fetched from the network, so it can be mailed or archived as is. The
pictures themselves come from :mod:`drawnet.viz`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import sys
from pathlib import Path
from typing import Any

import torch

from . import classifier, evaluate
from .checkpoint import Checkpoint, atomic_write, load_model
from .data import ImageDataset, get_dataset
from .rundir import CONFIG_FILE, METRICS_FILE, REPORT_FILE, read_config, read_eval, read_metrics, run_dir_of

__all__ = ["build_report", "config_disagreements", "load_split", "read_eval", "read_metrics", "run_config",
           "run_dir_of"]

# The paper's Tables 1 and 2 (paper section 4), kept once, where the numbers are computed.
PAPER_TABLE2 = evaluate.PAPER_TABLE2
PAPER_TABLE1 = [(name, 100 * error) for name, error in classifier.PAPER_TABLE1]  # percent


# ------------------------------------------------------------------------------ run directories
def stored_config(ckpt: Checkpoint) -> dict[str, Any]:
    """The run configuration a checkpoint records (kind, model, and train when it has one)."""
    train = ckpt.train_config
    if isinstance(train, dict) and "train" in train:  # a whole run configuration stored as the train config
        train = train["train"]
    return {"kind": ckpt.kind, "model": ckpt.model_config, "train": train if isinstance(train, dict) else None}


def config_disagreements(saved: dict[str, Any], ckpt: Checkpoint) -> list[tuple[str, Any, Any]]:
    """(setting, config.json's value, the checkpoint's value) wherever ``saved`` (a config.json)
    says otherwise than the checkpoint about what its weights are: the kind, the model settings,
    and the train settings a resume may not change (a resume may change the others, such as lr,
    after the best checkpoint was written)."""
    from .train import RESUMABLE_KEYS

    stored = stored_config(ckpt)
    differ = []
    if saved.get("kind") != stored["kind"]:
        differ.append(("kind", saved.get("kind"), stored["kind"]))
    for section in ("model", "train"):
        ours, theirs = saved.get(section), stored[section]
        if theirs is None:
            continue
        ours = ours if isinstance(ours, dict) else {}
        for key in sorted(set(ours) | set(theirs)):
            if section == "train" and key in RESUMABLE_KEYS:
                continue
            if ours.get(key) != theirs.get(key):
                differ.append((f"{section}.{key}", ours.get(key), theirs.get(key)))
    return differ


def run_config(path: str | Path, ckpt: Checkpoint, *, warn: bool = True) -> dict[str, Any]:
    """The configuration of the run at ``path``: RUN/config.json if there is one (else what the
    checkpoint stores), except that the kind, the model and the train settings that define the
    experiment (the data set among them) are always the checkpoint's, the settings its weights were
    trained with. Where config.json disagrees, a warning names each setting with both values."""
    stored = stored_config(ckpt)
    run_dir = run_dir_of(path)
    saved = read_config(run_dir)
    if saved is None:
        return {"kind": stored["kind"], "model": stored["model"], "train": stored["train"] or {}}
    differ = config_disagreements(saved, ckpt)
    if differ and warn:
        listed = "; ".join(f"{key} is {a!r} there, {b!r} in the checkpoint" for key, a, b in differ)
        print(f"drawnet: warning: {run_dir / CONFIG_FILE} disagrees with {ckpt.path}: {listed}; using the "
              f"checkpoint's settings", file=sys.stderr)
    config = dict(saved)
    train = dict(saved.get("train") or {}) if isinstance(saved.get("train"), dict) else {}
    for key, _, value in differ:
        section, _, name = key.partition(".")
        if section == "train":
            train[name] = value
    config |= {"kind": stored["kind"], "model": stored["model"], "train": train}
    return config


def load_split(config: dict[str, Any], split: str, image_shape: tuple[int, int, int] | None = None) -> ImageDataset:
    """Split ``split`` of the data set the run was trained on (config["train"]["data"])."""
    train = config.get("train") or {}
    if "data" not in train:
        raise ValueError(
            "the run's configuration names no data set (train.data is missing in config.json and in the "
            "checkpoint), so its training/test images cannot be loaded"
        )
    from .train import split_options

    dataset = get_dataset(train["data"], split, **split_options(train.get("data_options") or {}, split))
    if image_shape is not None and tuple(dataset.image_shape) != tuple(image_shape):
        raise ValueError(
            f"data set {train['data']!r} ({split}) has images of shape {dataset.image_shape} but the model "
            f"draws {tuple(image_shape)}; check train.data_options in the run's config.json"
        )
    return dataset


def run_class_names(config: dict[str, Any]) -> list[str] | None:
    """The names of the classes of the run's data set (None when it has none, or they cannot be found)."""
    from .data import class_names
    from .train import split_options

    train = config.get("train") or {}
    try:
        return class_names(train.get("data", ""), **split_options(train.get("data_options") or {}, "train"))
    except (ValueError, OSError):
        return None


def parse_label(text: str, model: Any, names: list[str] | None) -> int:
    """The class index meant by ``--label TEXT``: an index, or one of the data set's class names."""
    if not model.config.conditional:
        raise ValueError("this model is unconditional (trained without labels): --label needs a model trained with "
                         "conditional=true (e.g. the mnist-conditional preset)")
    K = model.config.num_classes
    text = str(text).strip()
    if names is not None and text in names:
        return names.index(text)
    try:
        k = int(text)
    except ValueError:
        known = f"; its classes are {', '.join(names)}" if names else ""
        raise ValueError(f"--label {text!r} is neither a class index 0-{K - 1} nor a class name{known}") from None
    if not 0 <= k < K:
        raise ValueError(f"--label {k} is out of range: the model has {K} classes (0-{K - 1})")
    return k


# ----------------------------------------------------------------------------------- HTML bits
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(data: bytes, mime: str, alt: str, pixels: bool = True) -> str:
    """An embedded image; ``pixels`` pictures are scaled without smoothing, plots are not."""
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    cls = ' class="px"' if pixels else ""
    return f'<img{cls} src="{uri}" alt="{_esc(alt)}">'


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ours { background: #fff4d6; font-weight: bold; }
table.confusion td.ours { background: #e3f4e3; } table.confusion td.miss { background: #fbe3e3; color: #a33; }
.note { color: #666; font-size: .9em; } .missing { color: #a33; }
img { max-width: 100%; display: block; margin: .5em 0; } img.px { image-rendering: pixelated; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; }
"""


def _is_conditional(config: dict[str, Any]) -> bool:
    return bool((config.get("model") or {}).get("conditional"))


def _is_binarized_mnist(config: dict[str, Any]) -> bool:
    """Whether the run's bounds compare with the paper's Table 2: an unconditional model on (binarized) MNIST."""
    return evaluate.table2_comparable((config.get("train") or {}).get("data", ""),
                                      (config.get("model") or {}).get("image_shape", ()), _is_conditional(config))


def _draw_results(config: dict[str, Any], evaluation: dict[str, Any] | None, valid: list[dict]) -> str:
    parts = []
    data = (config.get("train") or {}).get("data", "?")
    if evaluation is None:
        parts.append(
            '<p class="missing">No eval.json yet: this run has not been evaluated on the test set. Run '
            "<code>drawnet eval RUN</code> for the test bound and the importance-weighted estimate.</p>"
        )
    rows = []
    of = "−log p(x | y)" if _is_conditional(config) else "−log p(x)"
    if evaluation is not None:
        split, n = evaluation.get("split", "test"), evaluation.get("num_images")
        rows.append((f"this run: bound on {of}", "≤", evaluation.get("nll_bound"), f"{split}, {n} images", True))
        if evaluation.get("nll_iw") is not None:
            k, n_iw = evaluation.get("iw_samples"), evaluation.get("iw_num_images", n)
            rows.append(("this run: importance-weighted", "≈", evaluation["nll_iw"], f"{split}, {n_iw} images, K = {k}",
                         True))
    if valid and valid[-1].get("bound") is not None:
        last = valid[-1]
        rows.append(("this run: last validation bound", "≤", last["bound"], f"epoch {last.get('epoch')}", True))
    comparable = _is_binarized_mnist(config)
    body = "".join(
        f'<tr class="ours"><td>{_esc(name)}</td><td class="num">{rel} {_fmt(v)}</td><td>{_esc(note)}</td></tr>'
        for name, rel, v, note, _ in rows
    )
    body += "".join(
        f'<tr><td>{_esc(name)}</td><td class="num">{rel} {v:.2f}</td><td>paper, Table 2</td></tr>'
        for name, rel, v in PAPER_TABLE2
    )
    parts.append(f"<table><tr><th>model</th><th>nats</th><th>source</th></tr>{body}</table>")
    parts.append(
        '<p class="note">Table 2 is the test negative log-likelihood on binarized MNIST (Salakhutdinov &amp; Murray). '
        + (
            f"This run is on {_esc(data)}: the comparison holds only for the fixed binarized test set (not a "
            "thresholded or a freshly sampled binarization)."
            if comparable
            else "This run is class-conditional: its numbers bound −log p(x | y), the class label given, which is "
            "not comparable with the paper's −log p(x) (knowing the class makes an image cheaper to describe); the "
            "paper's numbers are shown for reference only."
            if _is_conditional(config)
            else f"This run is on {_esc(data)!s}, so the paper's numbers are shown for reference only."
        )
        + "</p>"
    )
    return "\n".join(parts)


def _classifier_results(evaluation: dict[str, Any] | None, valid: list[dict]) -> str:
    rows = []
    if evaluation is None:
        note = ('<p class="missing">No eval.json yet: run <code>drawnet classify eval RUN</code> for the test '
                "error.</p>")
    else:
        note = ""
        rows.append((f"this run ({evaluation.get('split', 'test')})", 100 * evaluation["error"], True))
    if valid and valid[-1].get("error") is not None:
        rows.append(("this run (last validation)", 100 * valid[-1]["error"], True))
    body = "".join(f'<tr class="ours"><td>{_esc(n)}</td><td class="num">{v:.2f} %</td></tr>' for n, v, _ in rows)
    body += "".join(f'<tr><td>{_esc(n)}</td><td class="num">{v:.2f} %</td></tr>' for n, v in PAPER_TABLE1)
    return note + f"<table><tr><th>model</th><th>error</th></tr>{body}</table>"


# -------------------------------------------------------------------------------------- report
def build_report(
    path: str | Path,
    *,
    out: str | Path | None = None,
    n_samples: int = 64,
    n_animate: int = 8,
    seed: int = 0,
) -> Path:
    """Write the HTML report of the run (or checkpoint) at ``path``; returns the page's path."""
    from . import viz

    model, ckpt = load_model(path)
    run_dir = run_dir_of(path)
    config = run_config(path, ckpt)
    metrics = read_metrics(run_dir)
    evaluation = read_eval(run_dir)
    train = [r for r in metrics if r.get("kind") == "train"]
    valid = [r for r in metrics if r.get("kind") == "valid"]
    kind = config.get("kind", ckpt.kind)
    title = f"drawnet report: {run_dir.resolve().name}"
    state = ckpt.trainer_state or {}

    sections: list[str] = []
    info = (
        f"<p>kind <b>{_esc(kind)}</b> · preset <b>{_esc(config.get('preset', '–'))}</b> · data "
        f"<b>{_esc((config.get('train') or {}).get('data', '–'))}</b> · checkpoint <code>{_esc(ckpt.path)}</code>"
        f" (epoch {_esc(state.get('epoch', '?'))}, step {_esc(state.get('step', '?'))}) · written "
        f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>"
    )
    sections.append(info)

    # Results next to the paper.
    if kind == "classifier":
        sections.append("<h2>Test error (paper Table 1)</h2>" + _classifier_results(evaluation, valid))
    else:
        sections.append("<h2>Negative log-likelihood (paper Table 2)</h2>" + _draw_results(config, evaluation, valid))

    # Learning curves.
    sections.append("<h2>Learning curves</h2>")
    if train or valid:
        if kind == "classifier":
            png = viz.plot_learning_curves(train, valid, train_key="error", valid_key="error", ylabel="error")
        else:
            ref = (80.97, "DRAW, paper (≤ 80.97)") if _is_binarized_mnist(config) else None
            png = viz.plot_learning_curves(
                train, valid, train_key="loss", valid_key="bound", ylabel="bound, nats per image", reference=ref
            )
        sections.append(
            "<figure>" + _img(png, "image/png", "learning curves", pixels=False)
            + "<figcaption>Training loss (per logged batch) and validation bound (per evaluation), against "
            "training steps and wall-clock time.</figcaption></figure>"
        )
    else:
        sections.append(f'<p class="missing">No {METRICS_FILE} records in {_esc(run_dir)} yet.</p>')

    if kind == "classifier":
        # eval.json's confusion matrix and mistakes belong to the checkpoint it evaluated: after more
        # training (or for another checkpoint of the run) they would be shown beside a different model.
        same = evaluation is not None and evaluation.get("step") == state.get("step")
        sections.extend(_classifier_pictures(model, config, evaluation if same else None, n_animate,
                                             stale=evaluation is not None and not same))
    else:
        sections.extend(_draw_pictures(model, config, evaluation, valid, n_samples, n_animate, seed))

    sections.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(config, indent=2), quote=False) + "</pre>")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>\n'
        f"<body><h1>{_esc(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    out_path = Path(out) if out is not None else run_dir / REPORT_FILE
    atomic_write(out_path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out_path


def _draw_pictures(
    model: Any, config: dict[str, Any], evaluation: dict[str, Any] | None, valid: list[dict],
    n_samples: int, n_animate: int, seed: int,
) -> list[str]:
    from . import viz

    sections = ["<h2>KL per step</h2>"]
    if evaluation is not None and evaluation.get("kl_per_step"):
        kl, source = evaluation["kl_per_step"], f"test set ({evaluation.get('split', 'test')}), eval.json"
    elif valid and valid[-1].get("kl_per_step"):
        kl, source = valid[-1]["kl_per_step"], f"last validation, epoch {valid[-1].get('epoch')} (no eval.json yet)"
    else:
        kl, source = None, ""
    if kl:
        png = viz.plot_kl_per_step(kl, f"KL per step, {source}; total {sum(kl):.2f} nats")
        sections.append(
            "<figure>" + _img(png, "image/png", "KL per step", pixels=False)
            + f"<figcaption>The KL term of each step (eq. 10), nats per image, from the {_esc(source)}: how much "
            "information each step adds to the drawing.</figcaption></figure>"
        )
    else:
        sections.append('<p class="missing">No per-step KL recorded yet (eval.json or a validation record).</p>')

    sections.append("<h2>Samples</h2>")
    conditional = model.config.conditional
    names = run_class_names(config) if conditional else None
    if conditional:
        rows = min(model.config.num_classes, viz.MAX_CLASS_ROWS)
        per_class = -(-n_samples // rows)
        grid = viz.class_picture(model, per_class, seed, names=names, classes=range(rows))
        shown = "" if rows == model.config.num_classes else f" (the first {rows} of {model.config.num_classes})"
        caption = (f"One row per class{shown}, {per_class} samples each from the class-conditional model, the mean "
                   f"image σ(c<sub>T</sub>) (seed {seed}); every row has the same latent noise, so a column shows one "
                   "latent code drawn as each class.")
    else:
        grid = viz.sample_picture(model, n_samples, seed)
        caption = (f"{n_samples} samples from the prior, the mean image σ(c<sub>T</sub>) as in the paper "
                   f"(seed {seed}).")
    sections.append(
        "<figure>" + _img(viz.png_bytes(grid), "image/png", "generated samples") + f"<figcaption>{caption}"
        "</figcaption></figure>"
    )

    sections.append("<h2>Drawing, step by step</h2>")
    gen = viz.generation_animation(model, n_animate, seed, names=names)
    has_write = model.config.write_n is not None
    sections.append(
        "<figure>" + _img(viz.gif_bytes(gen.frames, gen.duration_ms), "image/gif", "generation animation")
        + "<figcaption>Generation, one frame per step"
        + (" (the classes in turn, named under the last frame)" if conditional else "")
        + ("; red: the write window (its corners are the outermost filter centres, its border width grows "
           "with the filter σ)." if has_write else " (the model writes without attention).")
        + "</figcaption></figure>"
    )
    sections.append(
        "<figure>" + _img(viz.png_bytes(gen.strip), "image/png", "generation sequences")
        + "<figcaption>The same sequences as a strip: rows are samples, columns are steps (as in the paper's "
        "Figs 1 and 7).</figcaption></figure>"
    )
    try:
        test = load_split(config, "test", model.config.image_shape)
    except (ValueError, FileNotFoundError, OSError) as err:
        sections.append(f'<p class="missing">No reconstructions: the test set could not be loaded ({_esc(err)}).</p>')
        return sections
    labels = test.labels[:n_animate] if conditional and test.labels is not None else None
    rec = viz.reconstruction_animation(model, test.images[:n_animate], seed, labels=labels)
    sections.append(
        "<figure>" + _img(viz.gif_bytes(rec.frames, rec.duration_ms), "image/gif", "reconstruction animation")
        + "<figcaption>Test images being reconstructed: canvas above, data below; green: read window, "
        "red: write window.</figcaption></figure>"
    )
    sections.append(
        "<figure>" + _img(viz.png_bytes(rec.strip), "image/png", "reconstruction sequences")
        + "<figcaption>Reconstruction sequences: rows are test images, columns are steps, the last column the "
        "data.</figcaption></figure>"
    )
    return sections


def _confusion_table(confusion: list[list[int]], split: str) -> str:
    """The confusion matrix as an HTML table: rows the true class, columns the predicted one, the
    mistakes highlighted, each row's error at its end."""
    K = len(confusion)
    head = "<tr><th>true \\ predicted</th>" + "".join(f'<th class="num">{p}</th>' for p in range(K))
    head += '<th class="num">error</th></tr>'
    rows = []
    for t, row in enumerate(confusion):
        total = sum(row)
        cells = "".join(
            f'<td class="num{" ours" if p == t else (" miss" if n else "")}">{n}</td>' for p, n in enumerate(row)
        )
        error = f"{100 * (total - row[t]) / total:.2f} %" if total else "–"
        rows.append(f'<tr><th class="num">{t}</th>{cells}<td class="num">{error}</td></tr>')
    return (f"<h2>Confusion matrix ({_esc(split)} set)</h2><table class=\"confusion\">{head}{''.join(rows)}</table>"
            "<p>Counts of test images by true class (rows) and predicted class (columns); the diagonal is "
            "right.</p>")


def _classifier_pictures(
    model: Any, config: dict[str, Any], evaluation: dict[str, Any] | None, n_animate: int, *, stale: bool = False
) -> list[str]:
    from . import viz

    sections = []
    details = evaluation is not None and evaluation.get("confusion") is not None
    if details:
        sections.append(_confusion_table(evaluation["confusion"], evaluation.get("split", "test")))
    elif stale:
        sections.append('<p class="missing">No confusion matrix: eval.json was measured on another checkpoint '
                        "(another step) than this report's; run <code>drawnet classify eval RUN</code> again.</p>")
    else:
        sections.append('<p class="missing">No confusion matrix yet: run <code>drawnet classify eval RUN</code> '
                        "(it records the confusion matrix and the misclassified images in eval.json).</p>")
    sections.append("<h2>Glimpses</h2>")
    try:
        test = load_split(config, "test", model.config.image_shape)
    except (ValueError, FileNotFoundError, OSError) as err:
        return sections + [f'<p class="missing">No glimpses: the test set could not be loaded ({_esc(err)}).</p>']
    labels = test.labels[:n_animate] if test.labels is not None else None
    anim = viz.glimpse_animation(model, test.images[:n_animate], labels)
    sections.append(
        "<figure>" + _img(viz.gif_bytes(anim.frames, anim.duration_ms), "image/gif", "glimpse animation")
        + "<figcaption>The classifier's glimpses of test images (green: the read window, border width grows "
        "with the filter σ; as in the paper's Fig. 5) and its prediction after the last glimpse.</figcaption>"
        "</figure>"
    )
    sections.append(_img(viz.png_bytes(anim.strip), "image/png", "glimpse sequences"))
    if not details or evaluation.get("split", "test") != "test":
        return sections
    listed = evaluation.get("misclassified") or []
    fits = [i for i in listed if isinstance(i, int) and 0 <= i < len(test)]
    wrong = fits[:n_animate]
    sections.append("<h2>Misclassified test images</h2>")
    if not listed:
        return sections + ["<p>None: every test image was classified right.</p>"]
    if len(fits) < len(listed):
        return sections + [f'<p class="missing">eval.json lists misclassified images that this test set '
                           f"({len(test)} images) does not have: it was measured on other data; run "
                           "<code>drawnet classify eval RUN</code> again.</p>"]
    if not wrong:
        return sections
    index = torch.tensor(wrong)
    anim = viz.glimpse_animation(model, test.images[index], test.labels[index] if test.labels is not None else None)
    sections.append(
        "<figure>" + _img(viz.gif_bytes(anim.frames, anim.duration_ms), "image/gif", "misclassified glimpses")
        + f"<figcaption>The first {len(wrong)} of the {len(listed)} misclassified test "
        "images (test set indices " + ", ".join(str(i) for i in wrong) + "), with the glimpses that led to "
        "the wrong answer: where the attention fails.</figcaption></figure>"
    )
    sections.append(_img(viz.png_bytes(anim.strip), "image/png", "misclassified glimpse sequences"))
    return sections

"""Pictures: window rectangles, frames, strips, grids, files and the sample / animate commands.

``make_run`` builds a tiny run directory by hand (checkpoint + config.json + metrics.jsonl on the
synthetic data set) so these tests do not depend on the trainer; test_report.py uses it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drawnet import DRAW, DRAWConfig, viz
from drawnet.attention import Window, filterbank
from drawnet.checkpoint import CHECKPOINT_DIR, LAST, save_checkpoint
from drawnet.cli import main

RED = np.array(viz.RED, dtype=np.uint8)


def tiny_config(**kw) -> DRAWConfig:
    base = dict(image_shape=(1, 12, 16), T=5, enc_size=16, dec_size=16, z_size=3, read_n=2, write_n=3)
    base.update(kw)
    return DRAWConfig(**base)


def make_run(root: Path, *, config: DRAWConfig | None = None, eval_json: dict | None = None, seed: int = 0) -> Path:
    """A run directory as `drawnet train` lays it out (COLLAB.md), with an untrained tiny model."""
    torch.manual_seed(seed)
    config = config or tiny_config()
    model = DRAW(config)
    train = {"data": "synthetic", "data_options": {"image_shape": list(config.image_shape)}, "batch_size": 8}
    run = root / "run"
    save_checkpoint(run / CHECKPOINT_DIR / LAST, kind="draw", model=model, model_config=config.to_dict(),
                    train_config=train, trainer_state={"epoch": 2, "step": 20})
    (run / "config.json").write_text(json.dumps({"kind": "draw", "preset": "tiny", "model": config.to_dict(),
                                                 "train": train}))
    records = []
    for step in range(1, 21):
        records.append({"kind": "train", "epoch": (step - 1) // 10, "step": step, "time": 0.5 * step,
                        "loss": 150 - 2 * step, "L_x": 140 - 2 * step, "L_z": 10.0, "images_per_s": 100.0})
        if step % 10 == 0:
            records.append({"kind": "valid", "epoch": step // 10, "step": step, "time": 0.5 * step + 0.1,
                            "bound": 140 - step, "L_x": 130 - step, "L_z": 10.0,
                            "kl_per_step": [1.0 + t for t in range(config.T)]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if eval_json is not None:
        (run / "eval.json").write_text(json.dumps(eval_json))
    return run


def as_floats(window: Window) -> Window:
    """A window of shape (1,) as plain floats, through viz.window_at on fields of shape (T=1, B=1)."""
    return viz.window_at(Window(*(f[None] for f in window)), 0, 0)


def red_mask(image: np.ndarray) -> np.ndarray:
    return (image == RED).all(axis=-1)


def one_window(gx: float, gy: float, delta: float, sigma2: float = 0.25, gamma: float = 1.0) -> Window:
    return Window(*(torch.tensor([v]) for v in (gx, gy, sigma2, delta, gamma)))


# ------------------------------------------------------------------------------- rectangles
def test_window_box_is_the_outermost_filter_centres():
    # Independent check through the filterbank: with a tiny sigma each filter row peaks at its centre.
    n, W, H = 4, 30, 20
    gx, gy, delta = 12.5, 9.5, 3.0  # centres at 1-indexed 8, 11, 14, 17 (x) and 5, 8, 11, 14 (y)
    win = one_window(gx, gy, delta, sigma2=0.01)
    F_X, F_Y = filterbank(win.gx, win.gy, win.sigma2, win.delta, n, W, H)
    peaks_x = F_X[0].argmax(1).tolist()  # 0-indexed column of each filter's centre
    peaks_y = F_Y[0].argmax(1).tolist()
    x0, y0, x1, y1 = viz.window_box(as_floats(win), n)
    assert (x0, x1) == (peaks_x[0], peaks_x[-1]) == (7, 16)
    assert (y0, y1) == (peaks_y[0], peaks_y[-1]) == (4, 13)


def test_rectangle_lands_on_expected_pixels():
    # N = 4, delta = 2: centres g -/+ 3. gx = 10 -> 1-indexed columns 7..13 -> 0-indexed 6..12;
    # gy = 8 -> rows 5..11 -> 4..10. sigma = 0.5 gives a 1-pixel border.
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    out = viz.draw_window(image, as_floats(one_window(10, 8, 2)), 4, viz.RED)
    ys, xs = np.mgrid[0:20, 0:30]
    inside = (xs >= 6) & (xs <= 12) & (ys >= 4) & (ys <= 10)
    expected = inside & ((xs == 6) | (xs == 12) | (ys == 4) | (ys == 10))
    np.testing.assert_array_equal(red_mask(out), expected)
    assert not image.any(), "draw_window must not modify its input"


def test_rectangle_upscaled_with_origin():
    # scale 3: image column c occupies display columns 3c..3c+2, its centre 3c+1; origin shifts by (5, 7).
    image = np.zeros((60 + 14, 90 + 10, 3), dtype=np.uint8)
    out = viz.draw_window(image, as_floats(one_window(10, 8, 2)), 4, viz.RED, scale=3, origin=(5, 7))
    mask = red_mask(out)
    cols = np.nonzero(mask.any(0))[0]
    rows = np.nonzero(mask.any(1))[0]
    assert (cols.min(), cols.max()) == (5 + 3 * 6 + 1, 5 + 3 * 12 + 1)
    assert (rows.min(), rows.max()) == (7 + 3 * 4 + 1, 7 + 3 * 10 + 1)


def test_border_width_shows_sigma():
    widths = [viz.border_width(s, 4) for s in (0.1, 0.5, 1.0, 2.0, 4.0, 50.0)]
    assert widths == sorted(widths) and widths[0] == 1 and widths[-1] > widths[2]
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    thin = red_mask(viz.draw_window(image, as_floats(one_window(20, 20, 4, sigma2=0.25)), 4, viz.RED,
                                    scale=1)).sum()
    thick = red_mask(viz.draw_window(image, as_floats(one_window(20, 20, 4, sigma2=16.0)), 4, viz.RED,
                                     scale=1)).sum()
    assert thick > 1.5 * thin


def test_window_outside_the_image_is_clipped_not_an_error():
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    out = viz.draw_window(image, as_floats(one_window(-40, 50, 1)), 3, viz.RED)
    assert out.shape == image.shape and not red_mask(out).any()


# ----------------------------------------------------------------------------------- frames
@pytest.mark.parametrize(
    "config",
    [
        tiny_config(),
        tiny_config(image_shape=(3, 6, 10), read_n=3, write_n=2),  # colour, non-square
        tiny_config(read_n=None, write_n=None),  # no attention: no rectangle
    ],
    ids=["attention", "colour", "no-attention"],
)
def test_generation_frames_count_size_and_windows(config):
    torch.manual_seed(0)
    model = DRAW(config).eval()
    n, scale, ncol = 3, 2, 2
    anim = viz.generation_animation(model, n, seed=1, scale=scale, ncol=ncol)
    assert len(anim.frames) == config.T + anim.hold and anim.hold >= 1
    assert all(f.shape == anim.frames[0].shape and f.dtype == np.uint8 for f in anim.frames)
    C, H, W = config.image_shape
    m = viz.window_margin(H, W) if config.write_n else 0
    th, tw = (H + 2 * m) * scale, (W + 2 * m) * scale
    rows, gap, footer = 2, 2, 22
    assert anim.frames[0].shape == (rows * th + (rows + 1) * gap + footer, ncol * tw + (ncol + 1) * gap, 3)
    assert np.array_equal(anim.frames[-1], anim.frames[config.T - 1])  # hold frames repeat the end
    assert not np.array_equal(anim.frames[0], anim.frames[1])  # the footer counts steps
    body = np.stack(anim.frames)[:, :-footer]
    # Red appears in the picture part exactly when the model writes with attention (the untrained
    # window spans about the whole image, so its border lies on the image edge or in the margin).
    assert red_mask(body).any() == (config.write_n is not None)


def test_reconstruction_frames_show_read_and_data():
    torch.manual_seed(0)
    config = tiny_config()
    model = DRAW(config).eval()
    x = (torch.rand(2, *config.image_shape) > 0.5).float()
    anim = viz.reconstruction_animation(model, x, seed=0, scale=2, ncol=2)
    assert len(anim.frames) == config.T + anim.hold
    green = (anim.frames[0] == np.array(viz.GREEN, dtype=np.uint8)).all(-1)
    assert green.any() and red_mask(anim.frames[0][:-22]).any()
    # The strip: a header, 2 rows, T step columns + a data column.
    m = viz.window_margin(12, 16)
    th, tw = (12 + 2 * m), (16 + 2 * m)  # strip scale = max(1, scale // 2) = 1
    assert anim.strip.shape == (18 + 2 * th + 3 * 2, (config.T + 1) * tw + (config.T + 2) * 2, 3)


def test_strip_steps():
    assert viz.strip_steps(5) == [0, 1, 2, 3, 4]
    steps = viz.strip_steps(64, 16)
    assert len(steps) == 16 and steps[0] == 0 and steps[-1] == 63 and steps == sorted(set(steps))


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="C=2"):
        viz.to_rgb_uint8(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(T, B, C, H, W\)"):
        viz.animation_frames(torch.zeros(3, 1, 4, 4))


# ---------------------------------------------------------------------------- grids, samples
def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(50, 1, 5, 4, generator=g)
    queries = torch.cat([pool[[7, 33]] + 0.01, torch.rand(3, 1, 5, 4, generator=g)])
    index, dist = viz.nearest_neighbours(queries, pool, chunk=8)  # several chunks
    brute = torch.cdist(queries.flatten(1).double(), pool.flatten(1).double())
    assert index.tolist() == brute.argmin(1).tolist()
    assert index[:2].tolist() == [7, 33]
    torch.testing.assert_close(dist, brute.min(1).values)


def test_sample_grid_with_neighbours_layout():
    images = torch.rand(6, 3, 4, 5)
    grid = viz.sample_grid(images, ncol=3, scale=2)
    assert grid.shape == (2 * 8 + 3 * 2, 3 * 10 + 4 * 2, 3)
    pairs = viz.sample_grid(images, ncol=3, scale=2, neighbours=images.flip(0))
    pair_w, pair_h, gap = 2 * 10 + 3 * 1, 8 + 2 * 1, 4
    assert pairs.shape == (2 * pair_h + 3 * gap, 3 * pair_w + 4 * gap, 3)


def test_samples_are_deterministic_and_leave_the_global_rng_alone():
    model = DRAW(tiny_config()).eval()
    state = torch.get_rng_state()
    a = viz.sample_picture(model, 4, seed=5)
    b = viz.sample_picture(model, 4, seed=5)
    c = viz.sample_picture(model, 4, seed=6)
    assert torch.equal(state, torch.get_rng_state())
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------------------------ files
def test_gif_and_png_decode_with_expected_sizes(tmp_path):
    model = DRAW(tiny_config(image_shape=(3, 8, 14))).eval()
    anim = viz.generation_animation(model, 3, seed=0, scale=3)
    gif = viz.save_animation(tmp_path / "a.gif", anim.frames, anim.duration_ms)
    png = viz.save_png(tmp_path / "s.png", anim.strip)
    h, w, _ = anim.frames[0].shape
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.size == (w, h)
        # Pillow stores the identical hold frames as one longer last frame.
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
        assert im.n_frames == model.config.T
        assert sum(durations) == (model.config.T + anim.hold) * anim.duration_ms
        im.seek(0)
        first = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(first - anim.frames[0].astype(int)).mean() < 3  # palette quantisation only
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (anim.strip.shape[1], anim.strip.shape[0])


def test_unknown_or_unavailable_animation_format(tmp_path):
    frames = [np.zeros((4, 4, 3), dtype=np.uint8)] * 2
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        viz.save_animation(tmp_path / "a.avi", frames, 100)
    if not viz.mp4_backend_available():
        with pytest.raises(ValueError, match=r"ffmpeg.*\.gif"):
            viz.save_animation(tmp_path / "a.mp4", frames, 100)


@pytest.mark.skipif(not viz.mp4_backend_available(), reason="no ffmpeg backend for imageio (imageio[ffmpeg])")
def test_mp4_has_every_frame(tmp_path):
    import imageio.v3 as iio

    model = DRAW(tiny_config()).eval()
    anim = viz.generation_animation(model, 2, seed=0, scale=2)
    path = viz.save_animation(tmp_path / "a.mp4", anim.frames, anim.duration_ms)
    video = iio.imread(path)
    h, w, _ = anim.frames[0].shape
    assert video.shape == (len(anim.frames), h + (-h % 16), w + (-w % 16), 3)  # padded, never resized


def test_save_epoch_pictures(tmp_path):
    model = DRAW(tiny_config(image_shape=(1, 10, 7))).train()
    grid_path, strip_path = viz.save_epoch_pictures(model, tmp_path, 3)
    assert grid_path == tmp_path / "samples" / "epoch_003.png"
    assert strip_path == tmp_path / "samples" / "strip_epoch_003.png"
    scale = viz.auto_scale(10, 7, 64)
    with Image.open(grid_path) as im:
        assert im.size == (8 * 7 * scale + 9 * 2, 8 * 10 * scale + 9 * 2)
    with Image.open(strip_path) as im:
        assert im.size[1] > viz.EPOCH_STRIP_ROWS * 10
    first = grid_path.read_bytes()
    viz.save_epoch_pictures(model, tmp_path, 3)
    assert grid_path.read_bytes() == first  # the same noise every epoch


# ------------------------------------------------------------------------------- commands
def test_sample_command(tmp_path, capsys):
    run = make_run(tmp_path)
    out1, out2 = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["sample", str(run), "-n", "6", "--seed", "3", "--out", str(out1)]) == 0
    assert main(["sample", str(run / CHECKPOINT_DIR / LAST), "-n", "6", "--seed", "3", "--out", str(out2)]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    assert main(["sample", str(run), "-n", "4", "--nearest"]) == 0
    default = run / "samples" / "sample_seed0_nearest.png"
    assert capsys.readouterr().out.splitlines()[-1] == str(default)
    with Image.open(default) as im:
        assert im.size[0] > im.size[1]  # 2 pairs across, 1 row


def test_animate_command(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["animate", str(run), "-n", "2"]) == 0
    assert main(["animate", str(run), "-n", "2", "--reconstruct", "--out", str(tmp_path / "r.gif")]) == 0
    for path in (run / "samples" / "generation.gif", run / "samples" / "generation_strip.png",
                 tmp_path / "r.gif", tmp_path / "r_strip.png"):
        with Image.open(path) as im:
            assert im.size[0] > 0 and im.size[1] > 0
    capsys.readouterr()
    assert main(["animate", str(run), "--out", str(tmp_path / "x.webm")]) == 2
    assert ".gif or .mp4" in capsys.readouterr().err
    if not viz.mp4_backend_available():
        assert main(["animate", str(run), "--out", str(tmp_path / "x.mp4")]) == 2
        assert "use --out FILE.gif" in capsys.readouterr().err


def test_commands_name_a_missing_run(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- classifiers
def make_classifier_run(root: Path) -> Path:
    """A run directory of an (untrained) attention classifier on the labelled synthetic set."""
    from drawnet.classifier import AttentionClassifier
    from drawnet.config import ClassifierConfig

    torch.manual_seed(0)
    config = ClassifierConfig(image_shape=(1, 20, 24), glimpses=3, hidden_size=16, read_n=4, num_classes=3)
    train = {"data": "synthetic", "data_options": {"image_shape": [1, 20, 24]}}
    run = root / "crun"
    save_checkpoint(run / CHECKPOINT_DIR / LAST, kind="classifier", model=AttentionClassifier(config),
                    model_config=config.to_dict(), train_config=train)
    (run / "config.json").write_text(json.dumps({"kind": "classifier", "model": config.to_dict(), "train": train}))
    records = [{"kind": "train", "epoch": 0, "step": s, "time": s, "loss": 1.0 / s, "error": 0.5 / s} for s in (1, 2)]
    records.append({"kind": "valid", "epoch": 1, "step": 2, "time": 2.5, "loss": 0.6, "error": 0.25})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_glimpse_animation_of_a_classifier(tmp_path, capsys):
    run = make_classifier_run(tmp_path)
    assert main(["animate", str(run), "-n", "3", "--ncol", "3", "--scale", "2"]) == 0
    gif = run / "samples" / "glimpses.gif"
    assert capsys.readouterr().out.split() == [str(gif), str(run / "samples" / "glimpses_strip.png")]
    m = viz.window_margin(20, 24)
    tw, th = (24 + 2 * m) * 2, (20 + 2 * m) * 2 + 18  # tile + caption row
    with Image.open(gif) as im:
        assert im.size == (3 * tw + 4 * 2, th + 2 * 2 + 22)
        assert im.n_frames == 3  # one per glimpse; the hold frames merge into the last
        im.seek(0)
        first = np.asarray(im.convert("RGB"))
    green = (first == np.array(viz.GREEN, dtype=np.uint8)).all(-1)
    assert green.any()

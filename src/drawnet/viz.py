"""Pictures of DRAW at work: sample grids, step-by-step animations with the attention window,
sequence strips (paper Figs 1, 6, 7, 9, 12) and the report's plots. The only module that draws.

Conventions:

* Images come in as tensors (N, C, H, W) with values in [0, 1] (the mean sigma(c_t), as the paper
  shows); C is 1 (grey) or 3 (RGB). Pictures go out as uint8 numpy arrays (height, width, 3), RGB.
* An attention window is a :class:`drawnet.attention.Window` in 1-indexed pixel units. Its
  rectangle spans the outermost filter centres mu^1 .. mu^N of eqs (19)-(20); the border width
  grows with the filter's standard deviation sigma (the paper's Fig. 1: "the focal precision
  indicated by the width of the rectangle border").
* Tiles are upscaled by an integer factor (nearest neighbour) so a 28x28 digit is watchable.
* A class-conditional model (``DRAWConfig.conditional``) draws the classes it is given; the
  functions that generate take ``labels`` ((n,) class indices), and without them draw the classes
  in turn (:func:`default_labels`). :func:`class_picture` is the grid with one row per class.

Encoding is done by Pillow (PNG, GIF), imageio (MP4, when an ffmpeg backend is installed) and
matplotlib (plots, with the Agg canvas and no pyplot global state).
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .attention import Window
from .checkpoint import atomic_write

RED = (235, 30, 30)  # write window (the paper's colour)
GREEN = (40, 215, 70)  # read window
GAP_COLOUR = (110, 110, 110)  # the lines between tiles: mid grey, visible on black and on white
MARGIN_COLOUR = (38, 44, 64)  # backdrop around a tile where windows may reach past the image edge
FOOTER_COLOUR = (24, 24, 24)
TEXT_COLOUR = (235, 235, 235)
PROGRESS_COLOUR = (235, 30, 30)
DEFAULT_STRIP_STEPS = 16  # at most this many step columns in a sequence strip
EPOCH_SAMPLES = 64  # images in the per-epoch sample grid
EPOCH_STRIP_ROWS = 8  # sequences in the per-epoch strip
EPOCH_SEED = 1234  # the same latent noise every epoch, so the grids of successive epochs compare
EPOCH_PER_CLASS = 8  # conditional models: samples per class (row) in the per-epoch grid
MAX_CLASS_ROWS = 20  # conditional models: at most this many classes (rows) in the per-epoch grid and the report

# Memory bounds for any number of images asked for: generation runs GENERATE_BATCH images at a time
# (it keeps every step's canvas, T x batch x pixels floats), a picture holds at most
# SAMPLES_PER_PICTURE samples (a 32 x 32 grid; `drawnet sample` writes more as further files), an
# animation at most MAX_ANIMATED images side by side (each of its frames is a grid of them).
GENERATE_BATCH = 256
SAMPLES_PER_PICTURE = 1024
MAX_ANIMATED = 64


class Overlay(NamedTuple):
    """Attention windows to draw over a sequence of tiles."""

    windows: Window  # each field (T, B): step t, image b
    n: int  # grid size N of this attention
    color: tuple[int, int, int]


# ---------------------------------------------------------------------------------------- basics
def auto_scale(height: int, width: int, target: int = 96) -> int:
    """Integer upscaling that makes the longer side about ``target`` pixels (at least 1)."""
    return max(1, round(target / max(height, width)))


def to_rgb_uint8(images: Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1], C in {1, 3} -> (N, H, W, 3) uint8."""
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    C = images.shape[1]
    if C not in (1, 3):
        raise ValueError(f"can only draw grey (C=1) or RGB (C=3) images, got C={C}")
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    arr = arr.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    return np.repeat(arr, 3, axis=3) if C == 1 else np.ascontiguousarray(arr)


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., h, w, 3) by an integer factor."""
    if scale == 1:
        return image
    return image.repeat(scale, axis=-3).repeat(scale, axis=-2)


def tile(
    tiles: np.ndarray | Sequence[np.ndarray], ncol: int, gap: int = 2, gap_colour: tuple[int, int, int] = GAP_COLOUR
) -> np.ndarray:
    """Lay out equally sized (h, w, 3) tiles row by row, ``ncol`` per row, ``gap`` pixels apart."""
    tiles = list(tiles)
    if not tiles:
        raise ValueError("nothing to tile")
    h, w, _ = tiles[0].shape
    ncol = max(1, min(ncol, len(tiles)))
    nrow = math.ceil(len(tiles) / ncol)
    out = np.empty((nrow * h + (nrow + 1) * gap, ncol * w + (ncol + 1) * gap, 3), dtype=np.uint8)
    out[:] = gap_colour
    for k, t in enumerate(tiles):
        r, c = divmod(k, ncol)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        out[y : y + h, x : x + w] = t
    return out


# ---------------------------------------------------------------------------- attention windows
def window_at(windows: Window, t: int, b: int) -> Window:
    """The window of step ``t`` and image ``b`` as plain floats (from fields of shape (T, B))."""
    return Window(*(float(field[t, b]) for field in windows))


def window_box(window: Window, n: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1): the outermost filter centres, in 0-indexed image coordinates.

    Eqs (19)-(20): mu^i = g + (i - N/2 - 0.5) * delta, so mu^1 = g - (N/2 - 0.5) * delta and
    mu^N = g + (N/2 - 0.5) * delta. These are 1-indexed pixel positions (column a sits at a);
    subtracting 1 gives the 0-indexed coordinate where pixel column a is drawn at x = a - 1.
    """
    half = (n / 2 - 0.5) * float(window.delta)
    gx, gy = float(window.gx) - 1, float(window.gy) - 1
    return gx - half, gy - half, gx + half, gy + half


def border_width(sigma: float, scale: int) -> int:
    """Border width in display pixels for filter standard deviation ``sigma`` (image pixels).

    Half of sigma on screen, at least 1 pixel, at most 2.5 image pixels so a blurry window does
    not hide the canvas.
    """
    return int(min(max(1, round(0.5 * sigma * scale)), max(1, round(2.5 * scale))))


def draw_window(
    image: np.ndarray,
    window: Window,
    n: int,
    color: tuple[int, int, int],
    *,
    scale: int = 1,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Return a copy of ``image`` with the window's rectangle drawn on it.

    ``image`` holds the picture upscaled by ``scale`` with its top-left pixel block at display
    position ``origin`` = (x, y) (non-zero when the picture sits inside a margin). The rectangle's
    corners are the outermost filter centres (:func:`window_box`); an image coordinate x maps to the
    centre of its upscaled pixel block, origin + round((x + 0.5) * scale - 0.5). The border (width
    from :func:`border_width`) is centred on that line; what falls outside ``image`` is clipped.
    """
    x0, y0, x1, y1 = window_box(window, n)
    X0, X1 = (origin[0] + round((v + 0.5) * scale - 0.5) for v in (x0, x1))
    Y0, Y1 = (origin[1] + round((v + 0.5) * scale - 0.5) for v in (y0, y1))
    w = border_width(math.sqrt(max(float(window.sigma2), 0.0)), scale)
    inner = (w - 1) // 2  # the border covers [line - outer, line + inner] across each edge
    outer = w - 1 - inner
    pic = Image.fromarray(image)
    ImageDraw.Draw(pic).rectangle((X0 - outer, Y0 - outer, X1 + outer, Y1 + outer), outline=color, width=w)
    return np.asarray(pic).copy()


def window_margin(height: int, width: int) -> int:
    """Margin (image pixels) around a tile so windows reaching past the image edge stay visible."""
    return max(2, round(0.12 * max(height, width)))


def draw_tiles(
    images: Tensor, overlays: Sequence[Overlay], t: int, scale: int, margin: int = 0
) -> list[np.ndarray]:
    """Upscaled tiles of ``images`` (B, C, H, W) with every overlay's step-``t`` window drawn on.

    With ``margin`` > 0 (image pixels) each picture sits on a dark backdrop that much wider on
    every side, where windows extending past the image edge are drawn too.
    """
    pictures = upscale(to_rgb_uint8(images), scale)  # (B, H*scale, W*scale, 3)
    m = margin * scale
    if m:
        B, h, w, _ = pictures.shape
        padded = np.empty((B, h + 2 * m, w + 2 * m, 3), dtype=np.uint8)
        padded[:] = MARGIN_COLOUR
        padded[:, m : m + h, m : m + w] = pictures
        pictures = padded
    tiles = list(pictures)
    for b in range(len(tiles)):
        for ov in overlays:
            tiles[b] = draw_window(tiles[b], window_at(ov.windows, t, b), ov.n, ov.color, scale=scale, origin=(m, m))
    return tiles


# --------------------------------------------------------------------------------- sample grids
def nearest_neighbours(queries: Tensor, pool: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Index into ``pool`` of the nearest (L2) image to each query, and the distance.

    ``queries``: (n, C, H, W); ``pool``: (N, C, H, W). ||q - p||^2 = |q|^2 - 2 q.p + |p|^2 with one
    matrix product per chunk of the pool, so memory stays O(n * chunk).
    """
    if queries.shape[1:] != pool.shape[1:]:
        raise ValueError(
            f"samples of shape {tuple(queries.shape[1:])} cannot be compared with training images of "
            f"shape {tuple(pool.shape[1:])}; the run's dataset does not match its model"
        )
    q = queries.reshape(queries.shape[0], -1).double()  # (n, D)
    q2 = (q * q).sum(1, keepdim=True)  # (n, 1)
    best_d = torch.full((q.shape[0],), float("inf"), dtype=torch.float64)
    best_i = torch.zeros(q.shape[0], dtype=torch.long)
    for start in range(0, pool.shape[0], chunk):
        p = pool[start : start + chunk].reshape(-1, q.shape[1]).to(q.device, torch.float64)  # (chunk, D)
        d = (q2 - 2 * q @ p.T + (p * p).sum(1)[None]).clamp_min(0)  # (n, chunk)
        d_min, i_min = d.min(1)
        better = d_min < best_d
        best_d = torch.where(better, d_min, best_d)
        best_i = torch.where(better, i_min + start, best_i)
    return best_i, best_d.sqrt()


def sample_grid(
    images: Tensor, *, ncol: int | None = None, scale: int = 1, neighbours: Tensor | None = None
) -> np.ndarray:
    """A grid of images (N, C, H, W); with ``neighbours`` (N, C, H, W), each image is followed by
    its nearest training image, the pair set apart by a wider gap (as in the paper's Figs 6, 9, 12,
    where a column of nearest training images shows the samples are not copies).
    """
    tiles = upscale(to_rgb_uint8(images), scale)
    N = tiles.shape[0]
    if neighbours is None:
        return tile(tiles, ncol or math.ceil(math.sqrt(N)))
    if neighbours.shape != images.shape:
        raise ValueError(f"neighbours {tuple(neighbours.shape)} must match images {tuple(images.shape)}")
    near = upscale(to_rgb_uint8(neighbours), scale)
    pairs = [tile([s, m], 2, gap=1) for s, m in zip(tiles, near, strict=True)]  # sample | neighbour
    return tile(pairs, ncol or math.ceil(math.sqrt(N / 2)), gap=max(4, scale * 2))


def class_grid(images: Tensor, row_labels: Sequence[str], *, scale: int = 1) -> np.ndarray:
    """One row per class: ``images`` (K, M, C, H, W), row k the M samples of class k, each row
    headed on the left by its label ``row_labels[k]``."""
    if images.dim() != 5 or len(row_labels) != images.shape[0]:
        raise ValueError(f"class_grid needs (K, M, C, H, W) images and K row labels, got {tuple(images.shape)} and "
                         f"{len(row_labels)} labels")
    K, M = images.shape[:2]
    gap = 2
    body = tile(upscale(to_rgb_uint8(images.flatten(0, 1)), scale), M, gap=gap)
    h = images.shape[-2] * scale
    font = _font(12)
    width = max(24, 10 + max(round(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font))
                             for t in row_labels))
    pic = Image.new("RGB", (width, body.shape[0]), (255, 255, 255))
    draw = ImageDraw.Draw(pic)
    for k, text in enumerate(row_labels):
        draw.text((width - 5, gap + k * (h + gap) + h / 2), text, fill=(0, 0, 0), font=font, anchor="rm")
    return np.concatenate([np.asarray(pic), body], axis=1)


# --------------------------------------------------------------------------- animations, strips
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _footer(width: int, t: int, T: int, label: str) -> np.ndarray:
    """A strip under a frame: a progress bar and 'step t / T' (makes every step's frame distinct)."""
    height = 22
    pic = Image.new("RGB", (width, height), FOOTER_COLOUR)
    draw = ImageDraw.Draw(pic)
    draw.rectangle((0, 0, max(0, round(width * t / T) - 1), 2), fill=PROGRESS_COLOUR)
    draw.text((6, 5), f"{label}{t}/{T}", fill=TEXT_COLOUR, font=_font(13))
    return np.asarray(pic)


def _caption(width: int, text: str, colour: tuple[int, int, int]) -> np.ndarray:
    pic = Image.new("RGB", (width, 18), FOOTER_COLOUR)
    ImageDraw.Draw(pic).text((width / 2, 9), text, fill=colour, font=_font(12), anchor="mm")
    return np.asarray(pic)


def animation_frames(
    canvases: Tensor,
    overlays: Sequence[Overlay] = (),
    *,
    scale: int = 4,
    ncol: int = 8,
    hold: int = 0,
    references: Tensor | None = None,
    reference_overlays: Sequence[Overlay] = (),
    label: str = "",
    margin: int | None = None,
    captions: Sequence[tuple[str, tuple[int, int, int]]] | None = None,
) -> list[np.ndarray]:
    """One frame per step: the canvases of every image side by side (``ncol`` per row).

    ``canvases``: (T, B, C, H, W) in [0, 1]; ``overlays``: windows drawn on the canvases;
    ``references`` (B, C, H, W), e.g. the images being reconstructed, are shown under each canvas
    with ``reference_overlays`` drawn on them (the read window, say). The last frame is repeated
    ``hold`` more times so a looping animation rests on the finished drawing. ``margin`` (image
    pixels, default :func:`window_margin` when there are overlays, else 0) surrounds each picture.
    ``captions`` (one (text, colour) per image, e.g. a classifier's prediction) appear under the
    tiles from the last step on. Returns T + hold frames of equal size (height, width, 3) uint8.
    """
    if canvases.dim() != 5:
        raise ValueError(f"canvases must be (T, B, C, H, W), got {tuple(canvases.shape)}")
    T, B = canvases.shape[:2]
    if references is not None and references.shape != canvases.shape[1:]:
        raise ValueError(f"references {tuple(references.shape)} must be (B, C, H, W) = {tuple(canvases.shape[1:])}")
    if captions is not None and len(captions) != B:
        raise ValueError(f"{len(captions)} captions for {B} images")
    if margin is None:
        margin = window_margin(*canvases.shape[-2:]) if (overlays or reference_overlays) else 0
    frames = []
    for t in range(T):
        tiles = draw_tiles(canvases[t], overlays, t, scale, margin)
        if references is not None:
            below = draw_tiles(references, reference_overlays, t, scale, margin)
            tiles = [tile([a, b], 1, gap=1) for a, b in zip(tiles, below, strict=True)]
        if captions is not None:
            shown = captions if t == T - 1 else [("", TEXT_COLOUR)] * B
            tiles = [np.concatenate([a, _caption(a.shape[1], *c)], axis=0) for a, c in zip(tiles, shown, strict=True)]
        grid = tile(tiles, ncol)
        frames.append(np.concatenate([grid, _footer(grid.shape[1], t + 1, T, label)], axis=0))
    frames.extend([frames[-1]] * hold)
    return frames


def strip_steps(T: int, max_steps: int = DEFAULT_STRIP_STEPS) -> list[int]:
    """Evenly spaced step indices (0-based) from the first to the last, at most ``max_steps``."""
    if T <= max_steps:
        return list(range(T))
    return sorted({round(v) for v in np.linspace(0, T - 1, max_steps)})


def _label_row(labels: Sequence[str], tile_width: int, gap: int, height: int = 18) -> np.ndarray:
    width = len(labels) * tile_width + (len(labels) + 1) * gap
    pic = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(pic)
    font = _font(12)
    for k, text in enumerate(labels):
        x = gap + k * (tile_width + gap) + tile_width / 2
        draw.text((x, height / 2), text, fill=(0, 0, 0), font=font, anchor="mm")
    return np.asarray(pic)


def sequence_strip(
    canvases: Tensor,
    overlays: Sequence[Overlay] = (),
    *,
    scale: int = 2,
    steps: Sequence[int] | None = None,
    references: Tensor | None = None,
    margin: int | None = None,
) -> np.ndarray:
    """Rows = images, columns = steps (like the paper's Figs 1 and 7), with a header of step numbers.

    ``canvases``: (T, B, C, H, W); ``steps``: 0-based step indices (default :func:`strip_steps`);
    ``references`` (B, C, H, W), if given, form a last column headed "data"; ``margin`` as in
    :func:`animation_frames`.
    """
    if canvases.dim() != 5:
        raise ValueError(f"canvases must be (T, B, C, H, W), got {tuple(canvases.shape)}")
    T, B = canvases.shape[:2]
    steps = list(strip_steps(T) if steps is None else steps)
    if margin is None:
        margin = window_margin(*canvases.shape[-2:]) if overlays else 0
    columns = [draw_tiles(canvases[t], overlays, t, scale, margin) for t in steps]  # [step][image]
    labels = [f"t={t + 1}" for t in steps]
    if references is not None:
        columns.append(draw_tiles(references, (), 0, scale, margin))
        labels.append("data")
    gap = 2
    body = tile([columns[c][b] for b in range(B) for c in range(len(columns))], len(columns), gap=gap)
    return np.concatenate([_label_row(labels, columns[0][0].shape[1], gap), body], axis=0)


# ------------------------------------------------------------------------------------- encoding
def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def frame_duration_ms(T: int) -> int:
    """About four seconds for the whole drawing, each frame shown 60 to 400 ms."""
    return int(min(400, max(60, round(4000 / T))))


def hold_frames(T: int, seconds: float = 1.5) -> int:
    """How many copies of the last frame make it rest ``seconds`` at the end of a loop."""
    return max(1, round(seconds * 1000 / frame_duration_ms(T)))


def gif_bytes(frames: Sequence[np.ndarray], duration_ms: int) -> bytes:
    """An endlessly looping GIF. Pillow merges identical consecutive frames (the hold frames) into
    one longer frame; the timing is unchanged."""
    pics = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


def mp4_backend_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("imageio_ffmpeg", "av"))


def save_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
    return path


def save_animation(path: str | Path, frames: Sequence[np.ndarray], duration_ms: int) -> Path:
    """Write ``frames`` as a GIF (Pillow) or an MP4 (imageio, needs an ffmpeg backend)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        data = gif_bytes(frames, duration_ms)
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    elif suffix == ".mp4":
        if not mp4_backend_available():
            raise ValueError(
                f"cannot write {path}: MP4 needs an ffmpeg backend for imageio (pip install "
                f"'imageio[ffmpeg]'), which is not installed; write a .gif instead"
            )
        import imageio.v3 as iio

        # Video codecs want sizes divisible by 16: pad (never resize) with the gap colour.
        h, w, _ = frames[0].shape
        ph, pw = -h % 16, -w % 16
        video = np.stack([np.pad(f, ((0, ph), (0, pw), (0, 0)), constant_values=GAP_COLOUR[0]) for f in frames])
        data = iio.imwrite("<bytes>", video, extension=".mp4", fps=1000 / duration_ms)
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    else:
        raise ValueError(f"unknown animation format {path.suffix!r} for {path}; use .gif or .mp4")
    return path


# ---------------------------------------------------------------------- DRAW model -> pictures
def unwrap(model: Any) -> Any:
    """The DRAW module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def seeded_generator(model: torch.nn.Module, seed: int) -> torch.Generator:
    """A generator on the model's device: sampling never touches the global RNG."""
    return torch.Generator(device=model_device(model)).manual_seed(seed)


def _cpu(windows: Window) -> Window:
    return Window(*(f.detach().cpu() for f in windows))


def generation_overlays(model: Any, gen: Any) -> list[Overlay]:
    """The red write window for a :class:`drawnet.Generation`, if the model writes with attention."""
    if gen.write_windows is None:
        return []
    return [Overlay(_cpu(gen.write_windows), model.config.write_n, RED)]


def reconstruction_overlays(model: Any, out: Any) -> tuple[list[Overlay], list[Overlay]]:
    """(canvas overlays, data overlays) for a :class:`drawnet.DRAWOutput` made with keep_steps:
    read window green and write window red on the canvas; the read window also on the data."""
    on_canvas: list[Overlay] = []
    on_data: list[Overlay] = []
    if out.read_windows is not None:
        read = Overlay(_cpu(out.read_windows), model.config.read_n, GREEN)
        on_canvas.append(read)
        on_data.append(read)
    if out.write_windows is not None:
        on_canvas.append(Overlay(_cpu(out.write_windows), model.config.write_n, RED))
    return on_canvas, on_data


def save_epoch_pictures(
    model: torch.nn.Module, run_dir: str | Path, epoch: int, engine: Any = None
) -> tuple[Path, Path]:
    """Write RUN/samples/epoch_{epoch:03d}.png (a grid of 64 samples) and strip_epoch_{epoch:03d}.png
    (8 generation sequences, step by step, with the write window). The latent noise is the same
    every epoch (a fixed seed on a private generator; the global RNG is untouched), so successive
    grids show the same samples improving. A conditional model's grid has one row per class (the
    first :data:`MAX_CLASS_ROWS`), its strip draws the classes in turn. Returns the two paths.
    """
    draw = unwrap(model)
    if not hasattr(draw, "generate"):
        raise ValueError(f"save_epoch_pictures draws DRAW samples; {type(draw).__name__} does not generate images")
    samples_dir = Path(run_dir) / "samples"
    gen = generated_images(draw, EPOCH_SAMPLES, EPOCH_SEED, engine)
    _, H, W = draw.config.image_shape
    if draw.config.conditional:
        classes = range(min(draw.config.num_classes, MAX_CLASS_ROWS))
        grid = class_picture(draw, EPOCH_PER_CLASS, EPOCH_SEED, classes=classes, engine=engine)
    else:
        grid = sample_grid(gen.canvases[-1].cpu(), scale=auto_scale(H, W, 64))
    rows = min(EPOCH_STRIP_ROWS, EPOCH_SAMPLES)
    overlays = [
        Overlay(Window(*(f[:, :rows] for f in ov.windows)), ov.n, ov.color) for ov in generation_overlays(draw, gen)
    ]
    strip = sequence_strip(gen.canvases[:, :rows].cpu(), overlays, scale=auto_scale(H, W, 56))
    grid_path = save_png(samples_dir / f"epoch_{epoch:03d}.png", grid)
    strip_path = save_png(samples_dir / f"strip_epoch_{epoch:03d}.png", strip)
    return grid_path, strip_path


# -------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # the Agg canvas; no pyplot, no global backend state

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _robust_top(values: Sequence[float]) -> float | None:
    """An upper y limit that keeps the first, very high values from flattening the rest."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size < 5:
        return None
    lo, q = float(v.min()), float(np.quantile(v, 0.9))
    return q + 0.15 * (q - lo) if q > lo else None


def plot_learning_curves(
    train: Sequence[dict], valid: Sequence[dict], *, train_key: str, valid_key: str, ylabel: str,
    reference: tuple[float, str] | None = None,
) -> bytes:
    """Two panels, training and validation values against steps and against wall-clock time (PNG).

    ``train``/``valid``: metrics records with "step", "time" and the keys; ``reference`` =
    (value, label), e.g. the paper's result, drawn as a dashed line.
    """
    fig = _figure(10, 3.6)
    axes = fig.subplots(1, 2, sharey=True)
    every = [r[train_key] for r in train if train_key in r] + [r[valid_key] for r in valid if valid_key in r]
    for ax, xkey, xlabel, xscale in (
        (axes[0], "step", "training step", 1.0),
        (axes[1], "time", "wall-clock time (minutes)", 1 / 60),
    ):
        for records, key, name, style in ((train, train_key, "train", dict(color="tab:blue", lw=1, alpha=0.8)),
                                          (valid, valid_key, "validation", dict(color="tab:orange", lw=2, marker="o",
                                                                                ms=3))):
            pts = [(r[xkey] * xscale, r[key]) for r in records if key in r and xkey in r and r[key] is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=name, **style)
        if reference is not None:
            ax.axhline(reference[0], color="0.3", ls="--", lw=1, label=reference[1])
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    top = _robust_top(every)
    if top is not None:
        bottom = min([v for v in every if v is not None] + ([reference[0]] if reference else []))
        axes[0].set_ylim(bottom - 0.05 * (top - bottom), top)
    axes[0].legend(loc="upper right", fontsize=8)
    return figure_png(fig)


def plot_kl_per_step(kl: Sequence[float], title: str) -> bytes:
    """Bar chart of the KL term of each step, nats (PNG): where in the sequence the information goes."""
    fig = _figure(10, 3.0)
    ax = fig.subplots()
    ax.bar(np.arange(1, len(kl) + 1), kl, color="tab:red", width=0.8)
    ax.set_xlabel("step t")
    ax.set_ylabel("KL term, nats")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0.3, len(kl) + 0.7)
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


# ------------------------------------------------------------------ whole pictures from a model
class Animation(NamedTuple):
    """Frames of an animation, its still sequence strip, and the frame duration."""

    frames: list[np.ndarray]  # T + hold frames, (height, width, 3) uint8
    strip: np.ndarray  # (height, width, 3) uint8
    duration_ms: int
    hold: int  # how many of the frames repeat the last step


def default_labels(model: Any, n: int) -> Tensor | None:
    """The labels a conditional model draws when none are asked for: the classes in turn (image i
    of class i mod K); None for an unconditional model."""
    if not model.config.conditional:
        return None
    return torch.arange(n, device=model_device(model)) % model.config.num_classes


def class_names(model: Any, names: Sequence[str] | None = None) -> list[str]:
    """The label of each class of a conditional model: ``names`` (the data set's) when they fit, else
    the class indices."""
    K = model.config.num_classes
    return list(names) if names is not None and len(names) == K else [str(k) for k in range(K)]


def generated_images(model: Any, n: int, seed: int, engine: Any = None, labels: Tensor | None = None) -> Any:
    """A :class:`drawnet.Generation` of ``n`` images, deterministic for ``seed``, made by ``engine``
    (default: :func:`drawnet.engine.choose` for the model, float32). A conditional model draws the
    classes ``labels`` (n,), by default :func:`default_labels`."""
    from .engine import choose

    engine = engine or choose(model)
    if labels is None:
        labels = default_labels(model, n)
    elif not model.config.conditional:
        raise ValueError("this model is unconditional (trained without labels): it cannot draw a chosen class")
    return engine.generate(model, n, seeded_generator(model, seed), labels=labels)


def class_samples(
    model: Any, per_class: int, seed: int, *, classes: Sequence[int] | None = None, engine: Any = None
) -> Tensor:
    """Mean images sigma(c_T) of ``per_class`` samples of each class (default: all), (K, M, C, H, W).

    Every class is drawn with the same latent noise (the generator seeded with ``seed``), so column
    j shows one latent code drawn as each class: what the label changes, and what z keeps.
    """
    if not model.config.conditional:
        raise ValueError("this model is unconditional (trained without labels): it has no classes to draw")
    if per_class <= 0:
        raise ValueError(f"samples per class must be positive, got {per_class}")
    classes = list(range(model.config.num_classes)) if classes is None else list(classes)
    rows = []
    for k in classes:
        labels = torch.full((per_class,), k, dtype=torch.long, device=model_device(model))
        rows.append(generated_images(model, per_class, seed, engine, labels).canvases[-1].cpu())
    return torch.stack(rows)


def class_picture(
    model: Any, per_class: int, seed: int, *, scale: int | None = None, names: Sequence[str] | None = None,
    classes: Sequence[int] | None = None, engine: Any = None,
) -> np.ndarray:
    """The grid of :func:`class_samples`, one row per class, each row headed by its class name
    (``names``, the data set's, else the index)."""
    classes = list(range(model.config.num_classes)) if classes is None else list(classes)
    images = class_samples(model, per_class, seed, classes=classes, engine=engine)
    _, H, W = model.config.image_shape
    labels = class_names(model, names)
    return class_grid(images, [labels[k] for k in classes], scale=scale or auto_scale(H, W, 64))


def generated_samples(
    model: Any, n: int, seed: int, batch: int = GENERATE_BATCH, labels: Tensor | None = None
) -> Tensor:
    """The final mean images sigma(c_T) (n, C, H, W) of ``n`` generated images, made ``batch`` at a
    time from one generator seeded with ``seed`` (so memory does not grow with n beyond the
    results; for n <= batch the same images as :func:`generated_images`). A conditional model
    draws the classes ``labels`` (n,), by default :func:`default_labels`."""
    from .engine import choose

    engine, generator = choose(model), seeded_generator(model, seed)
    if labels is None:
        labels = default_labels(model, n)
    elif not model.config.conditional:
        raise ValueError("this model is unconditional (trained without labels): it cannot draw a chosen class")
    parts = []
    for start in range(0, n, batch):
        part = None if labels is None else labels[start : start + batch]
        parts.append(engine.generate(model, min(batch, n - start), generator, labels=part).canvases[-1].cpu())
    return torch.cat(parts)


def sample_picture(
    model: Any, n: int, seed: int, *, scale: int | None = None, pool: Tensor | None = None,
    labels: Tensor | None = None,
) -> np.ndarray:
    """Grid of ``n`` generated mean images sigma(c_T); with ``pool`` (training images), each sample
    is paired with its nearest (L2) training image. A conditional model draws the classes
    ``labels`` (n,) (default: :func:`default_labels`). At most SAMPLES_PER_PICTURE images (see
    :func:`sample_pictures` for more)."""
    if not 0 < n <= SAMPLES_PER_PICTURE:
        raise ValueError(f"a sample picture holds 1 to {SAMPLES_PER_PICTURE} images, got {n}")
    images = generated_samples(model, n, seed, labels=labels)  # (n, C, H, W)
    _, H, W = model.config.image_shape
    scale = scale or auto_scale(H, W, 64)
    neighbours = None
    if pool is not None:
        index, _ = nearest_neighbours(images, pool)
        neighbours = pool[index]
    return sample_grid(images, scale=scale, neighbours=neighbours)


def sample_pictures(
    model: Any, n: int, seed: int, *, scale: int | None = None, pool: Tensor | None = None,
    labels: Tensor | None = None,
) -> Iterator[np.ndarray]:
    """The grids of ``n`` samples, SAMPLES_PER_PICTURE to a grid, made one at a time (so memory is
    bounded for any ``n``). The first uses ``seed`` (the grid :func:`sample_picture` makes), the
    k-th a seed derived from (seed, k). A conditional model draws the classes ``labels`` (n,)."""
    from .data import derive_seed

    for k, start in enumerate(range(0, n, SAMPLES_PER_PICTURE)):
        count = min(SAMPLES_PER_PICTURE, n - start)
        part = None if labels is None else labels[start : start + count]
        yield sample_picture(model, count, seed if k == 0 else derive_seed(seed, k), scale=scale, pool=pool,
                             labels=part)


def check_animated(n: int) -> None:
    if not 0 < n <= MAX_ANIMATED:
        raise ValueError(f"an animation shows 1 to {MAX_ANIMATED} images side by side, got {n}")


def _class_captions(model: Any, labels: Tensor | None, names: Sequence[str] | None):
    if labels is None:
        return None
    text = class_names(model, names)
    return [(f"class {text[k]}", TEXT_COLOUR) for k in labels.tolist()]


def generation_animation(
    model: Any, n: int, seed: int, *, scale: int | None = None, ncol: int = 8, labels: Tensor | None = None,
    names: Sequence[str] | None = None,
) -> Animation:
    """Frames of ``n`` images being generated side by side, write window in red. A conditional model
    draws the classes ``labels`` (n,) (default: :func:`default_labels`), named under the last frame."""
    check_animated(n)
    if labels is None:
        labels = default_labels(model, n)
    gen = generated_images(model, n, seed, labels=labels)
    T = gen.canvases.shape[0]
    _, H, W = model.config.image_shape
    scale = scale or auto_scale(H, W, 112)
    overlays = generation_overlays(model, gen)
    duration, hold = frame_duration_ms(T), hold_frames(T)
    frames = animation_frames(
        gen.canvases.cpu(), overlays, scale=scale, ncol=ncol, hold=hold, label="generating · step ",
        captions=_class_captions(model, labels, names),
    )
    strip = sequence_strip(gen.canvases.cpu(), overlays, scale=max(1, scale // 2))
    return Animation(frames, strip, duration, hold)


@torch.no_grad()
def reconstruction_animation(
    model: Any, images: Tensor, seed: int, *, scale: int | None = None, ncol: int = 8, labels: Tensor | None = None
) -> Animation:
    """Frames of ``images`` (B, C, H, W) being reconstructed: the canvas with the read window
    (green) and the write window (red), and beneath it the data with the read window. A conditional
    model needs the images' ``labels`` (B,)."""
    device = model_device(model)
    labels = None if labels is None else labels.to(device)
    out = model(images.to(device), keep_steps=True, generator=seeded_generator(model, seed), labels=labels)
    T = out.canvases.shape[0]
    _, H, W = model.config.image_shape
    scale = scale or auto_scale(H, W, 112)
    on_canvas, on_data = reconstruction_overlays(model, out)
    duration, hold = frame_duration_ms(T), hold_frames(T)
    canvases, data = out.canvases.cpu(), images.cpu()
    frames = animation_frames(
        canvases, on_canvas, scale=scale, ncol=ncol, hold=hold, references=data, reference_overlays=on_data,
        label="reconstructing · step ",
    )
    strip = sequence_strip(canvases, on_canvas, scale=max(1, scale // 2), references=data)
    return Animation(frames, strip, duration, hold)


@torch.no_grad()
def glimpse_animation(
    model: Any, images: Tensor, labels: Tensor | None = None, *, scale: int | None = None, ncol: int = 8
) -> Animation:
    """Frames of an attention classifier (:class:`drawnet.classifier.AttentionClassifier`) taking its
    glimpses of ``images`` (B, C, H, W): the read window in green (as in the paper's Fig. 5), and
    after the last glimpse the prediction under each image (green if it matches ``labels``, red if not).
    """
    seq = model.glimpse_sequence(images.to(model_device(model)))
    T = seq.windows.gx.shape[0]
    _, H, W = model.config.image_shape
    scale = scale or auto_scale(H, W, 112)
    overlays = [Overlay(_cpu(seq.windows), model.config.read_n, GREEN)]
    still = images.cpu()[None].expand(T, *images.shape)  # (T, B, C, H, W): the image does not change
    predicted = seq.predicted.cpu().tolist()
    if labels is None:
        captions = [(f"predicted {p}", TEXT_COLOUR) for p in predicted]
    else:
        captions = [
            (f"predicted {p} (true {y})", GREEN if p == y else RED)
            for p, y in zip(predicted, labels.tolist(), strict=True)
        ]
    duration, hold = frame_duration_ms(T), hold_frames(T)
    frames = animation_frames(still, overlays, scale=scale, ncol=ncol, hold=hold, label="glimpse ", captions=captions)
    strip = sequence_strip(still, overlays, scale=scale)
    return Animation(frames, strip, duration, hold)

"""Measuring a trained DRAW model as the paper reports it (paper section 4.2, Table 2; docs/DESIGN.md, Evaluation).

* :func:`nll_bound`: the variational bound L^x + L^z of eq. (12) in nats per image, averaged over
  images and ``samples`` posterior samples each, plus the per-step KL.
* :func:`nll_importance_weighted`: -log p(x) estimated with K importance samples (Burda et al.),
  -log (1/K) sum_k p(x, z^k) / q(z^k | x); at most the bound in expectation, tighter as K grows.

For a class-conditional model (``DRAWConfig.conditional``) both are of -log p(x | y), each image's
label y taken from the data set (:func:`bound_of` says which, for the printed results).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from . import checkpoint, losses
from .data import ImageDataset
from .engine import Engine, choose
from .model import DRAW

# Table 2 of the paper: test negative log-likelihood on binarized MNIST in nats. "≈" rows are
# estimates, "≤" rows upper bounds (variational bounds).
PAPER_TABLE2: list[tuple[str, str, float]] = [
    ("DBM 2hl", "≈", 84.62),
    ("DBN 2hl", "≈", 84.55),
    ("NADE", "", 88.33),
    ("EoNADE 2hl (128 orderings)", "≈", 85.10),
    ("EoNADE-5 2hl (128 orderings)", "≈", 84.68),
    ("DLGM", "≈", 86.60),
    ("DLGM 8 leapfrog steps", "≈", 85.51),
    ("DLGM 8 leapfrog steps", "≤", 88.30),
    ("DARN 1hl", "≈", 84.13),
    ("DARN 1hl", "≤", 88.30),
    ("DARN 12hl", "≤", 87.72),
    ("DRAW without attention", "≤", 87.40),
    ("DRAW", "≤", 80.97),
]


def bound_of(model: DRAW) -> str:
    """What the bound and the estimate are of: "-log p(x)", or "-log p(x | y)" for a conditional model."""
    return "-log p(x | y)" if model.config.conditional else "-log p(x)"


def posterior_pass(
    model: DRAW, x: Tensor, generator: torch.Generator | None, engine: Engine | None = None,
    labels: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """(c_T logits, mu, log sigma, z) for one posterior sample per image, through ``engine``
    (default: :func:`drawnet.engine.choose` in float32), the noise drawn exactly as the readable
    ``model(x, generator=...)`` draws it, so every engine gives the same numbers."""
    engine = engine or choose(model, x.device)
    return engine.posterior(model, x, generator, labels=labels)


def _batches(dataset: ImageDataset, batch_size: int, limit: int | None, model: DRAW):
    """(images, labels for a conditional model, else None) in batches."""
    images = dataset.images if limit is None else dataset.images[:limit]
    labels = None
    if model.config.conditional:
        if dataset.labels is None:
            raise ValueError(f"a conditional model is evaluated on labelled images, and data set {dataset.name!r} "
                             f"({dataset.split}) has no labels")
        labels = dataset.labels if limit is None else dataset.labels[:limit]
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size], None if labels is None else labels[start : start + batch_size]


@torch.no_grad()
def nll_bound(
    model: DRAW,
    dataset: ImageDataset,
    *,
    batch_size: int = 500,
    samples: int = 1,
    seed: int = 0,
    limit: int | None = None,
    device: torch.device | str = "cpu",
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Average of L^x + L^z (eq. 12) over the images of ``dataset`` and ``samples`` draws of z each,
    computed by ``engine`` (default: the fast path in float32, as every bound this project reports)."""
    if samples <= 0:
        raise ValueError(f"samples must be positive, got {samples}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    engine = engine or choose(model, device)
    total = {"bound": 0.0, "L_x": 0.0, "L_z": 0.0}
    kl = None
    n = 0
    within = 0.0  # sum over images of the sample variance of their bound across the posterior draws
    for x, y in _batches(dataset, batch_size, limit, model):
        x = x.to(device)
        y = None if y is None else y.to(device)
        draws = []
        for _ in range(samples):
            canvas, mu, log_sigma, _ = posterior_pass(model, x, generator, engine, y)
            terms = losses.loss_terms(canvas, x, mu, log_sigma)
            b = x.shape[0]
            draws.append(terms["bound_per_image"].double().cpu())
            total["bound"] += float(terms["bound_per_image"].sum())
            total["L_x"] += float(terms["L_x"]) * b
            total["L_z"] += float(terms["L_z"]) * b
            step_kl = terms["kl_per_step"].double().cpu() * b
            kl = step_kl if kl is None else kl + step_kl
        if samples > 1:
            within += float(torch.stack(draws).var(dim=0, unbiased=True).sum())
        n += x.shape[0]
    count = n * samples
    # The standard error of nll_bound from the posterior noise alone, the images held fixed (so the
    # one that matters when two numbers on the same test set are compared): sqrt(sum_i s_i^2 / S) / n
    # with s_i^2 image i's variance over its S draws; it needs S >= 2 (None otherwise).
    sampling_se = math.sqrt(within / samples) / n if samples > 1 and n else None
    return {
        "nll_bound": total["bound"] / count,
        "sampling_se": sampling_se,
        "L_x": total["L_x"] / count,
        "L_z": total["L_z"] / count,
        "kl_per_step": (kl / count).tolist() if kl is not None else [],
        "num_images": n,
        "posterior_samples": samples,
        "bound_of": bound_of(model),
    }


def iw_chunk(device: torch.device | str) -> int:
    """Rows per forward pass of the importance-weighted estimate, by device: on a CPU a few hundred
    rows keep the pass's state (T steps of both LSTMs and the filter banks) in the caches, about
    1.2x (float32) to 1.4x (bf16) faster than 4,000 (bench/iw_speed.py, bench/QUALITY.md); a GPU wants many.

    The noise is drawn pass by pass, so the estimate for one seed depends on the chunk (by its
    sampling error only)."""
    return 200 if torch.device(device).type == "cpu" else 4096


@torch.no_grad()
def log_likelihood_iw(
    model: DRAW, x: Tensor, K: int, *, chunk: int | None = None, generator: torch.Generator | None = None,
    engine: Engine | None = None, labels: Tensor | None = None,
) -> Tensor:
    """Importance-weighted estimate of log p(x) for each image of ``x`` (batch,), with K samples
    (of log p(x | y) for a conditional model given ``labels``).

    The K copies of each image are run through the model ``chunk`` rows at a time (at least one
    copy of every image; default :func:`iw_chunk` of the images' device), and the log weights
    combined with a running log-sum-exp, so memory does not grow with K.
    """
    if K <= 0:
        raise ValueError(f"K (importance samples) must be positive, got {K}")
    if chunk is None:
        chunk = iw_chunk(x.device)
    elif chunk <= 0:
        raise ValueError(f"chunk (rows per forward pass) must be positive, got {chunk}")
    B = x.shape[0]
    per_chunk = max(1, chunk // B)  # samples of every image in one pass
    log_w_sum = torch.full((B,), -math.inf, dtype=torch.float64, device=x.device)
    done = 0
    while done < K:
        k = min(per_chunk, K - done)
        xs = x.repeat(k, 1, 1, 1)  # (k*B, C, H, W): sample j of image i at row j*B + i
        ys = None if labels is None else labels.repeat(k)  # (k*B,), the same rows
        canvas, mu, log_sigma, z = posterior_pass(model, xs, generator, engine, ys)
        log_w = losses.log_importance_weight(canvas, xs, z, mu, log_sigma)  # (k*B,)
        log_w = log_w.double().view(k, B)
        log_w_sum = torch.logaddexp(log_w_sum, torch.logsumexp(log_w, dim=0))
        done += k
    return log_w_sum - math.log(K)


IW_PROGRESS_FORMAT = "drawnet-iw-progress/1"


def _read_iw_progress(path: Path, identity: dict[str, str]) -> tuple[Tensor, Tensor]:
    """(per-image log p(x) so far, the noise generator's state) from a progress file written for
    the same estimate; anything else (another model, K, seed, data, ...) is a clear error."""
    try:
        meta, tensors = checkpoint._read(path)  # the one safetensors reader (no code runs from a file)
        log_px, rng = tensors["log_px"], tensors["rng"]
    except (ValueError, KeyError, TypeError, AttributeError, safetensors.SafetensorError) as err:
        raise ValueError(f"{path} is not a readable importance-weighted progress file ({err}); delete it to "
                         f"start the estimate afresh") from None
    if meta.get("format") != IW_PROGRESS_FORMAT:
        raise ValueError(f"{path} is not an importance-weighted progress file of this drawnet "
                         f"(format {meta.get('format')!r}, expected {IW_PROGRESS_FORMAT!r}); give another "
                         f"--iw-progress file or delete it")
    differ = [f"{k} {meta.get(k)!r} there, {v!r} here" for k, v in identity.items() if meta.get(k) != v]
    if differ:
        raise ValueError(f"{path} holds the progress of another estimate ({'; '.join(differ)}); run the command "
                         f"that wrote it, or give another --iw-progress file")
    if log_px.dtype != torch.float64 or log_px.dim() != 1 or rng.dtype != torch.uint8:
        raise ValueError(f"{path} has damaged tensors (log_px {log_px.dtype} {tuple(log_px.shape)}, rng {rng.dtype}); "
                         f"delete it to start the estimate afresh")
    return log_px, rng


def _write_iw_progress(path: Path, identity: dict[str, str], log_px: Tensor, generator: torch.Generator) -> None:
    from .rundir import atomic_write

    meta = {"format": IW_PROGRESS_FORMAT, **identity, "images_done": str(log_px.numel())}
    tensors = {"log_px": log_px.contiguous(), "rng": generator.get_state()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=meta))


@torch.no_grad()
def nll_importance_weighted(
    model: DRAW,
    dataset: ImageDataset,
    K: int,
    *,
    batch_size: int = 100,
    chunk: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    device: torch.device | str = "cpu",
    progress: Any = None,
    engine: Engine | None = None,
    progress_file: str | Path | None = None,
    identity: dict[str, str] | None = None,
) -> dict[str, Any]:
    """-log p(x) averaged over ``dataset`` with K importance samples per image (nats per image).

    With ``progress_file`` the per-image estimates and the noise generator's state are written
    there (atomically) after every batch, and an existing file is continued from: a stopped
    estimate picks up where it left off and ends with exactly the numbers of an uninterrupted one.
    The file records what the estimate is of (the weights' SHA-256, K, seed, chunk, batch size,
    image count, and the caller's ``identity``, e.g. the data set and the engine) and a file of
    another estimate is refused.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    engine = engine or choose(model, device)
    n_all = min(len(dataset), limit) if limit is not None else len(dataset)
    done: list[Tensor] = []  # per-image log p(x), float64, batch by batch
    start = 0
    if progress_file is not None:
        progress_file = Path(progress_file)
        identity = {**(identity or {}), "weights_sha256": checkpoint.tensors_digest(model.state_dict()), "K": str(K),
                    "seed": str(seed), "chunk": str(chunk or iw_chunk(device)), "batch_size": str(batch_size),
                    "num_images": str(n_all)}
        if progress_file.exists():
            log_px, rng = _read_iw_progress(progress_file, identity)
            if log_px.numel() > n_all or (log_px.numel() % batch_size and log_px.numel() != n_all):
                raise ValueError(f"{progress_file} records {log_px.numel()} images done, not a whole number of "
                                 f"batches of {batch_size} of the {n_all}; delete it to start the estimate afresh")
            generator.set_state(rng)
            done, start = [log_px], log_px.numel()
            if progress is not None and start:
                progress(start)
    n = 0
    for x, y in _batches(dataset, batch_size, limit, model):
        n += x.shape[0]
        if n <= start:  # done before the estimate was stopped (the generator's state is from after it)
            continue
        x = x.to(device)
        y = None if y is None else y.to(device)
        done.append(log_likelihood_iw(model, x, K, chunk=chunk, generator=generator, engine=engine,
                                      labels=y).double().cpu())
        if progress_file is not None:
            _write_iw_progress(progress_file, identity, torch.cat(done), generator)
        if progress is not None:
            progress(x.shape[0])
    log_px = torch.cat(done) if done else torch.zeros(0, dtype=torch.float64)
    return {"nll_iw": float(-log_px.sum()) / max(n, 1), "iw_samples": K, "num_images": n, "bound_of": bound_of(model)}


def table2_comparable(data: str, image_shape: tuple[int, ...] | list[int], conditional: bool) -> bool:
    """Whether a bound compares with the paper's Table 2: an unconditional model of 28x28 (binarized)
    MNIST digits. Two-digit and cluttered MNIST have "mnist" in their names but other images, and a
    class-conditional bound is of -log p(x | y)."""
    name = str(data).lower()
    return ("mnist" in name and "fashion" not in name and not conditional
            and tuple(image_shape) == (1, 28, 28))


def table2_lines(nll_bound_value: float | None, nll_iw_value: float | None, K: int | None) -> list[str]:
    """The paper's Table 2 with this model's numbers beside it, as text lines."""
    lines = ["Test NLL on binarized MNIST (nats; ≈ estimate, ≤ bound)", ""]
    for name, rel, value in PAPER_TABLE2:
        lines.append(f"  {name:<32} {rel or ' '} {value:6.2f}")
    lines.append("  " + "-" * 44)
    if nll_iw_value is not None:
        lines.append(f"  {'this model, IW K=' + str(K):<32} ≈ {nll_iw_value:6.2f}")
    if nll_bound_value is not None:
        lines.append(f"  {'this model, bound':<32} ≤ {nll_bound_value:6.2f}")
    return lines

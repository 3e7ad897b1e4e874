"""The optimised path (drawnet.fast) against the readable reference path (model.forward + losses)."""

from __future__ import annotations

import pytest
import torch

from drawnet import DRAW, DRAWConfig, fast, losses

# Attention on / off on each side, on a non-square colour image so that a mix-up of A and B, of
# channels, or of the read halves [x, x^] shows.
ATTENTION = [(None, None), (None, 3), (2, None), (3, 4)]


def _model(read_n, write_n, dtype=torch.float64, T=4) -> DRAW:
    cfg = DRAWConfig(image_shape=(3, 5, 7), T=T, enc_size=6, dec_size=5, z_size=3, read_n=read_n, write_n=write_n)
    torch.manual_seed(0)
    model = DRAW(cfg).to(dtype)
    with torch.no_grad():  # move away from the zero initial states and biases so every path carries signal
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _reference_loss(model: DRAW, x, noise) -> dict:
    out = model(x, noise=noise)
    return losses.loss_terms(out.canvas, x, out.mu, out.log_sigma)


@pytest.mark.parametrize("read_n, write_n", ATTENTION)
def test_loss_and_every_gradient_match_the_readable_path(read_n, write_n):
    model = _model(read_n, write_n)
    x = torch.rand(4, 3, 5, 7, dtype=torch.float64)
    noise = torch.randn(4, 4, 3, dtype=torch.float64)
    params = list(model.parameters())

    ref = _reference_loss(model, x, noise)
    ref_grads = torch.autograd.grad(ref["loss"], params)
    got = model.loss(x, noise)  # the fast path (the default)
    got_grads = torch.autograd.grad(got["loss"], params)

    for key in ("loss", "L_x", "L_z", "kl_per_step", "bound_per_image"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-12, atol=1e-12)
    names = [name for name, _ in model.named_parameters()]
    for name, a, b in zip(names, got_grads, ref_grads, strict=True):
        assert b.abs().max() > 0, f"{name}: reference gradient is zero, the test would not see a mistake"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("read_n, write_n", [(None, None), (2, 5)])
def test_float32_with_global_rng_draws_the_same_noise(read_n, write_n):
    """Without explicit noise both paths draw it from the global RNG in the same order."""
    model = _model(read_n, write_n, dtype=torch.float32, T=6)
    x = torch.rand(8, 3, 5, 7)
    params = list(model.parameters())
    torch.manual_seed(123)
    ref = model.loss(x, fast=False)
    ref_grads = torch.autograd.grad(ref["loss"], params)
    torch.manual_seed(123)
    got = model.loss(x)
    got_grads = torch.autograd.grad(got["loss"], params)
    torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-5, atol=1e-4)
    for (name, _), a, b in zip(model.named_parameters(), got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_backward_through_only_part_of_the_outputs():
    """A loss that ignores some outputs (here: the KL) still gets the right gradients."""
    model = _model(2, 3)
    x = torch.rand(3, 3, 5, 7, dtype=torch.float64)
    noise = torch.randn(4, 3, 3, dtype=torch.float64)
    params = list(model.parameters())
    ref = model(x, noise=noise).canvas.sum()
    canvas, _, _ = fast.forward(model, x, noise)
    for a, b in zip(torch.autograd.grad(canvas.sum(), params), torch.autograd.grad(ref, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("read_n, write_n", ATTENTION)
def test_generate_matches_the_readable_path(read_n, write_n):
    model = _model(read_n, write_n)
    ref = model.generate(5, generator=torch.Generator().manual_seed(7), fast=False)
    got = model.generate(5, generator=torch.Generator().manual_seed(7), fast=True)
    torch.testing.assert_close(got.canvases, ref.canvases, rtol=1e-12, atol=1e-12)
    assert got.canvases.shape == (4, 5, 3, 5, 7)
    if write_n is None:
        assert got.write_windows is None
    else:
        for a, b in zip(got.write_windows, ref.write_windows, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fast_loss_checks_its_input():
    model = _model(2, 3)
    with pytest.raises(ValueError, match="image_shape"):
        model.loss(torch.rand(2, 1, 5, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="noise"):
        model.loss(torch.rand(2, 3, 5, 7, dtype=torch.float64), torch.randn(3, 2, 3, dtype=torch.float64))


def test_training_step_with_the_fast_path_lowers_the_loss():
    """End to end: a few Adam steps through the fast path on a fixed batch reduce the bound."""
    cfg = DRAWConfig(image_shape=(1, 8, 8), T=4, enc_size=16, dec_size=16, z_size=4, read_n=2, write_n=3)
    torch.manual_seed(0)
    model = DRAW(cfg)
    x = (torch.rand(16, 1, 8, 8) > 0.5).float()
    noise = torch.zeros(4, 16, 4)  # the bound's mean, so the loss is deterministic
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = model.loss(x, noise)["loss"]
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert model.loss(x, noise)["loss"].item() < first - 1.0


@pytest.mark.parametrize("T", [fast._CHUNK, fast._CHUNK + 1, 2 * fast._CHUNK + 3])
def test_weight_gradients_over_several_chunks(T):
    """Weight gradients are accumulated chunk by chunk: chunk borders must not lose or repeat a step."""
    model = _model(2, 3, T=T)
    x = torch.rand(3, 3, 5, 7, dtype=torch.float64)
    noise = torch.randn(T, 3, 3, dtype=torch.float64)
    params = list(model.parameters())
    ref_grads = torch.autograd.grad(_reference_loss(model, x, noise)["loss"], params)
    got_grads = torch.autograd.grad(model.loss(x, noise)["loss"], params)
    for (name, _), a, b in zip(model.named_parameters(), got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def test_reused_buffers_never_mix_two_passes():
    """Passes of the same shapes reuse one set of buffers; two live graphs never share it, and a
    second backward through a graph whose buffers were reused meanwhile fails loudly."""
    model = _model(2, 3)
    params = list(model.parameters())
    xs = [torch.rand(3, 3, 5, 7, dtype=torch.float64) for _ in range(3)]
    noise = torch.randn(4, 3, 3, dtype=torch.float64)
    first, second = model.loss(xs[0], noise)["loss"], model.loss(xs[1], noise)["loss"]  # both graphs alive
    for x, loss in ((xs[0], first), (xs[1], second)):
        want = torch.autograd.grad(_reference_loss(model, x, noise)["loss"], params)
        got = torch.autograd.grad(loss, params, retain_graph=True)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    model.loss(xs[2], noise)  # takes the buffers that the backward of `second` gave back
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(second, params)


def test_gradient_with_respect_to_the_images_falls_back_to_the_readable_path():
    """The hand-written backward gives parameter gradients only; asking for d loss / d x must still work."""
    model = _model(2, 3)
    noise = torch.randn(4, 2, 3, dtype=torch.float64)
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert not fast.supports(model, x)
    (got,) = torch.autograd.grad(model.loss(x, noise)["loss"], x)
    (want,) = torch.autograd.grad(_reference_loss(model, x, noise)["loss"], x)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="fast=False"):
        fast.forward(model, x, noise)


def test_loss_and_generate_take_the_fast_path_by_default(monkeypatch):
    model = _model(2, 3)
    calls = []
    for name in ("forward", "generate"):
        original = getattr(fast, name)
        monkeypatch.setattr(fast, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    model.loss(torch.rand(2, 3, 5, 7, dtype=torch.float64))
    model.generate(2)
    assert calls == ["forward", "generate"]
    model.loss(torch.rand(2, 3, 5, 7, dtype=torch.float64), fast=False)
    model.generate(2, fast=False)
    assert calls == ["forward", "generate"]


def test_free_buffers_releases_the_kept_set():
    model = _model(2, 3)
    model.loss(torch.rand(2, 3, 5, 7, dtype=torch.float64))["loss"].backward()
    assert fast._SPARE
    fast.free_buffers()
    assert not fast._SPARE


def test_training_and_generation_keep_their_buffers_side_by_side():
    """A training loop that samples alternates between two sets of shapes: both are kept (the same
    tensors come back on the next pass), and a third shape pushes out the oldest."""
    fast.free_buffers()
    model = _model(2, 3)
    model.loss(torch.rand(2, 3, 5, 7, dtype=torch.float64))["loss"].backward()
    model.generate(4)
    kept = {key: [t.data_ptr() for t in bufs.values()] for key, bufs in fast._SPARE.items()}
    assert len(kept) == 2
    model.loss(torch.rand(2, 3, 5, 7, dtype=torch.float64))["loss"].backward()
    model.generate(4)
    assert {key: [t.data_ptr() for t in bufs.values()] for key, bufs in fast._SPARE.items()} == kept
    model.generate(5)  # a third shape
    assert len(fast._SPARE) == 2
    first_key = list(kept)[0]
    assert first_key not in fast._SPARE  # the training set, used least recently, went first
    fast.free_buffers()

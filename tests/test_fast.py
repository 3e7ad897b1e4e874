"""The optimised path (drawnet.fast) against the readable reference path (model.forward + losses)."""

from __future__ import annotations

import pytest
import torch

from drawnet import DRAW, DRAWConfig, attention, engine, fast, losses

# Attention on / off on each side, on a non-square colour image so that a mix-up of A and B, of
# channels, or of the read halves [x, x^] shows.
ATTENTION = [(None, None), (None, 3), (2, None), (3, 4)]


def _model(read_n, write_n, dtype=torch.float64, T=4, num_classes=None) -> DRAW:
    cfg = DRAWConfig(image_shape=(3, 5, 7), T=T, enc_size=6, dec_size=5, z_size=3, read_n=read_n, write_n=write_n,
                     conditional=num_classes is not None, num_classes=num_classes)
    torch.manual_seed(0)
    model = DRAW(cfg).to(dtype)
    with torch.no_grad():  # move away from the zero initial states and biases so every path carries signal
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _fast_loss(model: DRAW, x, noise=None, precision: str = "fp32") -> dict:
    chosen = engine.choose(model, precision=precision)
    assert chosen.fast, chosen.describe()
    return chosen.loss(model, x, noise)


def _fast_generate(model: DRAW, n: int, generator=None, precision: str = "fp32"):
    return engine.choose(model, precision=precision).generate(model, n, generator)


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
    got = _fast_loss(model, x, noise)
    got_grads = torch.autograd.grad(got["loss"], params)

    for key in ("loss", "L_x", "L_z", "kl_per_step", "bound_per_image"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-12, atol=1e-12)
    names = [name for name, _ in model.named_parameters()]
    for name, a, b in zip(names, got_grads, ref_grads, strict=True):
        assert b.abs().max() > 0, f"{name}: reference gradient is zero, the test would not see a mistake"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def test_a_model_with_a_dark_initial_canvas_runs_the_fast_path():
    """canvas_init only sets c_0's starting value: the fast path runs such a model, to the same loss."""
    cfg = DRAWConfig(image_shape=(1, 6, 6), T=3, enc_size=5, dec_size=4, z_size=2, read_n=2, write_n=3,
                     canvas_init=-6.0)
    torch.manual_seed(0)
    model = DRAW(cfg).double()
    assert fast.unsupported(model) == []
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    noise = torch.randn(3, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(_fast_loss(model, x, noise)["loss"], _reference_loss(model, x, noise)["loss"],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("read_n, write_n", [(None, None), (2, 5)])
def test_float32_with_global_rng_draws_the_same_noise(read_n, write_n):
    """Without explicit noise both paths draw it from the global RNG in the same order."""
    model = _model(read_n, write_n, dtype=torch.float32, T=6)
    x = torch.rand(8, 3, 5, 7)
    params = list(model.parameters())
    torch.manual_seed(123)
    ref = model.loss(x)
    ref_grads = torch.autograd.grad(ref["loss"], params)
    torch.manual_seed(123)
    got = _fast_loss(model, x)
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
    ref = model.generate(5, generator=torch.Generator().manual_seed(7))
    got = _fast_generate(model, 5, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got.canvases, ref.canvases, rtol=1e-12, atol=1e-12)
    assert got.canvases.shape == (4, 5, 3, 5, 7)
    if write_n is None:
        assert got.write_windows is None
    else:
        for a, b in zip(got.write_windows, ref.write_windows, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("read_n, write_n", ATTENTION)
def test_conditional_model_loss_gradients_and_samples_match_the_readable_path(read_n, write_n):
    """The label's hoisted products and their weight gradients (drawnet.fast) against the readable
    model, where y is concatenated to the inputs of both LSTMs."""
    model = _model(read_n, write_n, num_classes=4)
    x = torch.rand(5, 3, 5, 7, dtype=torch.float64)
    noise = torch.randn(4, 5, 3, dtype=torch.float64)
    labels = torch.tensor([3, 0, 1, 3, 2])
    params = list(model.parameters())
    out = model(x, noise=noise, labels=labels)
    ref = losses.loss_terms(out.canvas, x, out.mu, out.log_sigma)
    ref_grads = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(ref["loss"], params),
                         strict=True))
    chosen = engine.choose(model)
    assert chosen.fast, chosen.describe()
    got = chosen.loss(model, x, noise, labels=labels)
    got_grads = torch.autograd.grad(got["loss"], params)
    for key in ("loss", "kl_per_step", "bound_per_image"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-12, atol=1e-12)
    for (name, _), a in zip(model.named_parameters(), got_grads, strict=True):
        torch.testing.assert_close(a, ref_grads[name], rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
    lay = fast._Layout(model)  # the label's own weight columns carry gradient, so the comparison sees them
    assert ref_grads["encoder.weight_ih"][:, lay.enc_y].abs().amin(0).gt(0).all()
    assert ref_grads["decoder.weight_ih"][:, 3:].abs().amin(0).gt(0).all()
    gen = chosen.generate(model, 5, torch.Generator().manual_seed(2), labels=labels)
    ref_gen = model.generate(5, torch.Generator().manual_seed(2), labels=labels)
    torch.testing.assert_close(gen.canvases, ref_gen.canvases, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        chosen.loss(model, x, noise)


def test_fast_loss_checks_its_input():
    model = _model(2, 3)
    with pytest.raises(ValueError, match="image_shape"):
        _fast_loss(model, torch.rand(2, 1, 5, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="noise"):
        _fast_loss(model, torch.rand(2, 3, 5, 7, dtype=torch.float64), torch.randn(3, 2, 3, dtype=torch.float64))


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
        loss = _fast_loss(model, x, noise)["loss"]
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert _fast_loss(model, x, noise)["loss"].item() < first - 1.0


@pytest.mark.parametrize("T", [fast._CHUNK, fast._CHUNK + 1, 2 * fast._CHUNK + 3])
def test_weight_gradients_over_several_chunks(T):
    """Weight gradients are accumulated chunk by chunk: chunk borders must not lose or repeat a step."""
    model = _model(2, 3, T=T)
    x = torch.rand(3, 3, 5, 7, dtype=torch.float64)
    noise = torch.randn(T, 3, 3, dtype=torch.float64)
    params = list(model.parameters())
    ref_grads = torch.autograd.grad(_reference_loss(model, x, noise)["loss"], params)
    got_grads = torch.autograd.grad(_fast_loss(model, x, noise)["loss"], params)
    for (name, _), a, b in zip(model.named_parameters(), got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def test_reused_buffers_never_mix_two_passes():
    """Passes of the same shapes through one engine reuse one set of buffers; two live graphs never
    share it, and a second backward through a graph whose buffers were reused meanwhile fails loudly."""
    model = _model(2, 3)
    chosen = engine.choose(model)
    params = list(model.parameters())
    xs = [torch.rand(3, 3, 5, 7, dtype=torch.float64) for _ in range(3)]
    noise = torch.randn(4, 3, 3, dtype=torch.float64)
    first, second = chosen.loss(model, xs[0], noise)["loss"], chosen.loss(model, xs[1], noise)["loss"]  # both alive
    for x, loss in ((xs[0], first), (xs[1], second)):
        want = torch.autograd.grad(_reference_loss(model, x, noise)["loss"], params)
        got = torch.autograd.grad(loss, params, retain_graph=True)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    chosen.loss(model, xs[2], noise)  # takes the buffers that the backward of `second` gave back
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(second, params)


def test_gradient_with_respect_to_the_images_is_refused_by_the_fast_path():
    """The hand-written backward gives parameter gradients only: asking it for d loss / d x fails
    loudly and names the readable path, which gives it."""
    model = _model(2, 3)
    noise = torch.randn(4, 2, 3, dtype=torch.float64)
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert not fast.supports(model, x)
    with pytest.raises(ValueError, match="readable model"):
        fast.forward(model, x, noise)
    (got,) = torch.autograd.grad(model.loss(x, noise)["loss"], x)  # the readable path
    assert got.abs().max() > 0


def test_an_engine_keeps_its_buffers_and_can_release_them():
    model = _model(2, 3)
    chosen = engine.choose(model)
    chosen.loss(model, torch.rand(2, 3, 5, 7, dtype=torch.float64))["loss"].backward()
    chosen.generate(model, 4)
    assert len(chosen.pool) == 2  # the training pass's set and generation's, side by side
    chosen.pool.clear()
    assert len(chosen.pool) == 0


# ---------------------------------------------------------------------------- bfloat16 products
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("read_n, write_n, num_classes", [(r, w, None) for r, w in ATTENTION] + [(None, None, 4),
                                                                                                   (3, 4, 4)])
@pytest.mark.parametrize("kernels_on", [True, False])
def test_bf16_loss_and_gradients_agree_with_the_float32_readable_path(
    read_n, write_n, num_classes, kernels_on, monkeypatch
):
    """bf16 products (the C kernel, or PyTorch's bf16 matmul without it) against the float32
    readable model: the loss within 5e-4 relative (0.05 nats of 90), every gradient within 3 % in
    norm (the rounding of both factors to 8 significant bits), and far closer than a wrong gradient
    would be."""
    from drawnet import kernels

    if kernels_on and kernels.library() is None:
        pytest.skip(f"no kernels: {kernels.status()}")
    monkeypatch.setenv("DRAWNET_KERNELS", "1" if kernels_on else "0")
    kernels.reset()
    try:
        model = _model(read_n, write_n, dtype=torch.float32, T=5, num_classes=num_classes)
        x = torch.rand(19, 3, 5, 7).bernoulli()
        noise = torch.randn(5, 19, 3)
        labels = torch.arange(19) % num_classes if num_classes else None
        params = list(model.parameters())
        out = model(x, noise=noise, labels=labels)
        ref = losses.loss_terms(out.canvas, x, out.mu, out.log_sigma)
        ref_grads = torch.autograd.grad(ref["loss"], params)
        chosen = engine.choose(model, precision="bf16")
        assert chosen.fast, chosen.describe()
        got = chosen.loss(model, x, noise, labels=labels)
        got_grads = torch.autograd.grad(got["loss"], params)
        assert abs(got["loss"].item() - ref["loss"].item()) < 5e-4 * abs(ref["loss"].item())
        # The conditional model's bf16 noise is larger: over 8 seeds its largest gradient error was 1-4.8 %,
        # in small gradients (h_enc0, the decoder), against 0.8-3.1 % for the unconditional model (both
        # with and without the kernels); its label products themselves are float32.
        bound = 0.03 if num_classes is None else 0.05
        for (name, _), a, b in zip(model.named_parameters(), got_grads, ref_grads, strict=True):
            assert _rel(a, b) < bound, f"gradient of {name}: relative error {_rel(a, b):.3g}"
        gen_labels = None if labels is None else labels[:7]
        gen32 = engine.choose(model).generate(model, 7, torch.Generator().manual_seed(1), labels=gen_labels)
        gen16 = chosen.generate(model, 7, torch.Generator().manual_seed(1), labels=gen_labels)
        assert (gen16.canvases - gen32.canvases).abs().max() < 0.02
    finally:
        monkeypatch.delenv("DRAWNET_KERNELS")
        kernels.reset()


def test_bf16_gemm_kernel_matches_rounded_float64_products():
    """drawnet.kernels.gemm = add + bf16(a) @ bf16(b) + bias with float32 sums, for row-major and
    transposed factors, sizes that do not fill its 12 x 32 tiles, and odd K."""
    from drawnet import kernels

    if kernels.library() is None:
        pytest.skip(f"no kernels: {kernels.status()}")
    g = torch.Generator().manual_seed(0)
    for M, K, N, transposed in [(128, 256, 2084, False), (13, 7, 5, False), (100, 200, 64, True), (37, 33, 65, True)]:
        a = torch.randn(K, M, generator=g).t() if transposed else torch.randn(M, K, generator=g)
        w = torch.randn(N, K, generator=g).t()
        add, bias = torch.randn(M, N, generator=g), torch.randn(N, generator=g)
        out = torch.full((M, N), float("nan"))
        kernels.gemm(out, a, kernels.PackedMatrix(w), add, bias)
        want = add.double() + bias.double() + a.bfloat16().double() @ w.bfloat16().double()
        assert _rel(out.double(), want) < 1e-6, (M, K, N, transposed)
        kernels.gemm(out, a, kernels.PackedMatrix(w))  # no addend, no bias
        assert _rel(out.double(), a.bfloat16().double() @ w.bfloat16().double()) < 1e-6


# ---------------------------------------------------------------------------- the engine's choice
def test_engine_routes_what_the_fast_path_does_not_implement_to_the_readable_model():
    cfg = DRAWConfig(image_shape=(1, 6, 6), T=3, enc_size=8, dec_size=8, z_size=2, layer_norm=True)
    model = DRAW(cfg)
    assert fast.unsupported(model) == ["layer_norm=True"]
    chosen = engine.choose(model, precision="bf16")
    assert not chosen.fast and chosen.precision == "fp32"
    assert "layer_norm=True" in chosen.describe()
    with pytest.raises(ValueError, match="layer_norm=True"):
        fast.forward(model, torch.rand(2, 1, 6, 6))
    terms = chosen.loss(model, torch.rand(2, 1, 6, 6).bernoulli())
    assert torch.isfinite(terms["loss"])


def test_every_config_field_is_declared_by_the_fast_path():
    """A field added to DRAWConfig must be declared in fast.IMPLEMENTS (else the fast path refuses
    every model, and this test says why)."""
    import dataclasses

    assert {f.name for f in dataclasses.fields(DRAWConfig)} == set(fast.IMPLEMENTS)


def test_precision_auto_falls_back_to_float32_without_native_bf16(monkeypatch):
    from drawnet import kernels

    model = _model(2, 3, dtype=torch.float32)
    monkeypatch.setattr(kernels, "bf16_native", lambda: False)
    chosen = engine.choose(model, precision="auto")
    assert chosen.fast and chosen.precision == "fp32"
    assert "precision auto: float32" in chosen.describe()
    monkeypatch.setattr(kernels, "bf16_native", lambda: True)
    if kernels.library() is not None:
        assert engine.choose(model, precision="auto").precision == "bf16"


def test_the_one_switch_runs_model_step(monkeypatch):
    """fast=False: loss, posterior and generation all go through the readable model."""
    model = _model(2, 3, dtype=torch.float32)
    steps = []
    original = DRAW.step
    monkeypatch.setattr(DRAW, "step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    readable = engine.choose(model, fast=False)
    readable.loss(model, torch.rand(2, 3, 5, 7))
    assert len(steps) == model.config.T
    engine.choose(model).loss(model, torch.rand(2, 3, 5, 7))
    assert len(steps) == model.config.T  # the fast path does not call it


@pytest.mark.parametrize("read_n, write_n, num_classes", [(2, 5, None), (None, None, None), (3, 4, 4)])
def test_bf16_generation_over_several_chunks_agrees_with_the_readable_path(read_n, write_n, num_classes):
    """bf16 generation with the kernel ([z~_t, h_{t-1}] @ [W_z; W_hh] in one product per step) over
    T = 37 steps (three chunks of writes, the last one partial) against the float32 readable model with
    the same noise: the canvases within 0.02, the write windows as close."""
    from drawnet import kernels

    if kernels.library() is None or not kernels.bf16_native():
        pytest.skip("needs the kernels on a CPU with native bf16")
    torch.manual_seed(3)
    model = DRAW(DRAWConfig(image_shape=(1, 12, 12), T=37, enc_size=32, dec_size=32, z_size=6, read_n=read_n,
                            write_n=write_n, conditional=num_classes is not None, num_classes=num_classes))
    labels = None if num_classes is None else torch.arange(21) % num_classes
    ref = model.generate(21, torch.Generator().manual_seed(1), labels=labels)
    chosen = engine.choose(model, precision="bf16")
    assert chosen.fast and chosen.precision == "bf16", chosen.describe()
    got = chosen.generate(model, 21, torch.Generator().manual_seed(1), labels=labels)
    assert got.canvases.shape == ref.canvases.shape == (37, 21, 1, 12, 12)
    assert (got.canvases - ref.canvases).abs().max() < 0.02
    assert (got.canvases[-1] - ref.canvases[-1]).abs().max() > 0  # bf16 products did run
    if write_n is not None:
        for a, b in zip(got.write_windows, ref.write_windows, strict=True):
            assert (a - b).abs().max() < 0.05 * (1 + b.abs().max())


def test_gradient_clip_scales_down_only_the_rows_over_the_limit():
    clip = attention.GradientClip(6.0)
    grad = torch.tensor([[3.0, 4.0, 0, 0, 0], [0.3, 0.4, 0, 0, 0], [0, 0, 0, 0, 1.0]])  # norms 5, 0.5, 1
    clip.clip_(grad)  # batch 3: a row is clipped when 3 * its norm > 6, to norm 2
    torch.testing.assert_close(grad, torch.tensor([[1.2, 1.6, 0, 0, 0], [0.3, 0.4, 0, 0, 0], [0, 0, 0, 0, 1.0]]))
    assert clip.take_fraction() == pytest.approx(1 / 3) and clip.take_fraction() == 0.0
    with pytest.raises(ValueError, match="finite number > 0"):
        attention.GradientClip(0.0)


def _clipped_grads(model, x, noise, max_norm, fast_path: bool, precision="fp32"):
    clip = None if max_norm is None else attention.GradientClip(max_norm)
    with model.clipping_attention_gradient(clip):
        terms = _fast_loss(model, x, noise, precision) if fast_path else _reference_loss(model, x, noise)
    grads = torch.autograd.grad(terms["loss"], list(model.parameters()))
    return float(terms["loss"].detach()), grads, (None if clip is None else (float(clip.rows), float(clip.clipped)))


@pytest.mark.parametrize("read_n, write_n, dtype, batch, T", [
    (None, 3, torch.float64, 4, 4), (2, None, torch.float64, 4, 4), (3, 4, torch.float64, 4, 4),
    (3, 4, torch.float64, 3, 2 * fast._CHUNK + 3),  # the backward's rows kept in several chunks
    (2, 5, torch.float32, 20, 4),  # float32 with read and write: the fused kernels' blocked path where they load
])
def test_attention_gradient_clip_is_the_same_on_both_paths(read_n, write_n, dtype, batch, T):
    model = _model(read_n, write_n, dtype=dtype, T=T)
    x = torch.rand(batch, 3, 5, 7, dtype=dtype)
    noise = torch.randn(T, batch, 3, dtype=dtype)
    rows = []  # the per-image norms of the rows of d(loss)/d(raw) that the clip acts on, unclipped

    def keep_rows(_module, _inputs, raw):
        raw.register_hook(lambda g: rows.append(batch * g.norm(dim=1)))

    hooks = [layer.register_forward_hook(keep_rows) for layer in (model.read_params, model.write_params) if layer]
    loss, plain, _ = _clipped_grads(model, x, noise, None, fast_path=False)
    for hook in hooks:
        hook.remove()
    norms = torch.cat(rows).sort().values
    k = len(norms) // 2
    assert norms[k] > norms[k - 1] * (1 + 1e-6)
    middle = float(norms[k - 1] + norms[k]) / 2  # between two rows: rounding cannot put a row on either side
    # A limit above every row leaves the gradient as it was; one inside their range changes it.
    for max_norm, changes in ((1e9, False), (middle, True)):
        ref_loss, ref, ref_count = _clipped_grads(model, x, noise, max_norm, fast_path=False)
        got_loss, got, got_count = _clipped_grads(model, x, noise, max_norm, fast_path=True)
        assert ref_loss == loss  # the forward pass is unchanged
        layers = (read_n is not None) + (write_n is not None)
        assert ref_count[0] == got_count[0] == T * batch * layers  # rows seen: T steps x images x layers
        assert ref_count[1] == got_count[1] and (ref_count[1] > 0) == changes
        assert ref_count[1] < ref_count[0]  # some rows under the limit stay as they were
        tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
        for (name, _), a, b, c in zip(model.named_parameters(), got, ref, plain, strict=True):
            torch.testing.assert_close(a, b, **tol, msg=f"gradient of {name}")
            if not changes:
                torch.testing.assert_close(b, c, rtol=0, atol=0, msg=f"gradient of {name}")
        if changes:
            assert any(not torch.allclose(b, c) for b, c in zip(ref, plain, strict=True))
    assert got_loss == pytest.approx(loss, rel=1e-5)

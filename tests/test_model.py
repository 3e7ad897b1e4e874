"""The DRAW network: loss terms against hand computations, shapes, gradients, noise, bad input."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from drawnet import DRAW, DRAWConfig, losses
from drawnet.data.synthetic import make_shapes


def tiny(**kw) -> DRAW:
    base = {"image_shape": (1, 12, 10), "T": 5, "enc_size": 16, "dec_size": 16, "z_size": 4,
            "read_n": 3, "write_n": 3}
    return DRAW(DRAWConfig(**(base | kw)))


def binary(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)).round()


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 24)])
@pytest.mark.parametrize("read_n", [None, 2])
@pytest.mark.parametrize("write_n", [None, 5])
def test_output_shapes(image_shape, read_n, write_n):
    cfg = DRAWConfig(image_shape=image_shape, T=3, enc_size=32, dec_size=24, z_size=7, read_n=read_n,
                     write_n=write_n)
    model = DRAW(cfg)
    C, H, W = image_shape
    x = binary(4, C, H, W)
    terms = model.loss(x)
    assert terms["loss"].shape == () and terms["L_x"].shape == () and terms["L_z"].shape == ()
    assert terms["kl_per_step"].shape == (3,)
    out = model(x, keep_steps=True)
    assert out.canvas.shape == (4, C, H, W)
    assert out.mu.shape == out.log_sigma.shape == out.z.shape == (3, 4, 7)
    assert out.canvases.shape == (3, 4, C, H, W)
    assert (out.read_windows is None) == (read_n is None)
    assert (out.write_windows is None) == (write_n is None)
    for windows in (out.read_windows, out.write_windows):
        if windows is not None:
            assert all(f.shape == (3, 4) for f in windows)
    gen = model.generate(5, generator=torch.Generator().manual_seed(0))
    assert gen.canvases.shape == (3, 5, C, H, W)
    assert ((gen.canvases >= 0) & (gen.canvases <= 1)).all()
    assert (gen.write_windows is None) == (write_n is None)
    if write_n is not None:
        assert gen.write_windows.gx.shape == (3, 5)


def test_L_z_equals_torch_kl_divergence():
    torch.manual_seed(0)
    model = tiny()
    x = binary(6, 1, 12, 10)
    out = model(x)
    terms = losses.loss_terms(out.canvas, x, out.mu, out.log_sigma)
    q = Normal(out.mu, out.log_sigma.exp())
    expected = kl_divergence(q, Normal(torch.zeros_like(out.mu), torch.ones_like(out.mu))).sum(dim=(0, 2))
    torch.testing.assert_close(terms["L_z"], expected.mean())
    torch.testing.assert_close(terms["kl_per_step"], kl_divergence(q, Normal(0.0, 1.0)).sum(-1).mean(1))


def test_L_z_constant_is_minus_T_Z_over_2():
    # A posterior equal to the prior has zero KL: the constant of eq. (11) must be -T*Z/2, not -T/2.
    T, B, Z = 4, 3, 10
    kl = losses.kl_per_step(torch.zeros(T, B, Z), torch.zeros(T, B, Z))
    torch.testing.assert_close(kl, torch.zeros(T, B))


def test_L_x_equals_hand_computation():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 0.0]]]])
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    p = [1 / (1 + math.exp(-v)) for v in (2.0, -1.0, 0.5, 0.0)]
    expected = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(1 - p[2]) + math.log(p[3]))
    assert losses.reconstruction_nll(logits, x).item() == pytest.approx(expected, rel=1e-6)
    # Logits form stays finite where sigmoid-then-log would give log(0).
    assert torch.isfinite(losses.reconstruction_nll(torch.tensor([[[[200.0]]]]), torch.zeros(1, 1, 1, 1))).all()


def test_log_importance_weight_matches_distributions():
    torch.manual_seed(3)
    model = tiny()
    x = binary(5, 1, 12, 10)
    out = model(x)
    log_w = losses.log_importance_weight(out.canvas, x, out.z, out.mu, out.log_sigma)
    q = Normal(out.mu, out.log_sigma.exp()).log_prob(out.z).sum(dim=(0, 2))
    p = Normal(0.0, 1.0).log_prob(out.z).sum(dim=(0, 2))
    torch.testing.assert_close(log_w, -losses.reconstruction_nll(out.canvas, x) + p - q)


@pytest.mark.parametrize("read_n,write_n", [(None, None), (3, None), (None, 3), (3, 4)])
def test_every_parameter_gets_a_gradient(read_n, write_n):
    torch.manual_seed(0)
    model = tiny(read_n=read_n, write_n=write_n)
    model.loss(binary(4, 1, 12, 10))["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_noise_differs_across_steps():
    torch.manual_seed(0)
    model = tiny(z_size=8)
    out = model(binary(4, 1, 12, 10))
    eps = (out.z - out.mu) / out.log_sigma.exp()  # (T, B, Z): the noise of eq. (6)
    for t in range(1, eps.shape[0]):
        assert not torch.allclose(eps[t], eps[0])


def test_explicit_noise_is_used():
    model = tiny()
    x = binary(3, 1, 12, 10)
    noise = torch.randn(5, 3, 4)
    out = model(x, noise=noise)
    torch.testing.assert_close((out.z - out.mu) / out.log_sigma.exp(), noise)
    with pytest.raises(ValueError, match="noise must have shape"):
        model(x, noise=torch.randn(5, 2, 4))


def test_generation_is_deterministic_and_leaves_training_untouched():
    model = tiny()
    x = binary(4, 1, 12, 10)
    torch.manual_seed(7)
    before = model.loss(x)["loss"]
    a = model.generate(6, generator=torch.Generator().manual_seed(3))
    b = model.generate(6, generator=torch.Generator().manual_seed(3))
    c = model.generate(6, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a.canvases, b.canvases)
    assert not torch.allclose(a.canvases, c.canvases)
    torch.manual_seed(7)
    model.generate(6, generator=torch.Generator().manual_seed(3))
    after = model.loss(x)["loss"]
    torch.testing.assert_close(before, after)


def test_generation_needs_no_training_batch_size():
    model = tiny()
    model.loss(binary(8, 1, 12, 10))
    assert model.generate(1).canvases.shape[1] == 1
    assert model.generate(13).canvases.shape[1] == 13


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = tiny(T=4, enc_size=32, dec_size=32, z_size=4)
    x, _ = make_shapes(8, 12, 10, 1, seed=5)  # structured images, as a data set would have
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = model.loss(x)["loss"].item()
    for _ in range(300):
        opt.zero_grad()
        loss = model.loss(x)["loss"]
        loss.backward()
        opt.step()
    final = model.loss(x)["loss"].item()
    assert final < 0.5 * start, (start, final)  # measured: 84 -> 22 nats


@pytest.mark.parametrize("kw,match", [
    ({"read_n": 1}, "read_n must be None"),
    ({"write_n": 0}, "write_n must be None"),
    ({"T": 0}, "T must be a positive int"),
    ({"z_size": -3}, "z_size must be a positive int"),
    ({"enc_size": 0}, "enc_size must be a positive int"),
    ({"image_shape": (1, 0, 28)}, "image_shape must be three positive ints"),
    ({"image_shape": (28, 28)}, "image_shape must be three positive ints"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        DRAWConfig(**kw)


def test_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 1, 12, 10\)"):
        model.loss(binary(2, 1, 10, 12))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        model.loss(binary(2, 1, 12, 10) * 255)
    with pytest.raises(ValueError, match="float tensor"):
        model.loss(binary(2, 1, 12, 10).to(torch.uint8))
    with pytest.raises(ValueError, match="positive"):
        model.generate(0)


def test_config_round_trip_and_unknown_keys():
    cfg = DRAWConfig(image_shape=(3, 32, 24), read_n=None)
    assert DRAWConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown DRAWConfig key"):
        DRAWConfig.from_dict(cfg.to_dict() | {"glimpses": 3})


def test_attention_sigma_init():
    # Departure from the paper, documented in docs/DESIGN.md: sigma = delta/2 at the start.
    model = DRAW(DRAWConfig())
    delta0 = (28 - 1) / (2 - 1)
    assert model.read_params.bias[2].item() == pytest.approx(2 * math.log(delta0 / 2), rel=1e-5)
    plain = DRAW(DRAWConfig(attention_sigma_init=False))
    assert abs(plain.read_params.bias[2].item()) < 1


def test_canvas_init():
    # c_0 is a learned bias (section 2.1); its starting value is ours: 0 unless canvas_init is set.
    assert torch.equal(DRAW(DRAWConfig()).canvas0.detach(), torch.zeros(1, 28, 28))
    model = DRAW(DRAWConfig(image_shape=(3, 5, 7), canvas_init=-6))
    assert torch.equal(model.canvas0.detach(), torch.full((3, 5, 7), -6.0))
    assert model.canvas0.requires_grad
    # the first canvas sigma(c_0) is near black, so the first error image (eq. 3) is nearly x itself
    x = torch.rand(2, 3, 5, 7)
    assert torch.allclose(x - torch.sigmoid(model.initial_state(2).canvas), x, atol=3e-3)
    # a saved config without the key (every model before it) builds the old model
    old = DRAWConfig().to_dict()
    del old["canvas_init"]
    assert DRAWConfig.from_dict(old).canvas_init == 0.0
    for bad in ("-6", float("nan"), float("inf"), None, True):
        with pytest.raises(ValueError, match="canvas_init must be a finite number"):
            DRAWConfig(canvas_init=bad)


# ---------------------------------------------------------------------------- the independent implementation
@pytest.mark.parametrize("read_n, write_n", [(None, None), (None, 3), (2, None), (3, 4)])
def test_readable_model_matches_the_plain_reference_implementation(read_n, write_n):
    """drawnet.DRAW against bench/reference.py, written separately from the paper (nn.LSTMCell,
    autograd, no shared code): the same loss and every parameter's gradient, in float64, on a
    non-square colour image (so a mix-up of width and height or of channels shows)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from reference import ReferenceDRAW

    cfg = DRAWConfig(image_shape=(3, 5, 7), T=4, enc_size=6, dec_size=5, z_size=3, read_n=read_n, write_n=write_n)
    torch.manual_seed(0)
    model = DRAW(cfg).double()
    with torch.no_grad():  # away from zero initial states and biases, so every path carries signal
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref = ReferenceDRAW(cfg.image_shape, cfg.T, cfg.enc_size, cfg.dec_size, cfg.z_size, read_n, write_n).double()
    ref.load_drawnet_state(model.state_dict())
    x = torch.rand(4, 3, 5, 7, dtype=torch.float64).bernoulli()
    noise = torch.randn(cfg.T, 4, cfg.z_size, dtype=torch.float64)

    ours = model.loss(x, noise)["loss"]
    theirs = ref.loss(x, noise)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-10)
    our_grads = torch.autograd.grad(ours, list(model.parameters()))
    their_grads = dict(zip([n for n, _ in ref.named_parameters()], torch.autograd.grad(theirs, list(ref.parameters())),
                           strict=True))
    for (name, _), g in zip(model.named_parameters(), our_grads, strict=True):
        assert g.abs().max() > 0, f"{name}: zero gradient, the comparison would not see a mistake"
        torch.testing.assert_close(g, their_grads[name], rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def test_importance_weighted_estimate_converges_to_the_exact_likelihood():
    """With T = 1 and one latent dimension, log p(x) = log of a 1-d integral over z, computed here by
    quadrature on a fine grid through the model's own decoder. The importance-weighted estimate
    with many samples must reach it, the bound (eq. 12) must lie above it, and the estimate must
    tighten as K grows."""
    from drawnet import evaluate

    cfg = DRAWConfig(image_shape=(1, 3, 3), T=1, enc_size=8, dec_size=8, z_size=1, read_n=None, write_n=None)
    torch.manual_seed(3)
    model = DRAW(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = binary(1, 1, 3, 3, seed=5).double()
    with torch.no_grad():
        out = model(x, noise=torch.zeros(1, 1, 1, dtype=torch.float64))
        mu, sigma = out.mu[0, 0, 0], out.log_sigma[0, 0, 0].exp()
        z = torch.linspace(-10, 10, 20001, dtype=torch.float64)
        xs = x.expand(z.numel(), -1, -1, -1)
        canvas = model(xs, noise=((z - mu) / sigma).view(1, -1, 1)).canvas  # the decoder at each z
        log_px_z = -losses.reconstruction_nll(canvas, xs)
        log_prior = Normal(0.0, 1.0).log_prob(z)
        dz = float(z[1] - z[0])
        exact = float(torch.logsumexp(log_px_z + log_prior, 0) + math.log(dz))
        q = Normal(mu, sigma)
        elbo = float((q.log_prob(z).exp() * log_px_z).sum() * dz - kl_divergence(q, Normal(0.0, 1.0)))
        gen = torch.Generator().manual_seed(0)
        iw_big = float(evaluate.log_likelihood_iw(model, x, 20000, chunk=4096, generator=gen))
        iw_small = [float(evaluate.log_likelihood_iw(model, x, 2, generator=gen)) for _ in range(400)]
    assert abs(iw_big - exact) < 0.02, (iw_big, exact)
    assert elbo < exact - 0.05  # a real gap to close (q is not the true posterior)
    assert elbo < sum(iw_small) / len(iw_small) < iw_big  # K = 2 lies between the bound and K = 20000

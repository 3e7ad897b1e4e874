"""The fused C kernels (drawnet/_kernels.c via drawnet.kernels) against the readable path and PyTorch.

Skipped only where there is no C compiler at all; where there is one, the kernels must build and
load, so a compile error fails here instead of silently falling back.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess

import pytest
import torch

from drawnet import DRAW, DRAWConfig, engine, fast, kernels, losses

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler: drawnet uses its PyTorch path"
)

ATTENTION = [(None, None), (None, 3), (2, None), (3, 4), (2, 5)]


@pytest.fixture(autouse=True)
def fresh_kernel_state():
    kernels.reset()
    yield
    kernels.reset()


def _model(shape, read_n, write_n, T=5, enc=7, dec=6, z=3, num_classes=None) -> DRAW:
    cfg = DRAWConfig(image_shape=shape, T=T, enc_size=enc, dec_size=dec, z_size=z, read_n=read_n, write_n=write_n,
                     conditional=num_classes is not None, num_classes=num_classes)
    torch.manual_seed(0)
    model = DRAW(cfg)
    with torch.no_grad():  # away from the zero initial states and biases, so every path carries signal
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def test_kernels_build_and_load_here():
    assert kernels.usable(torch.zeros(1)), kernels.status()
    assert "in use" in kernels.status()
    assert not kernels.usable(torch.zeros(1, dtype=torch.float64))  # float32 only


@pytest.mark.parametrize("read_n, write_n", ATTENTION)
@pytest.mark.parametrize("shape, num_classes", [((1, 28, 28), None), ((3, 9, 6), None), ((3, 9, 6), 5)])
def test_loss_and_gradients_match_the_readable_path(shape, num_classes, read_n, write_n):
    """float32 with the kernels against the readable path in float64: 37 images (three blocks of 16,
    the last one padded) and T = 17 (two chunks of weight gradients); also class-conditional."""
    model = _model(shape, read_n, write_n, T=17, num_classes=num_classes)
    x = torch.rand(37, *shape).round()
    noise = torch.randn(17, 37, 3)
    labels = torch.arange(37) % num_classes if num_classes else None
    params = list(model.parameters())
    got = engine.choose(model, precision="fp32").loss(model, x, noise, labels=labels)
    got_grads = torch.autograd.grad(got["loss"], params)

    ref_model = copy.deepcopy(model).double()
    out = ref_model(x.double(), noise=noise.double(), labels=labels)
    ref = losses.loss_terms(out.canvas, x.double(), out.mu, out.log_sigma)
    ref_grads = torch.autograd.grad(ref["loss"], list(ref_model.parameters()))

    torch.testing.assert_close(got["loss"].double(), ref["loss"], rtol=2e-5, atol=1e-4)
    torch.testing.assert_close(got["bound_per_image"].double(), ref["bound_per_image"], rtol=2e-5, atol=2e-4)
    for (name, _), a, b in zip(model.named_parameters(), got_grads, ref_grads, strict=True):
        scale = b.abs().max().item()
        assert scale > 0, f"{name}: zero reference gradient, the test would not see a mistake"
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-4 * scale, msg=f"gradient of {name}")


@pytest.mark.parametrize("read_n, write_n", ATTENTION)
@pytest.mark.parametrize("num_classes", [None, 5])
def test_generation_matches_the_readable_path(read_n, write_n, num_classes):
    model = _model((3, 9, 6), read_n, write_n, T=19, num_classes=num_classes)
    labels = torch.arange(37) % num_classes if num_classes else None
    got = engine.choose(model, precision="fp32").generate(model, 37, torch.Generator().manual_seed(4), labels=labels)
    ref = model.generate(37, generator=torch.Generator().manual_seed(4), labels=labels)
    torch.testing.assert_close(got.canvases, ref.canvases, rtol=0, atol=2e-6)
    if write_n is not None:
        for a, b in zip(got.write_windows, ref.write_windows, strict=True):
            torch.testing.assert_close(a, b)


def _lstm_reference(gates, c_prev):
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return c, torch.sigmoid(o) * torch.tanh(c)


def test_lstm_cell_forward_and_backward_against_autograd():
    """Includes gate values far in the tails (|x| up to 60), where exp over- or underflows."""
    torch.manual_seed(1)
    B, H = 19, 40
    gates = (torch.randn(B, 4 * H) * 15).requires_grad_()
    c_prev = torch.randn(B, H).requires_grad_()
    c_ref, h_ref = _lstm_reference(gates, c_prev)
    dh, dh2, dc = torch.randn(B, H), torch.randn(B, H), torch.randn(B, H)
    d_gates_ref, d_c_prev_ref = torch.autograd.grad([c_ref, h_ref], [gates, c_prev], [dc, dh + dh2])

    act, c, h = gates.detach().clone(), torch.empty(B, H), torch.empty(B, H)
    kernels.lstm_forward(act, c_prev.detach(), c, h)
    torch.testing.assert_close(c, c_ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h, h_ref.detach(), rtol=1e-6, atol=1e-6)
    d_gates = torch.empty(B, 4 * H)
    d_c_prev = kernels.lstm_backward(dh, dh2, dc.clone(), act, c_prev.detach(), c, d_gates)
    torch.testing.assert_close(d_gates, d_gates_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_c_prev, d_c_prev_ref, rtol=1e-5, atol=1e-6)


def test_nan_is_not_hidden():
    """A diverged run must still show NaN (the trainer stops on it): the clamps in exp keep NaN."""
    B, H = 3, 16
    gates = torch.zeros(B, 4 * H)
    gates[1, 5] = float("nan")
    c, h = torch.empty(B, H), torch.empty(B, H)
    kernels.lstm_forward(gates, torch.zeros(B, H), c, h)
    assert torch.isnan(h[1, 5]) and torch.isfinite(h[0]).all() and torch.isfinite(h[2]).all()
    x, canvas, out = torch.rand(B, 10), torch.zeros(B, 10), torch.empty(B, 10)
    canvas[2, 3] = float("nan")
    kernels.error_image(x, canvas, out)
    assert torch.isnan(out[2, 3]) and torch.isfinite(out).sum() == B * 10 - 1


def test_error_image_over_the_whole_range():
    x = torch.rand(4, 200)
    canvas = torch.linspace(-120, 120, 800).view(4, 200)
    out = torch.empty(4, 200)
    kernels.error_image(x, canvas, out)
    torch.testing.assert_close(out, x - torch.sigmoid(canvas), rtol=0, atol=3e-7)


@pytest.mark.parametrize("K", [11, 16, 37])
def test_blocked_layout_round_trip(K):
    wide = torch.randn(37, K + 3)
    rows = wide[:, 1 : K + 1]  # rows with a stride larger than K, as column blocks of a product
    blocked = kernels.to_blocked(rows, torch.full((kernels.blocks(37), K, kernels.LANES), float("nan")))
    assert blocked[2, :, 5:].abs().sum() == 0  # padding past image 36 is zero
    b = torch.arange(37)
    assert torch.equal(blocked[b // kernels.LANES, :, b % kernels.LANES], rows)  # a pure copy: exact
    out = torch.full((37, K + 5), 7.0)
    kernels.from_blocked(blocked, out[:, 2 : K + 2])
    assert torch.equal(out[:, 2 : K + 2], rows)
    assert (out[:, :2] == 7).all() and (out[:, K + 2 :] == 7).all()  # nothing written outside the rows
    torch.testing.assert_close(kernels.from_blocked(blocked, torch.empty(37, K), sigmoid=True), torch.sigmoid(rows))
    torch.testing.assert_close(kernels.blocked_sum(blocked, 37), rows.sum(0))


def test_bad_kernel_arguments_are_refused():
    with pytest.raises(ValueError, match="float32"):
        kernels.lstm_forward(
            torch.zeros(2, 8, dtype=torch.float64), torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2)
        )
    with pytest.raises(ValueError, match="contiguous"):
        kernels.lstm_forward(torch.zeros(8, 2).t(), torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2))


# ---------------------------------------------------------------------------- falling back


def _loss_still_works():
    model = _model((1, 6, 6), 2, 3, T=3)
    x = torch.rand(5, 1, 6, 6)
    noise = torch.randn(3, 5, 3)
    got = engine.choose(model, precision="fp32").loss(model, x, noise)["loss"]
    torch.autograd.grad(got, list(model.parameters()))
    torch.testing.assert_close(got, model.loss(x, noise)["loss"], rtol=1e-5, atol=1e-4)


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("DRAWNET_KERNELS", "0")
    assert not kernels.usable(torch.zeros(1))
    assert "DRAWNET_KERNELS=0" in kernels.status()
    _loss_still_works()


def test_no_compiler_falls_back_to_pytorch(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAWNET_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert not kernels.usable(torch.zeros(1))
    assert "no C compiler" in kernels.status()
    _loss_still_works()


def test_a_failing_compiler_falls_back_and_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAWNET_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", shutil.which("false"))
    assert not kernels.usable(torch.zeros(1))
    assert "failed" in kernels.status()
    assert list(tmp_path.iterdir()) == []  # no half-written library
    _loss_still_works()


def test_a_damaged_cached_library_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAWNET_KERNEL_CACHE", str(tmp_path))
    built, _ = kernels._compile(os.environ.get("CC") or "cc")  # compiled, not loaded (a loaded file is mapped)
    record = kernels.record_path(built)
    assert sorted(tmp_path.iterdir()) == [built, record]  # the library, renamed into place, and its record
    assert built.name.startswith("drawnet_kernels-") and built.suffix == ".so"
    assert record.read_text().strip() == hashlib.sha256(built.read_bytes()).hexdigest()
    built.write_bytes(b"not a shared library")
    assert kernels.usable(torch.zeros(1)), kernels.status()
    assert "does not match the SHA-256 its build recorded" in kernels.status()
    assert built.stat().st_size > 1000
    _loss_still_works()


FOREIGN = r"""
#include <stdio.h>
__attribute__((constructor)) static void ran(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) fclose(f);
}
int drawnet_kernels_version(void) { return 2; }
"""


def test_a_foreign_library_under_the_cached_name_is_never_loaded(monkeypatch, tmp_path):
    """A library put in the cache under the expected name (with a record of the real build, and
    with none): its code must not run; the real kernels are built again and used."""
    cache, marker = tmp_path / "cache", tmp_path / "foreign-code-ran"
    monkeypatch.setenv("DRAWNET_KERNEL_CACHE", str(cache))
    monkeypatch.setattr(kernels, "_FLAG_SETS", [[]])  # one build per step below
    compiler = os.environ.get("CC") or "cc"
    built, _ = kernels._compile(compiler)
    (tmp_path / "foreign.c").write_text(FOREIGN)
    foreign = tmp_path / "foreign.so"
    subprocess.run([compiler, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(foreign),
                    str(tmp_path / "foreign.c")], check=True)
    for keep_record, why in ((True, "does not match the SHA-256 its build recorded"), (False, "has no build record")):
        shutil.copyfile(foreign, tmp_path / "planted.so")
        os.replace(tmp_path / "planted.so", built)  # a new file: the loaded library stays mapped intact
        if not keep_record:
            kernels.record_path(built).unlink()
        kernels.reset()
        assert kernels.usable(torch.zeros(1)), kernels.status()
        assert "compiled now" in kernels.status() and why in kernels.status()
        assert not marker.exists(), "the foreign library's code ran"
        assert built.read_bytes() != foreign.read_bytes()
        assert kernels.record_path(built).read_text().strip() == hashlib.sha256(built.read_bytes()).hexdigest()
    kernels.reset()
    assert kernels.usable(torch.zeros(1)) and "compiled now" not in kernels.status()  # the cache is trusted again


def test_fast_path_gives_the_same_loss_with_and_without_kernels(monkeypatch):
    model = _model((1, 12, 12), 2, 4, T=6)
    x = torch.rand(20, 1, 12, 12).round()
    noise = torch.randn(6, 20, 3)
    with_kernels = fast.forward(model, x, noise)
    monkeypatch.setenv("DRAWNET_KERNELS", "0")
    kernels.reset()
    without = fast.forward(model, x, noise)
    for a, b in zip(with_kernels, without, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_portable_build_gives_the_same_results(monkeypatch, tmp_path):
    """The flag set without -march=native (a compiler that does not know this CPU): the plain C
    loops instead of the AVX-512 transposes, the same layout and the same generation."""
    monkeypatch.setenv("DRAWNET_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_FLAG_SETS", [[]])
    assert kernels.usable(torch.zeros(1)), kernels.status()
    test_blocked_layout_round_trip(37)
    test_generation_matches_the_readable_path(2, 5, None)
    test_generation_matches_the_readable_path(2, 5, 3)
    # the bf16 products without AVX512-BF16: scalar code, the same rounded products
    assert not kernels.bf16_native()
    a, w = torch.randn(13, 37), torch.randn(37, 40)
    out = kernels.gemm(torch.empty(13, 40), a, kernels.PackedMatrix(w))
    torch.testing.assert_close(out.double(), a.bfloat16().double() @ w.bfloat16().double(), rtol=1e-6, atol=1e-5)

"""The Gaussian filterbank and read/write against independent computations (eqs 19-29)."""

import math

import pytest
import torch

from drawnet import attention


def reference_filterbank(gx, gy, sigma2, delta, n, width, height):
    """Eqs (19)-(20), (25)-(26) written out with plain Python loops and 1-indexed positions."""
    def axis(centre, size):
        rows = []
        for i in range(1, n + 1):
            mu = centre + (i - n / 2 - 0.5) * delta
            row = [math.exp(-((a - mu) ** 2) / (2 * sigma2)) for a in range(1, size + 1)]
            z = max(sum(row), attention.NORMALISER_EPS)
            rows.append([v / z for v in row])
        return rows
    return axis(gx, width), axis(gy, height)


def test_shapes_on_non_square_image_and_rows_sum_to_one():
    B, n, W, H = 3, 4, 17, 11
    gx = torch.tensor([9.0, 3.0, 14.0])
    gy = torch.tensor([6.0, 2.0, 9.0])
    F_X, F_Y = attention.filterbank(gx, gy, torch.full((B,), 2.0), torch.full((B,), 2.5), n, W, H)
    assert F_X.shape == (B, n, W)
    assert F_Y.shape == (B, n, H)
    torch.testing.assert_close(F_X.sum(-1), torch.ones(B, n))
    torch.testing.assert_close(F_Y.sum(-1), torch.ones(B, n))


def test_values_match_independent_computation():
    cases = [(9.5, 6.0, 1.7, 2.3, 3, 18, 11), (1.0, 30.0, 0.4, 7.0, 5, 28, 40), (14.5, 14.5, 9.0, 27.0, 2, 28, 28)]
    for gx, gy, s2, d, n, W, H in cases:
        F_X, F_Y = attention.filterbank(
            torch.tensor([gx], dtype=torch.float64), torch.tensor([gy], dtype=torch.float64),
            torch.tensor([s2], dtype=torch.float64), torch.tensor([d], dtype=torch.float64), n, W, H,
        )
        ref_x, ref_y = reference_filterbank(gx, gy, s2, d, n, W, H)
        torch.testing.assert_close(F_X[0], torch.tensor(ref_x, dtype=torch.float64))
        torch.testing.assert_close(F_Y[0], torch.tensor(ref_y, dtype=torch.float64))


def test_grid_centred_and_symmetric():
    # g~ = 0 puts the grid centre at the image centre; filters mirror each other about it.
    n, W, H = 4, 20, 12
    window = attention.window_from_raw(torch.zeros(1, 5, dtype=torch.float64), n, W, H)
    assert window.gx.item() == pytest.approx((W + 1) / 2)
    assert window.gy.item() == pytest.approx((H + 1) / 2)
    F_X, F_Y = attention.filterbank_from_window(window, n, W, H)
    a = torch.arange(1, W + 1, dtype=torch.float64)
    centres = (F_X[0] * a).sum(-1)  # each filter's mean position
    torch.testing.assert_close(centres + centres.flip(0), torch.full((n,), float(W + 1), dtype=torch.float64))
    torch.testing.assert_close(F_X[0], F_X[0].flip(0).flip(1))  # mirror symmetry about the centre
    torch.testing.assert_close(F_Y[0], F_Y[0].flip(0).flip(1))


def test_window_from_raw_eqs_22_to_24():
    raw = torch.tensor([[0.5, -0.25, math.log(3.0), math.log(0.5), math.log(2.0)]], dtype=torch.float64)
    w = attention.window_from_raw(raw, 5, 30, 20)
    assert w.gx.item() == pytest.approx(31 / 2 * 1.5)
    assert w.gy.item() == pytest.approx(21 / 2 * 0.75)
    assert w.delta.item() == pytest.approx((30 - 1) / 4 * 0.5)
    assert w.sigma2.item() == pytest.approx(3.0)
    assert w.gamma.item() == pytest.approx(2.0)


def test_filterbank_gradcheck():
    torch.manual_seed(0)
    n, W, H = 3, 7, 5

    def f(gx, gy, s2, d):
        F_X, F_Y = attention.filterbank(gx, gy, s2, d, n, W, H)
        return F_X, F_Y

    args = (
        torch.tensor([3.5, 4.2], dtype=torch.float64, requires_grad=True),
        torch.tensor([2.5, 1.7], dtype=torch.float64, requires_grad=True),
        torch.tensor([1.3, 2.1], dtype=torch.float64, requires_grad=True),
        torch.tensor([1.5, 0.8], dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(f, args)


def test_read_write_read_attention_gradcheck():
    torch.manual_seed(1)
    B, C, n, W, H = 2, 2, 3, 6, 5
    x = torch.rand(B, C, H, W, dtype=torch.float64, requires_grad=True)
    raw = (0.3 * torch.randn(B, 5, dtype=torch.float64)).requires_grad_()

    def f(x, raw):
        w = attention.window_from_raw(raw, n, W, H)
        F_X, F_Y = attention.filterbank_from_window(w, n, W, H)
        r = attention.read_attention(x, 1 - x, F_X, F_Y, w.gamma)
        return attention.write_attention(r.view(B, 2 * C, n, n), F_X, F_Y, w.gamma)

    assert torch.autograd.gradcheck(f, (x, raw))


def test_read_then_write_is_identity_when_grid_matches_pixels():
    # N = width = height, delta = 1, centred, tiny sigma, gamma = 1: F_X = F_Y = identity.
    torch.manual_seed(0)
    B, C, N = 2, 3, 6
    x = torch.rand(B, C, N, N, dtype=torch.float64)
    raw = torch.zeros(B, 5, dtype=torch.float64)
    raw[:, 2] = math.log(0.01)  # sigma^2 = 0.01; log delta~ = 0 gives delta = (N-1)/(N-1) = 1
    w = attention.window_from_raw(raw, N, N, N)
    assert torch.allclose(w.delta, torch.ones(B, dtype=torch.float64))
    F_X, F_Y = attention.filterbank_from_window(w, N, N, N)
    glimpse = attention.read_glimpse(x, F_X, F_Y, w.gamma)
    torch.testing.assert_close(glimpse, x)
    torch.testing.assert_close(attention.write_attention(glimpse, F_X, F_Y, w.gamma), x)


def test_read_matches_einsum_and_gamma_scaling():
    torch.manual_seed(2)
    B, C, n, W, H = 3, 2, 4, 9, 7
    x = torch.rand(B, C, H, W)
    F_X = torch.rand(B, n, W)
    F_Y = torch.rand(B, n, H)
    gamma = torch.tensor([0.5, 1.0, 2.0])
    expected = gamma[:, None, None, None] * torch.einsum("bjh,bchw,biw->bcji", F_Y, x, F_X)
    torch.testing.assert_close(attention.read_glimpse(x, F_X, F_Y, gamma), expected)
    patch = torch.rand(B, C, n, n)
    expected_w = torch.einsum("bjh,bcji,biw->bchw", F_Y, patch, F_X) / gamma[:, None, None, None]
    torch.testing.assert_close(attention.write_attention(patch, F_X, F_Y, gamma), expected_w)


def test_far_away_filter_is_zero_not_nan():
    F_X, _ = attention.filterbank(torch.tensor([1e4]), torch.tensor([5.0]), torch.tensor([0.01]),
                                  torch.tensor([1.0]), 3, 10, 10)
    assert torch.isfinite(F_X).all()
    assert F_X.abs().max() == 0


def test_bad_attention_arguments():
    with pytest.raises(ValueError, match="N must be >= 2"):
        attention.window_from_raw(torch.zeros(1, 5), 1, 10, 10)
    with pytest.raises(ValueError, match=r"\(batch, 5\)"):
        attention.window_from_raw(torch.zeros(1, 4), 3, 10, 10)
    with pytest.raises(ValueError, match="gx must have shape"):
        attention.filterbank(torch.zeros(1, 1), torch.zeros(1), torch.ones(1), torch.ones(1), 3, 10, 10)

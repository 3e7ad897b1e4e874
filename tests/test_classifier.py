"""The attention classifier ("Differentiable RAM", paper section 4.1) on tiny CPU data."""

from __future__ import annotations

import math

import pytest
import torch

from drawnet import attention
from drawnet.checkpoint import load_model, save_checkpoint
from drawnet.classifier import AttentionClassifier, ClassifierTask, evaluate_classifier
from drawnet.config import ClassifierConfig
from drawnet.data import ImageDataset, get_dataset
from drawnet.presets import CLASSIFIER_PRESETS
from drawnet.presets import get_classifier_preset as preset

SMALL = ClassifierConfig(image_shape=(1, 20, 24), glimpses=3, hidden_size=16, read_n=4, num_classes=5)


def test_shapes():
    torch.manual_seed(0)
    model = AttentionClassifier(SMALL)
    x = torch.rand(7, 1, 20, 24)
    out = model(x)
    assert out.logits.shape == (7, 5)
    assert out.windows is None and out.glimpses is None
    out = model(x, keep_steps=True)
    assert all(field.shape == (3, 7) for field in out.windows)
    assert out.glimpses.shape == (3, 7, 1, 4, 4)
    seq = model.glimpse_sequence(x)
    assert seq.glimpses.shape == (3, 7, 1, 4, 4)
    assert seq.predicted.shape == (7,) and seq.predicted.dtype == torch.int64
    torch.testing.assert_close(seq.probabilities.sum(1), torch.ones(7))
    assert torch.equal(seq.predicted, out.logits.argmax(1))


def test_colour_images_use_one_filterbank_per_channel():
    config = ClassifierConfig(image_shape=(3, 10, 10), glimpses=2, hidden_size=8, read_n=3, num_classes=2)
    out = AttentionClassifier(config)(torch.rand(4, 3, 10, 10), keep_steps=True)
    assert out.logits.shape == (4, 2)
    assert out.glimpses.shape == (2, 4, 3, 3, 3)


def _gaussian_glimpse(image, gx, gy, sigma2, delta, gamma, n):
    """Eqs (19), (20), (25)-(27) for one single-channel image, written out with Python loops."""
    H, W = image.shape
    fx = [[math.exp(-((a - (gx + (i - n / 2 - 0.5) * delta)) ** 2) / (2 * sigma2)) for a in range(1, W + 1)]
          for i in range(1, n + 1)]
    fy = [[math.exp(-((b - (gy + (j - n / 2 - 0.5) * delta)) ** 2) / (2 * sigma2)) for b in range(1, H + 1)]
          for j in range(1, n + 1)]
    fx = [[v / sum(row) for v in row] for row in fx]
    fy = [[v / sum(row) for v in row] for row in fy]
    return torch.tensor(
        [[gamma * sum(fy[j][b] * image[b, a].item() * fx[i][a] for b in range(H) for a in range(W))
          for i in range(n)] for j in range(n)]
    )


def test_glimpses_are_the_shared_attention_read():
    """Step by hand with drawnet.attention and the model's own layers: same windows, glimpses, logits."""
    torch.manual_seed(1)
    model = AttentionClassifier(SMALL)
    x = torch.rand(2, 1, 20, 24)
    out = model(x, keep_steps=True)
    n, (_, H, W) = SMALL.read_n, SMALL.image_shape
    h, c = model.h0.expand(2, -1), model.c0.expand(2, -1)
    for t in range(SMALL.glimpses):
        raw = model.read_params(h)  # eq. (21) from the previous hidden state
        window = attention.window_from_raw(raw, n, W, H)
        for field, expected in zip(out.windows, window, strict=True):
            torch.testing.assert_close(field[t], expected)
        F_X, F_Y = attention.filterbank(window.gx, window.gy, window.sigma2, window.delta, n, W, H)
        glimpse = attention.read_glimpse(x, F_X, F_Y, window.gamma)
        torch.testing.assert_close(out.glimpses[t], glimpse)
        h, c = model.lstm(glimpse.flatten(1), (h, c))
    torch.testing.assert_close(out.logits, model.classify(h))

    # The first glimpse once more, from the paper's equations written out independently.
    w = out.windows
    for b in range(2):
        expected = _gaussian_glimpse(
            x[b, 0], w.gx[0, b].item(), w.gy[0, b].item(), w.sigma2[0, b].item(), w.delta[0, b].item(),
            w.gamma[0, b].item(), n,
        )
        torch.testing.assert_close(out.glimpses[0, b, 0], expected, rtol=1e-4, atol=1e-5)


def test_first_glimpse_covers_the_whole_image():
    """Our initialisation: sigma = delta/2 and, with log delta~ = 0, filters from pixel 1 to pixel 100."""
    model = AttentionClassifier(ClassifierConfig())
    bias = model.read_params.bias
    assert bias[2].item() == pytest.approx(attention.initial_log_sigma2(12, 100, 100))
    with torch.no_grad():
        bias[0] = bias[1] = bias[3] = 0.0  # grid centred, delta~ = 1
    w = model(torch.zeros(1, 1, 100, 100), keep_steps=True).windows
    assert w.delta[0, 0].item() == pytest.approx(9.0)  # (100 - 1) / (12 - 1)
    assert w.sigma2[0, 0].sqrt().item() == pytest.approx(4.5, rel=1e-5)
    first = w.gx[0, 0] + (1 - 6 - 0.5) * w.delta[0, 0]  # eq. (19), i = 1
    last = w.gx[0, 0] + (12 - 6 - 0.5) * w.delta[0, 0]  # i = N
    assert (first.item(), last.item()) == pytest.approx((1.0, 100.0))
    plain = AttentionClassifier(ClassifierConfig(attention_sigma_init=False))
    assert abs(plain.read_params.bias[2].item()) < 0.1  # PyTorch's default initialisation, sigma ~ 1


def _quadrant_blobs(n: int, seed: int, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3x3 blob at a random place inside one of the four quadrants; the label is the quadrant."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    half = size // 2
    row = (labels // 2) * half + torch.randint(0, half - 2, (n,), generator=g)
    col = (labels % 2) * half + torch.randint(0, half - 2, (n,), generator=g)
    images = torch.zeros(n, 1, size, size)
    for k in range(n):
        images[k, 0, row[k] : row[k] + 3, col[k] : col[k] + 3] = 1.0
    return images, labels


def test_learns_which_quadrant_a_blob_is_in():
    torch.manual_seed(0)
    config = ClassifierConfig(image_shape=(1, 12, 12), glimpses=2, hidden_size=32, read_n=3, num_classes=4)
    task = ClassifierTask(config)
    model = task.build_model()
    x, y = _quadrant_blobs(512, seed=0)
    test = ImageDataset("quadrants", "test", *_quadrant_blobs(400, seed=1), num_classes=4)
    before = task.validate(model, test, 100, "cpu")["error"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        idx = torch.randint(0, 512, (64,), generator=torch.Generator().manual_seed(step))
        loss = task.train_loss(model, x[idx], y[idx])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = task.validate(model, test, 100, "cpu")["error"]
    assert before > 0.5  # chance is 0.75
    assert after < 0.2, f"test error {after:.3f} after training (chance 0.75)"


def test_task_protocol_on_synthetic_data():
    data = get_dataset("synthetic", "valid", image_shape=(1, 16, 16), n=40)
    config = ClassifierConfig(image_shape=(1, 16, 16), glimpses=2, hidden_size=8, read_n=3, num_classes=3)
    task = ClassifierTask(config)
    assert task.kind == "classifier" and task.select_key == "error"
    assert ClassifierConfig.from_dict(task.model_config()) == config
    model = task.build_model()
    x, y = next(data.batches(16))
    terms = task.train_loss(model, x, y)
    assert terms["loss"].requires_grad and terms["loss"].dim() == 0
    assert not terms["error"].requires_grad and 0.0 <= terms["error"].item() <= 1.0
    model.train()
    metrics = task.validate(model, data, 16, "cpu")
    assert model.training  # validate leaves the mode as it found it
    logits = model(data.images).logits
    assert metrics["error"] == pytest.approx((logits.argmax(1) != data.labels).float().mean().item())
    expected_loss = torch.nn.functional.cross_entropy(logits, data.labels).item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert evaluate_classifier(model, data, 7, "cpu")["num_images"] == 40
    with pytest.raises(ValueError, match="labels"):
        task.train_loss(model, x, None)
    with pytest.raises(ValueError, match="labels"):
        evaluate_classifier(model, ImageDataset("u", "test", data.images), 8)
    with pytest.raises(ValueError, match="image_shape"):
        task.validate(model, get_dataset("synthetic", "valid", image_shape=(1, 12, 12), n=4), 4, "cpu")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = AttentionClassifier(SMALL)
    path = save_checkpoint(tmp_path / "c.safetensors", kind="classifier", model=model, model_config=SMALL.to_dict())
    loaded, ckpt = load_model(path)
    assert isinstance(loaded, AttentionClassifier) and loaded.config == SMALL
    x = torch.rand(3, 1, 20, 24)
    torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_config_errors():
    assert ClassifierConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="unknown ClassifierConfig key.*'glimpse'"):
        ClassifierConfig.from_dict({"glimpse": 4})
    with pytest.raises(ValueError, match="read_n"):
        ClassifierConfig(read_n=1)
    with pytest.raises(ValueError, match="glimpses"):
        ClassifierConfig(glimpses=0)
    with pytest.raises(ValueError, match="num_classes"):
        ClassifierConfig(num_classes=1)
    with pytest.raises(ValueError, match="hidden_size"):
        ClassifierConfig(hidden_size=2.5)
    with pytest.raises(ValueError, match="image_shape"):
        ClassifierConfig(image_shape=(100, 100))
    with pytest.raises(ValueError, match="attention_sigma_init"):
        ClassifierConfig(attention_sigma_init="yes")
    with pytest.raises(ValueError, match=r"image_shape=\(1, 20, 24\)"):
        AttentionClassifier(SMALL)(torch.rand(2, 1, 24, 20))
    with pytest.raises(ValueError, match="float"):
        AttentionClassifier(SMALL)(torch.zeros(2, 1, 20, 24, dtype=torch.uint8))


@pytest.mark.parametrize("name", sorted(CLASSIFIER_PRESETS))
def test_presets_are_consistent(name):
    p = preset(name)
    config = ClassifierConfig.from_dict(p["model"])
    assert p["source"]
    size = p["train"]["data_options"]["size"]
    assert config.image_shape == (1, size, size)
    p["train"]["data_options"]["size"] = -1  # a copy: the registry is untouched
    assert CLASSIFIER_PRESETS[name]["train"]["data_options"]["size"] == size
    with pytest.raises(ValueError, match="cluttered100-8"):
        preset("cluttered-100")

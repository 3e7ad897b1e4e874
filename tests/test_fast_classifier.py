"""drawnet.fast_classifier (the classifier's glimpse recurrence in the fused kernels) against the
readable AttentionClassifier, and how ClassifierTask chooses between them."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from drawnet import fast_classifier, kernels
from drawnet.classifier import AttentionClassifier, ClassifierTask, evaluate_classifier
from drawnet.config import ClassifierConfig, TrainConfig
from drawnet.data import get_dataset
from drawnet.fast import BufferPool

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler: the classifier runs the readable model"
)


@pytest.fixture(autouse=True)
def fresh_kernel_state():
    kernels.reset()
    yield
    kernels.reset()


def _model(shape=(1, 20, 24), glimpses=3, hidden=16, read_n=4, classes=5, sigma_init=True) -> AttentionClassifier:
    cfg = ClassifierConfig(image_shape=shape, glimpses=glimpses, hidden_size=hidden, read_n=read_n,
                           num_classes=classes, attention_sigma_init=sigma_init)
    torch.manual_seed(0)
    model = AttentionClassifier(cfg)
    with torch.no_grad():  # away from the zero initial state, so the windows differ from image to image
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _loss_and_grads(model, x, y, logits_fn):
    logits = logits_fn(model, x)
    loss = F.cross_entropy(logits, y)
    return logits, loss, torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize(
    "shape, glimpses, read_n", [((1, 20, 24), 3, 4), ((1, 24, 20), 5, 3), ((3, 9, 6), 2, 2), ((1, 23, 21), 2, 6)]
)
def test_logits_and_gradients_match_the_readable_model(shape, glimpses, read_n):
    """float32 through the kernels against the readable model in float64: 37 images (three blocks
    of 16, the last one padded), non-square and colour images, sides and N that are not multiples
    of the kernel's four-at-a-time sums."""
    model = _model(shape, glimpses, read_n=read_n)
    x = torch.rand(37, *shape)
    y = torch.arange(37) % 5
    assert fast_classifier.supported(model, x), kernels.status()
    got_logits, got_loss, got_grads = _loss_and_grads(model, x, y, fast_classifier.logits)
    ref_model = copy.deepcopy(model).double()
    ref_logits, ref_loss, ref_grads = _loss_and_grads(ref_model, x.double(), y, lambda m, v: m(v).logits)
    torch.testing.assert_close(got_logits.double(), ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    for (name, _), a, b in zip(model.named_parameters(), got_grads, ref_grads, strict=True):
        scale = b.abs().max().item()
        assert scale > 0, f"{name}: zero reference gradient, the test would not see a mistake"
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-4 * scale, msg=f"gradient of {name}")


def test_bf16_products_stay_close_and_buffers_are_reused():
    model = _model()
    x, y = torch.rand(21, 1, 20, 24), torch.arange(21) % 5
    pool = BufferPool()
    _, ref_loss, ref_grads = _loss_and_grads(model, x, y, fast_classifier.logits)
    for _ in range(2):  # the second pass runs in the first one's buffers
        logits, loss, grads = _loss_and_grads(
            model, x, y, lambda m, v: fast_classifier.logits(m, v, precision="bf16", pool=pool)
        )
        assert len(pool) == 1
        torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
        for a, b in zip(grads, ref_grads, strict=True):
            assert (a - b).norm() <= 0.05 * b.norm() + 1e-6
    loss = F.cross_entropy(fast_classifier.logits(model, x, pool=pool), y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):  # its buffers went back to the pool
        loss.backward()
    with torch.no_grad():  # no backward asked for: the buffers go straight back
        torch.testing.assert_close(fast_classifier.logits(model, x, pool=pool), model(x).logits, rtol=1e-4, atol=1e-5)


def test_falls_back_to_the_readable_model_where_it_cannot_run(monkeypatch):
    model = _model().double()
    x = torch.rand(4, 1, 20, 24, dtype=torch.float64)
    assert not fast_classifier.supported(model, x)
    torch.testing.assert_close(fast_classifier.logits(model, x), model(x).logits)  # the readable model
    with pytest.raises(ValueError, match="float32 models on CPU"):
        fast_classifier.final_state(model, x)
    with pytest.raises(ValueError, match="image_shape"):
        fast_classifier.logits(_model(), torch.rand(4, 1, 20, 20))


def test_the_task_chooses_the_fast_path_and_refuses_bf16_without_it(monkeypatch):
    task = ClassifierTask(_model().config)
    model = task.build_model()
    how = task.configure(model, TrainConfig(precision="fp32"), torch.device("cpu"))
    assert task.fast and task.precision == "fp32" and "fast glimpse recurrence" in how
    data = get_dataset("synthetic", "valid", image_shape=(1, 20, 24), n=40)
    data.labels = data.labels % 5
    x, y = next(data.batches(16))
    terms = task.train_loss(model, x, y)
    ref = model.loss(x, y)
    torch.testing.assert_close(terms["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
    fast_eval = evaluate_classifier(model, data, 16, details=True)
    slow_eval = evaluate_classifier(model, data, 16, details=True, fast=False)
    assert fast_eval["confusion"] == slow_eval["confusion"]
    assert fast_eval["loss"] == pytest.approx(slow_eval["loss"], rel=1e-5)

    how = task.configure(model, TrainConfig(precision="auto"), torch.device("cpu"))
    assert task.fast and task.precision == "fp32" and "precision auto: float32" in how  # even with native bf16
    how = task.configure(model, TrainConfig(precision="bf16"), torch.device("cpu"))
    assert task.fast and task.precision == "bf16" and "bf16 matrix products" in how

    how = task.configure(model, TrainConfig(precision="fp32", fast=False), torch.device("cpu"))
    assert not task.fast and "readable" in how
    with pytest.raises(ValueError, match="bf16 products need the fast glimpse recurrence.*fast=false"):
        task.configure(model, TrainConfig(precision="bf16", fast=False), torch.device("cpu"))
    monkeypatch.setenv("DRAWNET_KERNELS", "0")
    kernels.reset()
    how = task.configure(model, TrainConfig(precision="auto"), torch.device("cpu"))
    assert not task.fast and task.precision == "fp32" and "running the readable model" in how
    with pytest.raises(ValueError, match="DRAWNET_KERNELS=0"):  # says why there is no fast path
        task.configure(model, TrainConfig(precision="bf16"), torch.device("cpu"))

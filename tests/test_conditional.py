"""Class-conditional DRAW: where the label enters, what it changes, checkpoints, evaluation, and
fitting a model config to its data (drawnet.tasks.fit_to_data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drawnet import DRAW, DRAWConfig, engine, evaluate, losses
from drawnet.checkpoint import load_model, save_checkpoint
from drawnet.config import TrainConfig
from drawnet.data import ImageDataset, custom, get_dataset
from drawnet.tasks import DRAWTask, fit_to_data


def cond_config(**kw) -> DRAWConfig:
    base = dict(image_shape=(1, 6, 5), T=3, enc_size=8, dec_size=7, z_size=3, read_n=None, write_n=None,
                conditional=True, num_classes=3)
    return DRAWConfig(**(base | kw))


def model_of(cfg: DRAWConfig, seed: int = 0) -> DRAW:
    torch.manual_seed(seed)
    model = DRAW(cfg)
    with torch.no_grad():  # away from zero initial states so the label's weights carry signal
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


# ------------------------------------------------------------------------------------ config
def test_defaults_are_the_unconditional_paper_model_and_old_configs_load():
    cfg = DRAWConfig()
    assert not cfg.conditional and cfg.num_classes is None
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("conditional", "num_classes")}
    assert DRAWConfig.from_dict(old) == cfg  # a checkpoint written before these fields existed
    plain = DRAW(DRAWConfig(image_shape=(1, 6, 5), T=2, enc_size=8, dec_size=7, z_size=3, read_n=2, write_n=3))
    assert plain.encoder.weight_ih.shape[1] == 2 * 2 * 2 + 7 and plain.decoder.weight_ih.shape[1] == 3


@pytest.mark.parametrize("kw,match", [
    ({"num_classes": 10}, "num_classes=10 is set but conditional is false"),
    ({"conditional": True, "num_classes": 0}, "num_classes must be a positive int"),
    ({"conditional": "yes"}, "conditional must be true or false"),
])
def test_bad_conditional_config(kw, match):
    with pytest.raises(ValueError, match=match):
        DRAWConfig(**kw)


def test_a_conditional_model_needs_its_number_of_classes():
    with pytest.raises(ValueError, match="a conditional DRAW needs num_classes"):
        DRAW(DRAWConfig(conditional=True))


# --------------------------------------------------------------------------- where y enters
@pytest.mark.parametrize("read_n,write_n", [(None, None), (2, 3)])
def test_the_one_hot_label_is_an_input_of_both_lstms_at_every_step(read_n, write_n):
    cfg = cond_config(read_n=read_n, write_n=write_n)
    model = model_of(cfg)
    seen = {"encoder": [], "decoder": []}
    for name in seen:
        getattr(model, name).register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].detach()))
    labels = torch.tensor([2, 0, 1, 2])
    one_hot = F.one_hot(labels, 3).float()
    model(torch.rand(4, 1, 6, 5), labels=labels)
    R = model.encoder.weight_ih.shape[1] - 3 - cfg.dec_size  # the read's width; then y, then h^dec
    assert len(seen["encoder"]) == len(seen["decoder"]) == cfg.T
    for enc_in, dec_in in zip(seen["encoder"], seen["decoder"], strict=True):
        torch.testing.assert_close(enc_in[:, R : R + 3], one_hot)  # eq. (5): [r_t, y, h^dec_{t-1}]
        torch.testing.assert_close(dec_in[:, cfg.z_size :], one_hot)  # eq. (7): [z_t, y]
    seen["decoder"].clear()
    model.generate(4, torch.Generator().manual_seed(0), labels=labels)
    assert len(seen["decoder"]) == cfg.T
    assert all(torch.equal(d[:, cfg.z_size :], one_hot) for d in seen["decoder"])  # eq. (14)


def test_only_the_weights_of_the_given_class_get_a_gradient():
    model = model_of(cond_config())
    R = model.encoder.weight_ih.shape[1] - 3 - model.config.dec_size
    Z = model.config.z_size
    model.loss(torch.rand(5, 1, 6, 5).bernoulli(), labels=torch.full((5,), 1))["loss"].backward()
    enc_cols = model.encoder.weight_ih.grad[:, R : R + 3].abs().sum(0)
    dec_cols = model.decoder.weight_ih.grad[:, Z:].abs().sum(0)
    for cols in (enc_cols, dec_cols):
        assert cols[1] > 0 and cols[0] == 0 and cols[2] == 0


def test_samples_of_one_label_differ_from_another_with_the_same_noise():
    model = model_of(cond_config())
    n = 6

    def draw(label):
        return model.generate(n, torch.Generator().manual_seed(7), labels=torch.full((n,), label)).canvases

    assert torch.equal(draw(1), draw(1))  # the same noise and label: the same images
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert (draw(a) - draw(b)).abs().amax() > 1e-3
    # the fast path the commands use draws the same images
    chosen = engine.choose(model)
    assert chosen.fast, chosen.describe()
    got = chosen.generate(model, n, torch.Generator().manual_seed(7), labels=torch.full((n,), 2)).canvases
    torch.testing.assert_close(got, draw(2), rtol=0, atol=2e-6)


def test_labels_are_checked():
    model = model_of(cond_config())
    x = torch.rand(2, 1, 6, 5)
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        model.loss(x)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\).*\[0, 3\]"):
        model.loss(x, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"a \(2,\) tensor of integer class indices"):
        model.loss(x, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"a \(3,\) tensor"):
        model.generate(3, labels=torch.tensor([0, 1]))
    plain = DRAW(DRAWConfig(image_shape=(1, 6, 5), T=2, enc_size=8, dec_size=7, z_size=3, read_n=None, write_n=None))
    with pytest.raises(ValueError, match="unconditional .* takes no labels"):
        plain.loss(x, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional .* takes no labels"):
        engine.choose(plain).generate(plain, 2, labels=torch.tensor([0, 1]))


# ------------------------------------------------------------------- checkpoints, evaluation
def test_checkpoint_of_a_conditional_model_round_trips(tmp_path):
    cfg = cond_config(read_n=2, write_n=3)
    model = model_of(cfg)
    path = save_checkpoint(tmp_path / "c.safetensors", kind="draw", model=model, model_config=cfg.to_dict())
    loaded, ckpt = load_model(path)
    assert loaded.config == cfg and loaded.config.conditional and loaded.config.num_classes == 3
    labels = torch.tensor([0, 1, 2, 1])
    a = model.generate(4, torch.Generator().manual_seed(3), labels=labels).canvases
    b = loaded.generate(4, torch.Generator().manual_seed(3), labels=labels).canvases
    assert torch.equal(a, b)


def test_the_bound_is_of_log_p_x_given_y_with_the_data_sets_labels():
    model = model_of(cond_config()).eval()
    x = torch.rand(7, 1, 6, 5).bernoulli()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    data = ImageDataset("toy", "test", x, y, 3)
    got = evaluate.nll_bound(model, data, batch_size=3, seed=5)
    assert got["bound_of"] == "-log p(x | y)"
    # independently: the readable model with the same noise, batch by batch
    g = torch.Generator().manual_seed(5)
    total = 0.0
    for start in range(0, 7, 3):
        with torch.no_grad():
            out = model(x[start : start + 3], generator=g, labels=y[start : start + 3])
        terms = losses.loss_terms(out.canvas, x[start : start + 3], out.mu, out.log_sigma)
        total += float(terms["bound_per_image"].sum())
    assert got["nll_bound"] == pytest.approx(total / 7, rel=1e-6)
    # with other labels the bound changes (the labels are used)
    other = evaluate.nll_bound(model, ImageDataset("toy", "test", x, (y + 1) % 3, 3), batch_size=3, seed=5)
    assert other["nll_bound"] != pytest.approx(got["nll_bound"], rel=1e-6)
    iw = evaluate.nll_importance_weighted(model, data, 4, batch_size=3, seed=1)
    assert iw["bound_of"] == "-log p(x | y)" and np.isfinite(iw["nll_iw"])
    with pytest.raises(ValueError, match="conditional model is evaluated on labelled images"):
        evaluate.nll_bound(model, ImageDataset("toy", "test", x), batch_size=3)


def test_the_task_trains_on_the_labels_and_refuses_unlabelled_data():
    cfg = cond_config()
    task = DRAWTask(cfg)
    model = task.build_model()
    how = task.configure(model, TrainConfig(), torch.device("cpu"))
    assert "fast recurrence" in how and "-log p(x | y)" in how
    x = torch.rand(4, 1, 6, 5).bernoulli()
    g = torch.Generator().manual_seed(0)
    a = task.train_loss(model, x, torch.tensor([0, 1, 2, 0]), generator=g, shard=(0, 1))["loss"]
    g = torch.Generator().manual_seed(0)
    b = task.train_loss(model, x, torch.tensor([1, 2, 0, 1]), generator=g, shard=(0, 1))["loss"]
    assert torch.isfinite(a) and a != b
    with pytest.raises(ValueError, match="trains on labelled images"):
        task.train_loss(model, x, None, generator=g, shard=(0, 1))


def test_a_tiny_conditional_model_learns_to_draw_the_class_asked_for():
    """Synthetic shapes (0 square, 1 stroke, 2 ring): after a short training each class's samples lie
    closest to that class's own mean image."""
    torch.manual_seed(0)
    cfg = DRAWConfig(image_shape=(1, 10, 10), T=4, enc_size=48, dec_size=48, z_size=4, read_n=None, write_n=None,
                     conditional=True, num_classes=3)
    model = DRAW(cfg)
    data = get_dataset("synthetic", "train", image_shape=(1, 10, 10), n=768)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(6):
        for x, y in data.batches(64, epoch=epoch, shuffle=True):
            loss = model.loss(x, labels=y)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    means = torch.stack([data.images[data.labels == k].mean(0) for k in range(3)])  # (3, 1, 10, 10)
    for k in range(3):
        samples = model.generate(32, torch.Generator().manual_seed(1), labels=torch.full((32,), k)).canvases[-1]
        distance = ((samples.mean(0, keepdim=True) - means) ** 2).flatten(1).sum(1)
        assert distance.argmin() == k, (k, distance.tolist())


# ------------------------------------------------------------------------------ fit_to_data
@pytest.fixture
def labelled_folder(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("DRAWNET_DATA", str(tmp_path / "cache"))
    custom._MEMO.clear()
    rng = np.random.default_rng(0)
    for name in ("ant", "bee", "cat", "dog"):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(tmp_path / "pics" / name / f"{i}.png")
    yield tmp_path / "pics"
    custom._MEMO.clear()


def test_fit_to_data_takes_the_shape_and_classes_from_the_data(labelled_folder):
    train = TrainConfig(data="images", data_options={"path": str(labelled_folder)})
    model, fitted, notices = fit_to_data(DRAWConfig(conditional=True), train)
    assert model.image_shape == (3, 9, 7) and model.num_classes == 4
    assert any("replaced by the data's (3, 9, 7)" in n for n in notices)
    assert any("4 classes" in n for n in notices)
    # a fixed image_shape resizes the images instead, recorded in the data options
    model, fitted, notices = fit_to_data(DRAWConfig(image_shape=(1, 8, 8)), train, fixed={"image_shape"})
    assert model.image_shape == (1, 8, 8)
    assert fitted.data_options["size"] == [8, 8] and fitted.data_options["channels"] == 1
    assert get_dataset("images", "train", **fitted.data_options).image_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="num_classes=2 but data set 'images' .* has 4 classes"):
        fit_to_data(DRAWConfig(conditional=True, num_classes=2), train)


def test_fit_to_data_refuses_a_conditional_model_on_unlabelled_images(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 4, 4), np.uint8))
    train = TrainConfig(data="images", data_options={"path": str(tmp_path / "x.npy")})
    with pytest.raises(ValueError, match=r"conditional model \(conditional=true\) needs labelled images.*x\.npy"):
        fit_to_data(DRAWConfig(conditional=True), train)
    model, _, _ = fit_to_data(DRAWConfig(), train)  # unconditional: fine
    assert model.image_shape == (1, 4, 4)

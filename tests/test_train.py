"""End-to-end training on tiny synthetic data: resume, kill -9, NaN, evaluation, DDP."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from drawnet import DRAWConfig, checkpoint, evaluate, losses
from drawnet.cli import main
from drawnet.commands._settings import parse_overrides
from drawnet.data import get_dataset
from drawnet.tasks import DRAWTask
from drawnet.train import TrainConfig, TrainingDiverged, run_training

MODEL = ["T=3", "enc_size=16", "dec_size=16", "z_size=4", "read_n=3", "write_n=3", "image_shape=[1,12,10]"]
DATA = ['data=synthetic', 'data_options={"n":64,"image_shape":[1,12,10]}']
TRAIN = ["batch_size=16", "epochs=2", "max_minutes=null", "log_every=1", "pictures=false", "tensorboard=false",
         "valid_batch_size=64"]


def sets(*extra):
    return [arg for kv in (*MODEL, *DATA, *TRAIN, *extra) for arg in ("--set", kv)]


def train_cli(out, *extra, resume=False):
    args = ["train", "--quiet"] + (["--resume", str(out)] if resume else ["--preset", "demo", "--out", str(out)])
    return main(args + (sets(*extra) if not resume else [a for kv in extra for a in ("--set", kv)]))


def weights(run):
    return checkpoint.load_checkpoint(Path(run) / "checkpoints" / "last.safetensors").model_state


def train_losses(run):
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_train_writes_run_directory(tmp_path):
    assert train_cli(tmp_path / "run") == 0
    run = tmp_path / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "draw" and cfg["preset"] == "demo" and cfg["model"]["T"] == 3
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "valid"] == [4, 8]
    assert all({"loss", "L_x", "L_z", "images_per_s"} <= set(r) for r in records if r["kind"] == "train")
    assert (run / "checkpoints" / "best.safetensors").is_file()
    ckpt = checkpoint.load_checkpoint(run, prefer=checkpoint.LAST)
    assert ckpt.trainer_state["step"] == 8 and ckpt.trainer_state["epoch"] == 2


def test_same_seed_same_losses(tmp_path):
    train_cli(tmp_path / "a")
    train_cli(tmp_path / "b")
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")
    train_cli(tmp_path / "c", "seed=1")
    assert train_losses(tmp_path / "a") != train_losses(tmp_path / "c")


def test_resume_matches_uninterrupted_run(tmp_path):
    train_cli(tmp_path / "full")
    train_cli(tmp_path / "part", "max_steps=5")  # stops inside the second epoch
    assert checkpoint.load_checkpoint(tmp_path / "part", prefer=checkpoint.LAST).trainer_state["step"] == 5
    assert train_cli(tmp_path / "part", "max_steps=null", resume=True) == 0
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")
    assert_same_weights(weights(tmp_path / "part"), weights(tmp_path / "full"))


def test_time_limit_stops_validates_and_resumes(tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, "max_minutes=0.00001") == 0  # stops after the first step
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["train", "valid"]
    state = checkpoint.load_checkpoint(run, prefer=checkpoint.LAST).trainer_state
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (1, 0, 1)
    assert train_cli(run, "max_minutes=null", resume=True) == 0
    assert train_losses(run) == train_losses_of_fresh_run(tmp_path / "fresh")


def train_losses_of_fresh_run(out):
    train_cli(out)
    return train_losses(out)


def test_resume_can_lower_the_learning_rate(tmp_path):
    run = tmp_path / "run"
    train_cli(run, "max_steps=2")
    assert train_cli(run, "max_steps=3", "lr=1e-4", resume=True) == 0
    state = checkpoint.load_checkpoint(run, prefer=checkpoint.LAST).trainer_state
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [1e-4]
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 1e-4


def test_resume_can_change_the_gradient_clip(tmp_path):
    run = tmp_path / "run"
    train_cli(run, "max_steps=2", "grad_clip=1")
    assert json.loads((run / "config.json").read_text())["train"]["grad_clip"] == 1
    assert train_cli(run, "max_steps=3", "grad_clip=1e4", resume=True) == 0
    assert json.loads((run / "config.json").read_text())["train"]["grad_clip"] == 1e4
    # every train record says how large the gradient was before clipping and how often the clip acted
    train = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert train and all(r["grad_norm"] > 0 and 0 <= r["clipped"] <= 1 for r in train)
    # log_every=1 here: one step a record; steps 1-2 ran with the clip at 1 (it acted), step 3 at 1e4 (it did not)
    assert [r["clipped"] for r in train] == [1.0, 1.0, 0.0]
    assert checkpoint.load_checkpoint(run, prefer=checkpoint.LAST).train_config["grad_clip"] == 1e4


def test_attention_grad_clip_trains_logs_and_may_change_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(run, "max_steps=2", "attention_grad_clip=1e-6") == 0  # below every row: all clipped
    assert train_cli(run, "max_steps=3", "attention_grad_clip=1e9", resume=True) == 0  # above every row
    assert checkpoint.load_checkpoint(run, prefer=checkpoint.LAST).train_config["attention_grad_clip"] == 1e9
    train = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["clipped_attention"] for r in train] == [1.0, 1.0, 0.0]  # log_every=1: one step a record
    # the same first steps without the clip: the same loss (the forward pass is unchanged), other weights
    train_cli(tmp_path / "plain", "max_steps=2")
    assert train_losses(tmp_path / "plain")[1] == train_losses(run)[1]
    assert train_losses(tmp_path / "plain")[2] != train_losses(run)[2]
    assert "clipped_attention" not in json.loads((tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[0])
    # a model without attention has nothing to clip: one clear error before any step
    capsys.readouterr()
    assert train_cli(tmp_path / "noattn", "read_n=null", "write_n=null", "attention_grad_clip=1") == 2
    assert "attention_grad_clip=1 needs a model with attention" in capsys.readouterr().err
    assert not (tmp_path / "noattn" / "metrics.jsonl").exists()


def test_attention_grad_clip_can_stop_after_the_first_epochs(tmp_path, capsys):
    run = tmp_path / "run"  # 4 steps an epoch, 2 epochs; the clip (below every row) in the first epoch only
    assert train_cli(run, "attention_grad_clip=1e-6", "attention_grad_clip_epochs=1") == 0
    train = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["clipped_attention"] for r in train] == [1.0] * 4 + [0.0] * 4
    # the first epoch as with the clip throughout, the second as without it
    train_cli(tmp_path / "always", "attention_grad_clip=1e-6", "max_steps=5")
    first = train_losses(run)
    assert [first[k] for k in range(1, 6)] == [train_losses(tmp_path / "always")[k] for k in range(1, 6)]
    train_cli(tmp_path / "half", "attention_grad_clip=1e-6", "max_steps=4")
    assert train_cli(tmp_path / "half", "max_steps=null", "attention_grad_clip_epochs=1", resume=True) == 0
    assert train_losses(tmp_path / "half") == first  # set on resume, at the epoch's end: the same run
    # attention_grad_clip_after: another clip from that epoch on. Below every row, the whole run is
    # the clipped one; a limit no row reaches, the run whose clip stops
    tight = tmp_path / "tight"
    assert train_cli(tight, "attention_grad_clip=1e-6", "attention_grad_clip_epochs=1",
                     "attention_grad_clip_after=1e-6") == 0
    records = [r for r in map(json.loads, (tight / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["clipped_attention"] for r in records] == [1.0] * 8
    train_cli(tmp_path / "always8", "attention_grad_clip=1e-6")
    assert train_losses(tight) == train_losses(tmp_path / "always8") != first
    loose = tmp_path / "loose"  # set on resume, as for a restart
    train_cli(loose, "attention_grad_clip=1e-6", "attention_grad_clip_epochs=1", "max_steps=4")
    assert train_cli(loose, "max_steps=null", "attention_grad_clip_after=1e9", resume=True) == 0
    records = [r for r in map(json.loads, (loose / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["clipped_attention"] for r in records] == [1.0] * 4 + [0.0] * 4
    assert train_losses(loose) == first
    capsys.readouterr()
    assert train_cli(tmp_path / "bad", "attention_grad_clip_epochs=2") == 2
    err = capsys.readouterr().err
    assert "attention_grad_clip_epochs=2 is invalid: applies only with attention_grad_clip > 0" in err
    assert train_cli(tmp_path / "bad2", "attention_grad_clip=1", "attention_grad_clip_after=10") == 2
    err = capsys.readouterr().err
    assert "attention_grad_clip_after=10.0 is invalid: is the clip from epoch attention_grad_clip_epochs on" in err
    assert train_cli(tmp_path / "bad3", "attention_grad_clip=1", "attention_grad_clip_epochs=1",
                     "attention_grad_clip_after=-1") == 2
    assert "attention_grad_clip_after=-1" in capsys.readouterr().err


def test_refuses_to_overwrite_and_bad_resume(tmp_path, capsys):
    train_cli(tmp_path / "run", "max_steps=1")
    assert train_cli(tmp_path / "run") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert train_cli(tmp_path / "run", "T=5", resume=True) == 2
    assert "cannot change ['T'] when resuming" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_resume_refuses_when_the_code_changed_the_parameters(tmp_path, capsys, monkeypatch):
    """A long run resumed by a drawnet whose DRAW has other parameters stops with one clear line."""
    from torch import nn

    from drawnet.model import DRAW

    train_cli(tmp_path / "run", "max_steps=1")
    original = DRAW.__init__

    def with_an_extra_parameter(self, config):
        original(self, config)
        self.extra = nn.Parameter(torch.zeros(3))

    monkeypatch.setattr(DRAW, "__init__", with_an_extra_parameter)
    capsys.readouterr()
    assert train_cli(tmp_path / "run", "max_steps=2", resume=True) == 2
    err = capsys.readouterr().err
    assert "missing ['extra']" in err and "builds the model's parameters differently" in err
    assert "Traceback" not in err
    assert checkpoint.load_checkpoint(tmp_path / "run", prefer=checkpoint.LAST).trainer_state["step"] == 1


def test_unknown_preset_key_and_type_fail_early(tmp_path, capsys):
    assert main(["train", "--preset", "mnsit", "--out", str(tmp_path / "r")]) == 2
    assert "unknown preset 'mnsit'; choose one of: mnist" in capsys.readouterr().err
    assert main(["train", "--preset", "demo", "--out", str(tmp_path / "r"), "--set", "bogus=1"]) == 2
    assert "unknown setting 'bogus'; valid settings:" in capsys.readouterr().err
    assert main(["train", "--preset", "demo", "--out", str(tmp_path / "r"), "--set", "batch_size=1.5"]) == 2
    assert "expected a value of type int" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_parse_overrides_types():
    o = parse_overrides(["lr=3e-4", "read_n=null", "image_shape=[3,32,32]", "data=cifar10", "tensorboard=false"],
                        model=DRAWConfig, train=TrainConfig)
    assert o == {"model": {"read_n": None, "image_shape": (3, 32, 32)},
                 "train": {"lr": 3e-4, "data": "cifar10", "tensorboard": False}}


def test_image_shape_mismatch_is_reported(tmp_path, capsys):
    assert main(["train", "--preset", "demo", "--out", str(tmp_path / "r"), *sets("image_shape=[1,28,28]")]) == 2
    assert "model is built for images of shape (1, 28, 28)" in capsys.readouterr().err


class NaNAt(DRAWTask):
    def __init__(self, config, step):
        super().__init__(config)
        self.calls, self.step = 0, step

    def train_loss(self, model, x, y, **kwargs):
        terms = super().train_loss(model, x, y, **kwargs)
        self.calls += 1
        if self.calls > self.step:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def small_configs(**train):
    overrides = parse_overrides(MODEL + DATA + TRAIN, model=DRAWConfig, train=TrainConfig)
    from drawnet.presets import resolve

    model_cfg, train_cfg = resolve("demo", {"model": overrides["model"], "train": overrides["train"] | train})
    return model_cfg, train_cfg


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    model_cfg, train_cfg = small_configs()
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 6"):
        run_training(NaNAt(model_cfg, 6), train_cfg, tmp_path / "run", progress=False)
    ckpt = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert ckpt.trainer_state["step"] == 4  # the end of the first epoch, before the NaN
    assert all(torch.isfinite(v).all() for v in ckpt.model_state.values())


def test_eval_cli_and_json(tmp_path, capsys):
    train_cli(tmp_path / "run")
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # so that an ignored --threads 1 would show
    try:
        assert main(["eval", str(tmp_path / "run"), "--iw", "5", "--json", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out)
    assert result["iw_samples"] == 5 and result["num_images"] == 64
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["nll_bound"] == result["nll_bound"]
    assert main(["eval", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert "DRAW without attention" in text and "this model, bound" in text
    assert "evaluated on synthetic, not binarized MNIST digits: Table 2 is shown for reference only" in text


@pytest.mark.parametrize("data, shape, conditional, comparable", [
    ("mnist", (1, 28, 28), False, True),
    ("binarized_mnist", (1, 28, 28), False, True),
    ("static_mnist", (1, 28, 28), False, True),
    ("mnist", (1, 28, 28), True, False),  # a bound on -log p(x | y)
    ("fashion_mnist", (1, 28, 28), False, False),
    ("two_digit_mnist", (1, 60, 60), False, False),  # "mnist" in the name, other images
    ("cluttered_mnist", (1, 100, 100), False, False),
    ("synthetic", (1, 28, 28), False, False),
])
def test_which_bounds_compare_with_table2(data, shape, conditional, comparable):
    from drawnet.evaluate import table2_comparable

    assert table2_comparable(data, shape, conditional) is comparable


@pytest.mark.parametrize("option, value", [("--limit", "0"), ("--iw-limit", "-1"), ("--samples", "0"),
                                           ("--batch-size", "0"), ("--iw-chunk", "0"), ("--iw", "-5"),
                                           ("--threads", "0")])
def test_eval_refuses_a_non_positive_number_before_loading_anything(tmp_path, capsys, option, value):
    assert main(["eval", str(tmp_path / "no-run"), option, value]) == 2
    err = capsys.readouterr().err
    assert err.count("drawnet: error:") == 1 and option in err and value in err and "Traceback" not in err


def test_the_estimate_takes_one_sample_of_every_image_per_pass_at_least():
    model, data = _tiny_model_and_data()
    x = data.images[:8]
    # a chunk smaller than the batch still runs (one copy of each image per pass), and the CPU's
    # default is the small pass that bench/iw_speed.py measured fastest
    assert evaluate.iw_chunk("cpu") == 200 and evaluate.iw_chunk(torch.device("cuda", 0)) == 4096
    got = evaluate.log_likelihood_iw(model, x, 4, chunk=3, generator=torch.Generator().manual_seed(1))
    assert got.shape == (8,) and torch.isfinite(got).all()
    with pytest.raises(ValueError, match="chunk .* must be positive"):
        evaluate.log_likelihood_iw(model, x, 4, chunk=0)


def _tiny_model_and_data():
    torch.manual_seed(0)
    from drawnet import DRAW

    model = DRAW(DRAWConfig(image_shape=(1, 12, 10), T=3, enc_size=16, dec_size=16, z_size=4, read_n=3, write_n=3))
    return model, get_dataset("synthetic", "test", n=32, image_shape=(1, 12, 10))


def test_evaluation_matches_the_readable_path():
    model, data = _tiny_model_and_data()
    fast_result = evaluate.nll_bound(model, data, batch_size=10, seed=3)
    g = torch.Generator().manual_seed(3)
    total = 0.0
    for start in range(0, len(data), 10):
        x = data.images[start : start + 10]
        with torch.no_grad():
            out = model(x, generator=g)  # the readable recurrence of model.py
        total += float(losses.loss_terms(out.canvas, x, out.mu, out.log_sigma)["bound_per_image"].sum())
    assert fast_result["nll_bound"] == pytest.approx(total / len(data), rel=1e-5)
    x = data.images[:4]
    with torch.no_grad():
        out = model(x.repeat(3, 1, 1, 1), generator=torch.Generator().manual_seed(5))
    log_w = losses.log_importance_weight(out.canvas, x.repeat(3, 1, 1, 1), out.z, out.mu, out.log_sigma).view(3, 4)
    expected = torch.logsumexp(log_w.double(), 0) - math.log(3)
    got = evaluate.log_likelihood_iw(model, x, 3, chunk=12, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_importance_weighted_estimate_is_at_most_the_bound():
    model, data = _tiny_model_and_data()
    bound = evaluate.nll_bound(model, data, samples=20)["nll_bound"]
    iw = evaluate.nll_importance_weighted(model, data, K=200, chunk=3200)["nll_iw"]
    assert iw < bound


def test_importance_weighted_with_one_sample_is_the_bound_in_expectation():
    model, data = _tiny_model_and_data()
    bound = evaluate.nll_bound(model, data, samples=50)["nll_bound"]
    repeats = [evaluate.nll_importance_weighted(model, data, K=1, seed=s)["nll_iw"] for s in range(50)]
    mean = sum(repeats) / len(repeats)
    spread = torch.tensor(repeats).std().item() / len(repeats) ** 0.5
    assert abs(mean - bound) < 4 * spread + 0.05, (mean, bound, spread)


def test_the_bound_reports_its_standard_error_from_the_posterior_noise():
    """With S >= 2 draws per image nll_bound says how far its number would move with other noise, the
    images held fixed: the spread of single-draw estimates over seeds, divided by sqrt(S)."""
    model, data = _tiny_model_and_data()
    assert evaluate.nll_bound(model, data)["sampling_se"] is None
    result = evaluate.nll_bound(model, data, samples=8, seed=1)
    single = torch.tensor([evaluate.nll_bound(model, data, seed=100 + s)["nll_bound"] for s in range(40)])
    expected = single.std().item() / math.sqrt(8)
    assert result["sampling_se"] > 0
    assert 0.6 * expected < result["sampling_se"] < 1.6 * expected, (result["sampling_se"], expected)


def test_checkpoint_errors(tmp_path):
    train_cli(tmp_path / "run", "max_steps=1")
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable drawnet checkpoint"):
        checkpoint.load_checkpoint(truncated)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a drawnet checkpoint"):
        checkpoint.load_checkpoint(other)
    ckpt = checkpoint.load_checkpoint(path)
    future = tmp_path / "future.safetensors"
    save_file({"model.w": torch.zeros(1)}, str(future), metadata={"format": checkpoint.FORMAT, "format_version": "99"})
    with pytest.raises(ValueError, match="format version 99"):
        checkpoint.load_checkpoint(future)
    from drawnet import DRAW

    with pytest.raises(ValueError, match="does not fit this model"):
        checkpoint.load_state_strict(DRAW(DRAWConfig(T=3, enc_size=8, dec_size=8, z_size=4)), ckpt)


def test_checkpoint_loading_never_unpickles(tmp_path, monkeypatch):
    import pickle

    train_cli(tmp_path / "run", "max_steps=1")

    def forbidden(*a, **k):
        raise AssertionError("pickle used while loading a checkpoint")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, ckpt = checkpoint.load_model(tmp_path / "run")
    assert ckpt.kind == "draw"


# ------------------------------------------------------------------ subprocess checks (slow)
def _cli(*args):
    return [sys.executable, "-m", "drawnet.cli", *args]


@pytest.mark.slow
def test_kill_minus_9_then_resume(tmp_path):
    full = tmp_path / "full"
    train_cli(full, "epochs=8")
    run = tmp_path / "run"
    extra = ("epochs=8", "checkpoint_minutes=0.0001", "batch_size=16")
    proc = subprocess.Popen(_cli("train", "--quiet", "--preset", "demo", "--out", str(run), *sets(*extra)),
                            stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline:
        if last.exists() and checkpoint.load_checkpoint(last).trainer_state["step"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = checkpoint.load_checkpoint(last).trainer_state["step"]
    assert 3 <= step < 32, "the run should have been killed part-way"
    assert train_cli(run, resume=True) == 0
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert_same_weights(weights(run), weights(full))


@pytest.mark.slow
def test_ctrl_c_saves_and_exits(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli("train", "--quiet", "--preset", "demo", "--out", str(run), *sets("epochs=1000")),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err
    step = checkpoint.load_checkpoint(run / "checkpoints" / "last.safetensors").trainer_state["step"]
    assert step >= 1


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    one = tmp_path / "one"
    train_cli(one, "batch_size=16")
    two = tmp_path / "two"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "drawnet.cli", "train", "--quiet", "--preset", "demo", "--out", str(two), "--device", "cpu",
           *sets("batch_size=16")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = train_losses(one), train_losses(two)
    assert a.keys() == b.keys()
    for step in a:  # rank 0 logs its own half of the batch; compare the weights, which see both halves
        assert abs(a[step] - b[step]) < 0.25 * abs(a[step])
    assert_same_weights(weights(one), weights(two), atol=2e-4)


@pytest.mark.parametrize("first, then", [("bf16", "fp32"), ("fp32", "bf16")])
def test_a_run_of_one_precision_resumes_and_evaluates_in_the_other(tmp_path, capsys, first, then):
    """Checkpoints hold float32 weights whatever the products' precision: a run trained with one
    resumes with the other, and its checkpoints evaluate in either."""
    run = tmp_path / "run"
    assert train_cli(run, f"precision={first}", "max_steps=5") == 0
    assert train_cli(run, f"precision={then}", "max_steps=8", resume=True) == 0
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == then
    ckpt = checkpoint.load_checkpoint(run, prefer=checkpoint.LAST)
    assert ckpt.trainer_state["step"] == 8
    assert all(v.dtype == torch.float32 for v in ckpt.model_state.values())
    capsys.readouterr()
    bounds = {}
    for precision in ("fp32", "bf16"):
        assert main(["eval", str(run), "--precision", precision, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert precision in result["engine"] or (precision == "fp32" and "float32" in result["engine"])
        bounds[precision] = result["nll_bound"]
    assert abs(bounds["fp32"] - bounds["bf16"]) < 1e-3 * bounds["fp32"]


def test_valid_every_validates_every_kth_epoch_and_at_the_end(tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, "epochs=5", "valid_every=2") == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    valid = [r["epoch"] for r in map(json.loads, lines) if r["kind"] == "valid"]
    assert valid == [1, 3, 4]  # epochs 2 and 4, and the last (5), 0-based
    state = checkpoint.load_checkpoint(run, prefer=checkpoint.LAST).trainer_state
    assert state["epoch"] == 5


@pytest.mark.parametrize("saved_fused, resumed_fused", [(None, True), (True, None)])
def test_optimizer_state_loads_across_fused_and_plain_adam(tmp_path, saved_fused, resumed_fused):
    """The trainer builds PyTorch's fused Adam where it can; checkpoints written with the plain one (runs
    from before) resume into it and the other way round, with the same moments, and each run keeps
    its own implementation choice; the next updates agree to float rounding."""
    from drawnet import checkpoint as ckpt_io

    torch.manual_seed(0)
    a, b = torch.nn.Linear(7, 5), torch.nn.Linear(7, 5)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2, fused=saved_fused)
    for _ in range(3):
        opt_a.zero_grad()
        a(torch.randn(4, 7)).square().sum().backward()
        opt_a.step()
    b.load_state_dict(a.state_dict())
    path = ckpt_io.save_checkpoint(tmp_path / "c.safetensors", kind="draw", model=a, model_config={},
                                   optimizer=opt_a, trainer_state={"step": 3})
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, fused=resumed_fused)
    ckpt_io.restore_optimizer(opt_b, ckpt_io.load_checkpoint(path))
    assert opt_b.param_groups[0]["fused"] == resumed_fused
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a.state[p][key], opt_b.state[q][key])
    x = torch.randn(4, 7)
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_lean_snapshot_resumes_with_fresh_adam_and_a_rewarmed_rate(tmp_path, capsys):
    """checkpoint.lean_copy leaves Adam's moments out (what scripts/long-runs.sh snapshot --lean commits);
    a run resumed from it says so, starts Adam afresh and warms the learning rate up again from the step
    it resumed at; a checkpoint that lost its optimizer state without being made lean is still refused."""
    run = tmp_path / "run"
    train_cli(run, "max_steps=4", "ema_decay=0.9", "lr=1e-3", "lr_warmup_steps=2")
    last = run / "checkpoints" / "last.safetensors"
    full = checkpoint.load_checkpoint(last)
    lean_path = checkpoint.lean_copy(last, tmp_path / "lean.safetensors")
    lean = checkpoint.load_checkpoint(lean_path)
    assert full.optimizer_state and not lean.optimizer_state and checkpoint.is_lean(lean)
    assert "optimizer" not in lean.trainer_state and lean.trainer_state["step"] == 4
    assert lean.extra.keys() == full.extra.keys() and lean.rng_state.keys() == full.rng_state.keys()
    assert_same_weights(lean.model_state, full.model_state)
    moments = sum(t.numel() * t.element_size() for t in full.optimizer_state.values())
    assert lean_path.stat().st_size < last.stat().st_size - 0.9 * moments  # the moments' bytes are gone

    lean_path.replace(last)
    capsys.readouterr()
    assert train_cli(run, "max_steps=6", resume=True) == 0
    assert "lean snapshot (no optimizer state): Adam starts afresh at step 4" in capsys.readouterr().err
    resumed = checkpoint.load_checkpoint(last)
    state = resumed.trainer_state
    assert (state["step"], state["rewarm_start"], state["rewarm_steps"]) == (6, 4, 300)
    assert checkpoint.LEAN_MARK not in state and resumed.optimizer_state  # an ordinary checkpoint again
    lrs = [r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if r["kind"] == "train" and r["step"] > 4]
    assert lrs == pytest.approx([1e-3 * 1 / 300, 1e-3 * 2 / 300])  # constant schedule, re-warmed
    assert train_cli(run, "max_steps=7", resume=True) == 0  # an ordinary resume inside the re-warm-up continues it
    last_lr = [r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"][-1]
    assert last_lr == pytest.approx(1e-3 * 3 / 300)

    damaged = tmp_path / "damaged"
    train_cli(damaged, "max_steps=2")
    plain = checkpoint.load_checkpoint(damaged / "checkpoints" / "last.safetensors")
    checkpoint.save_checkpoint(damaged / "checkpoints" / "last.safetensors", kind=plain.kind,
                               state_dict=plain.model_state, model_config=plain.model_config,
                               train_config=plain.train_config,
                               trainer_state={k: v for k, v in plain.trainer_state.items() if k != "optimizer"})
    capsys.readouterr()
    assert train_cli(damaged, "max_steps=3", resume=True) == 2
    assert "no optimizer state to resume from" in capsys.readouterr().err


class _StopAfter:
    """A progress callback that raises KeyboardInterrupt (as Ctrl-C would) once ``n`` images are done."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def __call__(self, k):
        self.seen += k
        if self.seen >= self.n:
            raise KeyboardInterrupt


def test_a_stopped_importance_weighted_estimate_continues_to_the_uninterrupted_numbers(tmp_path):
    model, data = _tiny_model_and_data()
    whole = evaluate.nll_importance_weighted(model, data, K=7, batch_size=5, chunk=10, seed=4)
    f = tmp_path / "iw.safetensors"
    for stop in (10, 20):  # stopped twice, after the 2nd and the 4th batch
        with pytest.raises(KeyboardInterrupt):
            evaluate.nll_importance_weighted(model, data, K=7, batch_size=5, chunk=10, seed=4, progress_file=f,
                                             progress=_StopAfter(stop))
        from safetensors.torch import load_file

        assert load_file(f)["log_px"].shape == (stop,)  # a plain safetensors file, read without running code
    counted = []
    resumed = evaluate.nll_importance_weighted(model, data, K=7, batch_size=5, chunk=10, seed=4, progress_file=f,
                                               progress=counted.append)
    assert counted[0] == 20 and sum(counted) == 32  # the bar starts at what was done
    assert resumed == whole
    # a finished file gives the same result again without running the model
    assert evaluate.nll_importance_weighted(model, data, K=7, batch_size=5, chunk=10, seed=4,
                                            progress_file=f) == whole


@pytest.mark.parametrize("change, named", [({"K": 8}, "K '7' there, '8' here"), ({"seed": 5}, "seed"),
                                           ({"chunk": 20}, "chunk"), ({"limit": 30}, "num_images")])
def test_a_progress_file_of_another_estimate_is_refused(tmp_path, change, named):
    model, data = _tiny_model_and_data()
    f = tmp_path / "iw.safetensors"
    base = {"K": 7, "batch_size": 5, "chunk": 10, "seed": 4}
    with pytest.raises(KeyboardInterrupt):
        evaluate.nll_importance_weighted(model, data, **base, progress_file=f, progress=_StopAfter(10))
    with pytest.raises(ValueError, match="another estimate.*" + named):
        evaluate.nll_importance_weighted(model, data, **(base | change), progress_file=f)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # other weights
    with pytest.raises(ValueError, match="weights_sha256"):
        evaluate.nll_importance_weighted(model, data, **base, progress_file=f)
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(ValueError, match="not a readable importance-weighted progress file"):
        evaluate.nll_importance_weighted(model, data, **base, progress_file=f)


def test_eval_cli_continues_a_stopped_estimate(tmp_path, capsys, monkeypatch):
    train_cli(tmp_path / "run")
    run, f = str(tmp_path / "run"), str(tmp_path / "iw.safetensors")
    capsys.readouterr()
    assert main(["eval", run, "--iw", "3", "--json", "--out", str(tmp_path / "whole.json")]) == 0
    whole = json.loads(capsys.readouterr().out)
    real, calls = evaluate.log_likelihood_iw, []

    def stopped(*a, **k):  # Ctrl-C during the first batch (of 100 images; the run's test set is 64)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "log_likelihood_iw", stopped)
    assert main(["eval", run, "--iw", "3", "--iw-progress", f]) == 130
    err = capsys.readouterr().err
    assert "the same command continues" in err and "Traceback" not in err
    monkeypatch.setattr(evaluate, "log_likelihood_iw", real)
    for _ in range(2):  # the estimate, then again from the finished file
        assert main(["eval", run, "--iw", "3", "--iw-progress", f, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["nll_iw"] == whole["nll_iw"]
    assert main(["eval", run, "--iw", "3", "--seed", "1", "--iw-progress", f]) == 2
    err = capsys.readouterr().err
    assert err.count("drawnet: error:") == 1 and "seed '0' there, '1' here" in err
    assert main(["eval", run, "--iw-progress", f]) == 2
    assert "give --iw K" in capsys.readouterr().err

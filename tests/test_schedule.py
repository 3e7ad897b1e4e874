"""The learning-rate schedules of TrainConfig, the warm restart among them, and resuming into a restart."""

import json
import math

import pytest
import torch
from test_train import train_cli, train_losses

from drawnet import checkpoint
from drawnet.train import TrainConfig, learning_rate

SPE = 10  # steps per epoch


def rates(cfg, total, steps=None):
    return [learning_rate(cfg, s, total, SPE) for s in (steps if steps is not None else range(total))]


def test_warm_up_then_cosine_to_the_final_rate():
    cfg = TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine", lr_final=1e-5, lr_warmup_steps=4)
    r = rates(cfg, 100)
    assert r[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert r[4] == pytest.approx(1e-3)
    assert r[52] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half-way between warm-up end and the end
    assert all(a >= b for a, b in zip(r[4:], r[5:], strict=False))
    assert learning_rate(cfg, 100, 100, SPE) == pytest.approx(1e-5)


def test_exponential_step_and_constant():
    exp = TrainConfig(epochs=10, lr=1e-2, lr_schedule="exponential", lr_final=1e-4)
    assert learning_rate(exp, 50, 100, SPE) == pytest.approx(1e-3)
    step = TrainConfig(epochs=10, lr=1e-2, lr_schedule="step", lr_decay=0.5, lr_step_epochs=2, lr_final=1e-3)
    assert [learning_rate(step, s, 100, SPE) for s in (0, 19, 20, 40, 99)] == pytest.approx([1e-2, 1e-2, 5e-3, 2.5e-3,
                                                                                            1e-3])
    assert set(rates(TrainConfig(lr=3e-4), 50)) == {3e-4}


def test_a_warm_restart_runs_two_cosine_cycles():
    cfg = TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine", lr_final=1e-5, lr_warmup_steps=2, lr_restart_epoch=6)
    r = rates(cfg, 100)
    assert r[1] == pytest.approx(1e-3)
    assert r[59] == pytest.approx(1e-5, abs=1e-6)  # the first cycle ends at lr_final at the restart epoch
    assert r[60] == pytest.approx(1e-3)  # ... and the second starts at lr, without a warm-up
    assert r[80] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert r[99] == pytest.approx(1e-5, abs=2e-6)
    assert all(a >= b for a, b in zip(r[2:60], r[3:60], strict=False))
    assert all(a >= b for a, b in zip(r[60:], r[61:], strict=False))
    # without the restart it is one cycle over the whole run
    plain = TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine", lr_final=1e-5, lr_warmup_steps=2)
    assert learning_rate(plain, 60, 100, SPE) < 1e-3 / 2
    # the exponential schedule restarts the same way
    exp = TrainConfig(epochs=10, lr=1e-2, lr_schedule="exponential", lr_final=1e-4, lr_restart_epoch=5)
    assert [learning_rate(exp, s, 100, SPE) for s in (25, 50, 75)] == pytest.approx([1e-3, 1e-2, 1e-3])


def test_a_restart_can_warm_up_again():
    cfg = TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine", lr_final=1e-5, lr_warmup_steps=2, lr_restart_epoch=6,
                      lr_restart_warmup_steps=4)
    r = rates(cfg, 100)
    jump = TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine", lr_final=1e-5, lr_warmup_steps=2, lr_restart_epoch=6)
    assert r[:60] == rates(jump, 100)[:60]  # the first cycle is untouched
    assert r[60:64] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear from 0 to lr over 4 steps
    assert r[64] == pytest.approx(1e-3)  # then the cosine over the rest of the run, to lr_final at its end
    assert r[82] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert r[99] == pytest.approx(1e-5, abs=2e-6)
    assert all(a >= b for a, b in zip(r[64:], r[65:], strict=False))


def test_a_restart_warm_up_without_a_restart_is_refused():
    with pytest.raises(ValueError, match="lr_restart_warmup_steps.*set lr_restart_epoch"):
        TrainConfig(epochs=10, lr_schedule="cosine", lr_restart_warmup_steps=100)
    with pytest.raises(ValueError, match="lr_restart_warmup_steps.*integer >= 0"):
        TrainConfig(epochs=10, lr_schedule="cosine", lr_restart_epoch=5, lr_restart_warmup_steps=-1)


@pytest.mark.parametrize("settings, named", [
    ({"lr_schedule": "constant", "lr_restart_epoch": 3}, "cosine and exponential"),
    ({"lr_schedule": "cosine", "lr_restart_epoch": 10}, "raise epochs"),
    ({"lr_schedule": "cosine", "lr_restart_epoch": -1}, "integer >= 0"),
    ({"lr_schedule": "cosine", "lr_restart_epoch": 2.5}, "integer >= 0"),
])
def test_a_restart_that_cannot_happen_is_refused(settings, named):
    with pytest.raises(ValueError, match="lr_restart_epoch") as err:
        TrainConfig(epochs=10, **settings)
    assert named in str(err.value)


def test_a_finished_run_resumes_into_a_new_cycle(tmp_path):
    """The use: a run whose cosine has ended gets another cycle with --resume --set epochs=...
    --set lr=... --set lr_restart_epoch=...; its later steps use the new cycle's rates."""
    run = tmp_path / "run"
    assert train_cli(run, "lr_schedule=cosine", "lr=1e-3", "lr_final=1e-5") == 0  # 2 epochs of 4 steps
    assert train_cli(run, "epochs=4", "lr=5e-4", "lr_restart_epoch=2", resume=True) == 0
    saved = json.loads((run / "config.json").read_text())["train"]
    assert (saved["epochs"], saved["lr"], saved["lr_restart_epoch"]) == (4, 5e-4, 2)
    lrs = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "train":
            lrs[record["step"]] = record["lr"]
    # a record's step counts the steps done, so record n holds the rate of step n - 1 (0-based)
    assert lrs[8] < 1e-4  # the first cycle's end
    assert lrs[9] == pytest.approx(5e-4)  # the restart: step 8, the first of epoch 2
    assert lrs[16] == pytest.approx(1e-5 + (5e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert len(train_losses(run)) == 16
    state = checkpoint.load_checkpoint(run, prefer=checkpoint.LAST).trainer_state
    assert state["step"] == 16


def test_a_resumed_restart_can_warm_up(tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, "lr_schedule=cosine", "lr=1e-3", "lr_final=1e-5") == 0  # 2 epochs of 4 steps
    assert train_cli(run, "epochs=4", "lr=5e-4", "lr_restart_epoch=2", "lr_restart_warmup_steps=2", resume=True) == 0
    assert json.loads((run / "config.json").read_text())["train"]["lr_restart_warmup_steps"] == 2
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if r["kind"] == "train"}
    assert [lrs[9], lrs[10]] == pytest.approx([2.5e-4, 5e-4])  # steps 8 and 9: the restart's warm-up
    assert lrs[16] == pytest.approx(1e-5 + (5e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 5 / 6)))


def test_the_averaging_phase_holds_its_rate():
    cfg = TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine", lr_final=1e-5, swa_start_epoch=6, swa_lr=2e-4)
    r = rates(cfg, 100)
    plain = rates(TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine", lr_final=1e-5), 100)
    assert r[:60] == plain[:60]
    assert set(r[60:]) == {2e-4}


@pytest.mark.parametrize("settings, named", [
    ({"swa_start_epoch": 10, "swa_lr": 1e-4}, "raise epochs"),
    ({"swa_start_epoch": 3}, "constant learning rate of the averaging phase"),
    ({"swa_start_epoch": 3, "swa_lr": -1}, "constant learning rate of the averaging phase"),
    ({"swa_lr": 1e-4}, "only with swa_start_epoch"),
    ({"swa_start_epoch": 1.5, "swa_lr": 1e-4}, "integer >= 0"),
])
def test_an_averaging_phase_that_cannot_happen_is_refused(settings, named):
    with pytest.raises(ValueError, match="swa_") as err:
        TrainConfig(epochs=10, **settings)
    assert named in str(err.value)


def _raw_and_used(run):
    ckpt = checkpoint.load_checkpoint(run, prefer=checkpoint.LAST)
    raw = {k[len("raw."):]: v for k, v in ckpt.extra.items() if k.startswith("raw.")}
    return raw, ckpt.model_state, ckpt.trainer_state


@pytest.mark.parametrize("ema", [None, "0.9"])
def test_swa_averages_the_weights_at_each_epoch_end(tmp_path, ema):
    """The averaged (validated, best, shipped) weights are the plain mean of the raw weights at the
    ends of the phase's epochs; it is added to a finished run on resume, with or without an
    exponential average before it, and the resumed run equals an uninterrupted one."""
    ema_set = [f"ema_decay={ema}"] if ema else []
    run = tmp_path / "run"
    assert train_cli(run, "lr_schedule=constant", "lr=1e-3", *ema_set) == 0  # 2 epochs of 4 steps
    assert train_cli(run, "epochs=3", "swa_start_epoch=2", "swa_lr=3e-4", resume=True) == 0
    raw3, used3, state3 = _raw_and_used(run)
    assert state3["swa_updates"] == 1 and state3["epoch"] == 3
    for name in raw3:  # the first epoch of the phase: the mean of one
        torch.testing.assert_close(used3[name], raw3[name], rtol=0, atol=0)
    assert train_cli(run, "epochs=4", resume=True) == 0
    raw4, used4, state4 = _raw_and_used(run)
    assert state4["swa_updates"] == 2
    moved = 0
    for name in raw4:
        torch.testing.assert_close(used4[name], (raw3[name] + raw4[name]) / 2, rtol=1e-6, atol=1e-7)
        moved += int(not torch.equal(raw3[name], raw4[name]))
    assert moved > 0  # the phase trains: the mean is not one of its terms
    lrs = [r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert lrs[8:] == [3e-4] * 8
    # the same phase in one uninterrupted run
    once = tmp_path / "once"
    assert train_cli(once, "lr_schedule=constant", "lr=1e-3", "epochs=4", "swa_start_epoch=2", "swa_lr=3e-4",
                     *ema_set) == 0
    _, used_once, _ = _raw_and_used(once)
    for name in used4:
        torch.testing.assert_close(used_once[name], used4[name], rtol=0, atol=0)

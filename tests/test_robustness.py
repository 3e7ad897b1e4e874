"""A run directory nothing can corrupt, and one clear line for every bad setting (issue 12).

Each test is one scenario, run through the command line (``drawnet.cli.main``) where a user
would meet it, on tiny runs of the synthetic data set (``TINY``). test_faults.py runs the faults
that need real processes (kill -9, two writers at once, a full file system).
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from drawnet import checkpoint, rundir, viz
from drawnet.cli import main

# Tiny runs: 28x28 synthetic shapes, T=2, LSTMs of 16, batches of 100 (20 steps an epoch).
TINY = ["--preset", "demo", "--set", "T=2", "--set", "enc_size=16", "--set", "dec_size=16", "--set", "z_size=4",
        "--set", "threads=1", "--set", "max_minutes=null", "--set", "valid_limit=100", "--set", "pictures=false",
        "--set", "tensorboard=false", "--set", "data=synthetic", "--set", "data_options={}"]


def settings(*pairs: str) -> list[str]:
    return [arg for kv in pairs for arg in ("--set", kv)]


def train(out: Path, *pairs: str) -> int:
    return main(["train", "--quiet", *TINY, "--out", str(out), *settings(*pairs)])


def resume(run: Path, *pairs: str) -> int:
    return main(["train", "--quiet", "--resume", str(run), *settings(*pairs)])


def error_line(capsys) -> str:
    """The one ``drawnet: error:`` line the last command wrote to stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("drawnet: error:")]
    assert len(lines) == 1, err
    return lines[0]


def last(run: Path) -> Path:
    return rundir.checkpoint_path(run, rundir.LAST)


def best(run: Path) -> Path:
    return rundir.checkpoint_path(run, rundir.BEST)


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run directory but the lock, by relative path."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != rundir.LOCK_FILE}


def records(run: Path) -> list[tuple]:
    """(kind, step, value) of every metrics record: what an identical run reproduces exactly."""
    return [(r["kind"], r["step"], r.get("loss", r.get("bound"))) for r in rundir.read_metrics(run)]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = checkpoint.load_checkpoint(last(a)).model_state, checkpoint.load_checkpoint(last(b)).model_state
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def tensor_span(path: Path, prefix: str) -> tuple[int, int]:
    """Byte range in ``path`` of the largest tensor whose name starts with ``prefix``."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    spans = [v["data_offsets"] for k, v in header.items() if k.startswith(prefix)]
    a, b = max(spans, key=lambda s: s[1] - s[0])
    return 8 + size + a, 8 + size + b


def flip_bytes(path: Path, prefix: str, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of a tensor's data (as a bad disk or a stray write would)."""
    start, end = tensor_span(path, prefix)
    assert end - start >= count
    data = bytearray(path.read_bytes())
    middle = (start + end - count) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def rewrite_metadata(path: Path, **entries: str | None) -> None:
    """Rewrite checkpoint metadata entries (None deletes one) with consistent checksums: a file a
    faulty writer made, not a damaged one."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    tensors = load_file(str(path))
    for key, value in entries.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    metadata["metadata_sha256"] = checkpoint.metadata_digest(metadata)
    save_file(tensors, str(path), metadata=metadata)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run of 25 steps (one epoch and a bit), to copy and break."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train(run, "max_steps=25", "log_every=5") == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of ``trained``."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


# ------------------------------------------------------------------ 1. two writers, one run
def test_a_second_writer_exits_at_once_naming_the_holder(run, capsys):
    before = snapshot(run)
    with rundir.RunLock(run):  # another drawnet process training in it
        assert resume(run, "max_steps=40") == 2
        line = error_line(capsys)
    assert f"in use by another drawnet process (pid {os.getpid()})" in line
    assert snapshot(run) == before  # nothing written, nothing truncated
    (run / rundir.LOCK_FILE).write_text("4000000\n")  # a stale lock file, left by a killed process
    assert resume(run, "max_steps=30") == 0


def test_a_run_left_by_the_lock_holder_is_not_overwritten(trained, tmp_path, monkeypatch, capsys):
    """Two `train --out DIR` at once: the second passes the first checks while the first trains,
    gets the lock when the first has finished, and must then see the finished run."""
    import shutil

    out = tmp_path / "run"
    real_acquire = rundir.RunLock.acquire

    def acquire_after_the_other_writer(self):
        shutil.copytree(trained, out, dirs_exist_ok=True)  # the other writer's finished run
        return real_acquire(self)

    monkeypatch.setattr(rundir.RunLock, "acquire", acquire_after_the_other_writer)
    assert train(out, "max_steps=3") == 2
    assert "already holds a run" in error_line(capsys)
    assert snapshot(out) == snapshot(trained)


# ------------------------------------------------------------------ 2. only finite checkpoints are good
def test_an_infinite_learning_rate_is_refused_before_any_work(run, capsys):
    before = snapshot(run)
    assert resume(run, "lr=Infinity", "max_steps=200") == 2
    line = error_line(capsys)
    assert "lr=inf" in line and "finite number > 0" in line
    assert snapshot(run) == before


class PoisonWeightAt:
    """A DRAW task that, at training call ``at``, makes one weight infinite after its loss was
    computed: the loss and the gradient stay finite, the weights after the step do not."""

    def __new__(cls, config, at):
        from drawnet.tasks import DRAWTask

        class Poisoned(DRAWTask):
            calls = 0

            def train_loss(self, model, x, y, **kwargs):
                terms = super().train_loss(model, x, y, **kwargs)
                Poisoned.calls += 1
                if Poisoned.calls == at:
                    next(model.parameters()).data.view(-1)[0] = math.inf
                return terms

        return Poisoned(config)


def tiny_configs(**train_settings):
    from drawnet.commands._settings import parse_overrides
    from drawnet.config import DRAWConfig, TrainConfig
    from drawnet.presets import resolve

    pairs = [a for a in TINY if a not in ("--preset", "demo", "--set")]
    overrides = parse_overrides(pairs, model=DRAWConfig, train=TrainConfig)
    overrides["train"] |= train_settings
    return resolve("demo", overrides)


def test_non_finite_weights_are_never_saved(tmp_path):
    from drawnet.train import TrainingDiverged, run_training

    model_cfg, train_cfg = tiny_configs(max_steps=30)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite weights or optimizer state after step 30") as info:
        run_training(PoisonWeightAt(model_cfg, 30), train_cfg, out, progress=False)
    assert f"The last good checkpoint is {last(out)}" in str(info.value)
    saved = checkpoint.load_checkpoint(last(out))
    assert saved.trainer_state["step"] == 20  # the end of the first epoch
    assert all(torch.isfinite(t).all() for t in [*saved.model_state.values(), *saved.optimizer_state.values()])


def test_non_finite_optimizer_moments_are_never_saved(tmp_path):
    from drawnet.tasks import DRAWTask
    from drawnet.train import Trainer, TrainingDiverged

    model_cfg, train_cfg = tiny_configs(max_steps=30)

    class PoisonedMoments(Trainer):
        def train_step(self, x, y):
            scalars = super().train_step(x, y)
            if self.state.step == 30:  # Adam's second moment overflows; the weights are still finite
                next(iter(self.optimizer.state.values()))["exp_avg_sq"].fill_(math.inf)
            return scalars

    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="Adam state of"):
        PoisonedMoments(DRAWTask(model_cfg), train_cfg, out, progress=False).run()
    assert checkpoint.load_checkpoint(last(out)).trainer_state["step"] == 20


def test_a_non_finite_validation_value_stops_training(tmp_path):
    from drawnet.tasks import DRAWTask
    from drawnet.train import TrainingDiverged, run_training

    class NaNSecondValidation(DRAWTask):
        validations = 0

        def validate(self, *args, **kwargs):
            result = super().validate(*args, **kwargs)
            NaNSecondValidation.validations += 1
            return result | ({"bound": math.nan} if NaNSecondValidation.validations == 2 else {})

    model_cfg, train_cfg = tiny_configs(epochs=3)
    with pytest.raises(TrainingDiverged, match="non-finite validation bound"):
        run_training(NaNSecondValidation(model_cfg), train_cfg, tmp_path / "run", progress=False)
    state = checkpoint.load_checkpoint(last(tmp_path / "run")).trainer_state
    assert (state["step"], state["epoch"]) == (20, 1) and math.isfinite(state["best"])


# ------------------------------------------------------------------ 3. checked contents
@pytest.mark.parametrize("name, prefix", [("best", "model."), ("last", "model."), ("last", "optim.")])
def test_flipped_bytes_are_a_clear_error_naming_the_file(run, capsys, name, prefix):
    path = best(run) if name == "best" else last(run)
    flip_bytes(path, prefix)
    before = snapshot(run)
    commands = [["eval", str(path)], ["sample", str(path), "--out", str(run / "s.png")]]
    if name == "last":
        commands.append(["train", "--quiet", "--resume", str(run), "--set", "max_steps=40"])
    for command in commands:
        assert main(command) == 2, command
        line = error_line(capsys)
        assert f"{path} is damaged" in line and "tensors_sha256" in line, line
    assert snapshot(run) == before  # resume overwrote nothing


def test_edited_metadata_is_a_clear_error_naming_the_file(run, capsys):
    """The trainer state and the configurations are covered too (format version 3)."""
    data = last(run).read_bytes()
    assert data.count(b'\\"step\\": 25') == 1
    last(run).write_bytes(data.replace(b'\\"step\\": 25', b'\\"step\\": 24'))  # same length, valid JSON
    assert resume(run, "max_steps=40") == 2
    line = error_line(capsys)
    assert f"{last(run)} is damaged" in line and "metadata_sha256" in line


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")
def test_a_loaded_checkpoint_keeps_no_mapping_of_its_file(run):
    """Tensors kept from a mapped file (Adam's moments after a resume) would keep its disk space
    after the next save replaced it: a resume on a nearly full disk would need room for three."""
    saved = checkpoint.load_checkpoint(last(run))
    assert str(last(run)) not in Path("/proc/self/maps").read_text()
    assert saved.optimizer_state


# ------------------------------------------------------------------ 4. metrics that a resume repairs
def test_a_crash_between_validation_and_save_does_not_log_the_epoch_twice(tmp_path, monkeypatch):
    """Killed after an epoch's validation record was written but before its last checkpoint: the
    resumed run continues from the checkpoint before, drops the records after it, and ends with
    exactly the records and weights of a run never interrupted."""
    from drawnet import train as train_module

    pairs = ("max_steps=30", "log_every=1", "checkpoint_minutes=1e-9")  # a checkpoint after every step
    assert train(tmp_path / "full", *pairs) == 0

    class Killed(BaseException):
        pass

    real_save = checkpoint.save_checkpoint

    def save_or_die(path, **kwargs):
        state = kwargs["trainer_state"]
        if Path(path).name == rundir.LAST and (state["epoch"], state["batch_in_epoch"]) == (1, 0):
            raise Killed  # the end of epoch 1: validated, logged, not saved
        return real_save(path, **kwargs)

    monkeypatch.setattr(train_module.ckpt_io, "save_checkpoint", save_or_die)
    with pytest.raises(Killed):
        train(tmp_path / "run", *pairs)
    monkeypatch.undo()
    assert ("valid", 20, records(tmp_path / "full")[20][2]) in records(tmp_path / "run")
    assert resume(tmp_path / "run") == 0
    assert records(tmp_path / "run") == records(tmp_path / "full")
    assert_same_weights(tmp_path / "run", tmp_path / "full")


def test_a_torn_metrics_line_is_repaired_by_resume_and_skipped_by_report(run, capsys):
    with open(run / rundir.METRICS_FILE, "a") as f:
        f.write('{"kind": "train", "epoch": 1, "st')  # a record torn by a kill
    capsys.readouterr()
    assert main(["report", str(run), "-n", "4", "--n-animate", "1"]) == 0
    assert "skipping" in capsys.readouterr().err
    assert resume(run, "max_steps=30", "log_every=5") == 0
    lines = (run / rundir.METRICS_FILE).read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if '"train"' in line]  # every line parses
    assert steps == [5, 10, 15, 20, 25, 30]


# ------------------------------------------------------------------ 5. leftovers and overwrites
def test_leftovers_are_removed_when_a_run_starts(run, capsys):
    stale = [rundir.checkpoint_path(run, ".last.safetensors.x1y2.tmp"), rundir.checkpoint_path(run, "last.tmpAb3")]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    assert resume(run, "max_steps=26") == 0
    assert not any(p.exists() for p in stale)
    assert capsys.readouterr().err.count("left by a process killed while writing it") == 2


def test_an_old_run_without_last_is_not_overwritten(run, capsys):
    last(run).unlink()
    before = snapshot(run)
    assert train(run, "max_steps=2") == 2
    assert "holds files of an earlier run" in error_line(capsys)
    assert snapshot(run) == before


def test_checkpoints_are_written_with_the_permissions_of_open(tmp_path):
    old = os.umask(0o022)
    try:
        assert train(tmp_path / "run", "max_steps=2") == 0
    finally:
        os.umask(old)
    for path in (last(tmp_path / "run"), best(tmp_path / "run"), tmp_path / "run" / rundir.CONFIG_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# ------------------------------------------------------------------ 6. bad settings: one line, before any work
@pytest.mark.parametrize("pair, expected", [
    ("valid_limit=0", "valid_limit=0 is invalid: expected a positive integer or null"),
    ("valid_limit=-5", "valid_limit=-5 is invalid"),
    ("threads=0", "threads=0 is invalid"),
    ("threads=-2", "threads=-2 is invalid"),
    ("grad_clip=NaN", "grad_clip=nan is invalid: expected a finite number >= 0"),
    ("attention_grad_clip=-1", "attention_grad_clip=-1.0 is invalid: expected a finite number >= 0 (0: no clip)"),
    ("checkpoint_minutes=NaN", "checkpoint_minutes=nan is invalid"),
    ("checkpoint_minutes=-5", "checkpoint_minutes=-5.0 is invalid: expected a finite number of minutes > 0"),
    ("lr=Infinity", "lr=inf is invalid"),
    ('data_options={"foo":1}', "unknown option 'foo' for data set 'synthetic' (data_options); its options are: "
                               "image_shape, n, seed"),
    ("data=nonesuch", "unknown dataset 'nonesuch'; available:"),
])
def test_a_bad_setting_is_one_line_before_any_work(tmp_path, capsys, pair, expected):
    assert train(tmp_path / "run", pair) == 2
    assert expected in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_file_as_out_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert train(tmp_path / "file") == 2
    assert "is a file, not a directory" in error_line(capsys)
    assert (tmp_path / "file").read_text() == "not a folder"


def _disk_full_on(monkeypatch, name: str) -> None:
    """Writes of ``name`` (through atomic_write's temporary file) fail half-way with ENOSPC."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(f".{name}.") and self.name.endswith(".tmp"):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(run, monkeypatch, capsys):
    previous = last(run).read_bytes()
    _disk_full_on(monkeypatch, rundir.LAST)
    assert resume(run, "max_steps=30") == 2
    assert error_line(capsys) == f"drawnet: error: No space left on device: {last(run)}"
    monkeypatch.undo()
    assert last(run).read_bytes() == previous
    assert not [p for p in run.rglob("*.tmp")]
    assert resume(run, "max_steps=30") == 0  # space again: the run goes on


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_run_directory_is_one_line(run, capsys):
    folder = run / rundir.CHECKPOINT_DIR
    folder.chmod(0o555)
    try:
        assert resume(run, "max_steps=30") == 2
    finally:
        folder.chmod(0o755)
    assert "Permission denied" in error_line(capsys)


def test_sample_writes_at_most_1024_images_a_picture_generating_256_at_a_time(run, monkeypatch, capsys):
    from drawnet import engine

    batches = []
    real = engine.Engine.generate

    def generate(self, model, n, generator=None, labels=None):
        batches.append(n)
        return real(self, model, n, generator, labels=labels)

    monkeypatch.setattr(engine.Engine, "generate", generate)
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "2100", "--scale", "1", "--out", str(run / "s.png")]) == 0
    paths = capsys.readouterr().out.split()
    assert paths == [str(run / f"s_{k}.png") for k in (1, 2, 3)]
    assert sum(batches) == 2100 and max(batches) <= viz.GENERATE_BATCH
    from PIL import Image

    widths = [Image.open(p).size for p in paths]
    assert widths[0] == widths[1] == (32 * 30 + 2, 32 * 30 + 2)  # 32 x 32 tiles of 28 + 2 pixels
    assert widths[2][0] < widths[0][0]  # the last one holds the 52 left


def test_sample_n_100000_stays_in_bounded_memory(run, monkeypatch, capsys):
    """-n 100000 of a 28x28 model: 98 pictures, made one at a time; generating them all at once
    would hold about 2 GB (every step's canvas, then the whole grid)."""
    import resource

    shapes = []
    monkeypatch.setattr(viz, "save_png", lambda path, image: shapes.append(image.shape))  # no encoding: quicker
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    assert main(["sample", str(run), "-n", "100000", "--scale", "1", "--out", str(run / "s.png")]) == 0
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert len(shapes) == 98 and all(h <= 962 and w <= 962 for h, w, _ in shapes)
    assert capsys.readouterr().out.split()[-1] == str(run / "s_98.png")
    assert growth_mib < 300, growth_mib


def test_the_sample_help_states_the_limits():
    assert viz.SAMPLES_PER_PICTURE == 1024 and viz.GENERATE_BATCH == 256  # as the help of `sample` says
    from drawnet.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = " ".join(sub.choices["sample"].format_help().split())
    assert "at most 1024" in text and "256 at a time" in text


@pytest.mark.parametrize("command, expected", [
    (["animate", "RUN", "-n", "65"], "-n must be a number of images from 1 to 64"),
    (["report", "RUN", "-n", "1025"], "-n must be from 1 to 1024"),
    (["report", "RUN", "--n-animate", "100"], "--n-animate must be from 1 to 64"),
])
def test_pictures_of_one_file_have_a_limit(run, capsys, command, expected):
    assert main([str(run) if a == "RUN" else a for a in command]) == 2
    assert expected in error_line(capsys)


@pytest.mark.parametrize("state, expected", [
    ({"optimizer": "garbage"}, "its optimizer state (trainer_state.optimizer) does not fit this run"),
    ({"optimizer": {"param_groups": 5, "scalars": {}}}, "does not fit this run"),
    ({"optimizer-betas": ["a", "b"]}, "parameter group setting betas=['a', 'b']"),
    ({"step": "abc"}, "trainer state step='abc' is not an integer >= 0"),
    ({"step": 2.5}, "trainer state step=2.5 is not an integer >= 0"),
    ({"best": "NaN"}, "trainer state best=nan is not a number"),
    ({"step": None}, "its trainer state has no 'step'"),
])
def test_a_malformed_trainer_state_is_an_error_naming_the_file(run, capsys, state, expected):
    with safe_open(str(last(run)), framework="pt") as f:
        saved = json.loads(f.metadata()["trainer_state"])
    for key, value in state.items():
        if key == "optimizer-betas":
            saved["optimizer"]["param_groups"][0]["betas"] = value
        elif value is None:
            del saved[key]
        elif value == "NaN":
            saved[key] = math.nan
        else:
            saved[key] = value
    rewrite_metadata(last(run), trainer_state=json.dumps(saved))
    before = snapshot(run)
    assert resume(run, "max_steps=40") == 2
    line = error_line(capsys)
    assert str(last(run)) in line and expected in line, line
    assert snapshot(run) == before


def test_trainer_state_that_is_not_json_is_an_error_naming_the_file(run, capsys):
    rewrite_metadata(last(run), trainer_state='{"step": 3,')
    assert resume(run, "max_steps=40") == 2
    line = error_line(capsys)
    assert str(last(run)) in line and "'trainer_state' metadata is not valid JSON" in line


def test_a_missing_kind_is_an_error_naming_the_file(run, capsys):
    rewrite_metadata(best(run), kind=None)
    for command in (["eval", str(run)], ["sample", str(run)]):
        assert main(command) == 2
        line = error_line(capsys)
        assert f"{best(run)} has no 'kind' entry in its metadata" in line
    config = json.loads((run / rundir.CONFIG_FILE).read_text())
    del config["kind"]
    (run / rundir.CONFIG_FILE).write_text(json.dumps(config))
    assert resume(run) == 2
    assert "config.json has no 'kind' entry" in error_line(capsys)


@pytest.mark.parametrize("entry", ["model", "train"])
def test_a_config_json_entry_that_is_not_an_object_is_one_line(run, capsys, entry):
    config = json.loads((run / rundir.CONFIG_FILE).read_text())
    config[entry] = [1, 2]
    (run / rundir.CONFIG_FILE).write_text(json.dumps(config))
    assert resume(run) == 2
    assert f"{run / rundir.CONFIG_FILE}: its {entry!r} entry is not a JSON object" in error_line(capsys)


def test_eval_warns_when_config_json_disagrees_and_uses_the_checkpoint(run, capsys):
    config = json.loads((run / rundir.CONFIG_FILE).read_text())
    config["model"]["enc_size"] = 32
    config["train"]["data_options"] = {"n": 10}
    config["train"]["lr"] = 1e-4  # a resume may change this one: not a disagreement
    (run / rundir.CONFIG_FILE).write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--limit", "50"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line.startswith("drawnet: warning:")]
    assert len(warning) == 1, captured.err
    assert f"{run / rundir.CONFIG_FILE} disagrees with {best(run)}" in warning[0]
    assert "model.enc_size is 32 there, 16 in the checkpoint" in warning[0]
    assert "train.data_options is {'n': 10} there, {} in the checkpoint" in warning[0]
    assert "train.lr" not in warning[0]
    assert "using the checkpoint's settings" in warning[0]
    assert json.loads(captured.out)["num_images"] == 50  # the checkpoint's test split (256), not 10 images

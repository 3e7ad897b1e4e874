"""The run directory's files (drawnet.rundir): atomic writes, tolerant metrics, leftovers, the lock."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from drawnet import rundir


# ------------------------------------------------------------------ atomic writes
def test_atomic_write_gives_open_permissions_and_syncs_the_folder(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(rundir, "fsync_dir", lambda path: synced.append(path))
    old = os.umask(0o027)
    try:
        rundir.atomic_write(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~0o027  # not mkstemp's 0600
    assert synced == [tmp_path]  # the rename is made durable
    assert os.listdir(tmp_path) == ["a.bin"]


def test_a_failed_write_keeps_the_old_file_and_names_it(tmp_path):
    path = tmp_path / "last.safetensors"
    path.write_bytes(b"old")

    def full_disk(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises: no file name

    with pytest.raises(OSError) as info:
        rundir.atomic_write(path, full_disk)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["last.safetensors"]


def test_an_unwritable_folder_is_a_permission_error_naming_the_file(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / ".x.tmp"))

    monkeypatch.setattr(rundir.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        rundir.atomic_write(tmp_path / "config.json", lambda tmp: None)
    assert info.value.filename in (str(tmp_path / "config.json"), str(tmp_path / ".x.tmp"))


def test_leftovers_of_killed_writes_are_removed(tmp_path):
    ckpt = tmp_path / rundir.CHECKPOINT_DIR
    samples = tmp_path / rundir.SAMPLES_DIR
    ckpt.mkdir()
    samples.mkdir()
    stale = [ckpt / ".last.safetensors.abc123.tmp", ckpt / "last.safetensors.tmpXy12_z",  # ours, safetensors'
             tmp_path / ".config.json.q1w2.tmp", samples / ".epoch_000.png.k9.tmp"]
    keep = [ckpt / "last.safetensors", tmp_path / "config.json", samples / "epoch_000.png"]
    for p in stale + keep:
        p.write_bytes(b"x")
    assert sorted(rundir.remove_leftovers(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


# ------------------------------------------------------------------ metrics
def _write_lines(run, *lines):
    (run / rundir.METRICS_FILE).write_text("".join(lines))


def test_a_torn_line_is_skipped_with_a_warning(tmp_path, capsys):
    _write_lines(tmp_path, '{"kind": "train", "step": 1}\n', '{"kind": "tra', '{"kind": "train", "step": 2}\n',
                 "[1, 2]\n", '{"kind": "valid", "step": 2}\n')
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 2]
    err = capsys.readouterr().err
    assert "skipping" in err and "metrics.jsonl:2" in err and "metrics.jsonl:3" in err


def test_truncate_keeps_the_records_up_to_the_restored_step(tmp_path):
    _write_lines(tmp_path, *(json.dumps({"kind": "train", "step": s}) + "\n" for s in range(1, 9)),
                 json.dumps({"kind": "valid", "step": 4}) + "\n", '{"kind": "train", "st')
    assert rundir.truncate_metrics(tmp_path, 5) == 4  # steps 6, 7, 8 and the torn line (valid 4 stays)
    records = rundir.read_metrics(tmp_path)
    assert [(r["kind"], r["step"]) for r in records] == [("train", s) for s in range(1, 6)] + [("valid", 4)]
    assert (tmp_path / rundir.METRICS_FILE).read_text().endswith("\n")  # the next record starts a line
    assert rundir.truncate_metrics(tmp_path, 5) == 0


def test_appending_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import builtins

    class Full:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(builtins, "open", lambda *a, **k: Full())
    with pytest.raises(OSError) as info:
        rundir.append_metrics(tmp_path, {"step": 1})
    assert info.value.filename == str(tmp_path / rundir.METRICS_FILE)


# ------------------------------------------------------------------ the lock
def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    with rundir.RunLock(tmp_path):
        assert (tmp_path / rundir.LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(rundir.RunInUse, match=f"in use by another drawnet process \\(pid {os.getpid()}\\)"):
            rundir.RunLock(tmp_path).acquire()
    rundir.RunLock(tmp_path).acquire().release()  # released: free again


def test_a_stale_lock_file_does_not_block(tmp_path):
    (tmp_path / rundir.LOCK_FILE).write_text("999999\n")  # left by a process killed long ago
    lock = rundir.RunLock(tmp_path).acquire()
    try:
        assert (tmp_path / rundir.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()


def test_a_second_writer_names_a_holder_that_writes_its_pid_late(tmp_path):
    """The holder takes the lock, then writes its pid: a second writer arriving in between waits for
    the pid instead of calling it unknown (a race seen in the two-writer fault test)."""
    import fcntl
    import os
    import threading

    from drawnet.rundir import LOCK_FILE, RunInUse, RunLock

    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, still empty
    late = threading.Timer(0.2, lambda: os.pwrite(fd, b"12345\n", 0))
    late.start()
    try:
        with pytest.raises(RunInUse, match=r"\(pid 12345\)"):
            RunLock(tmp_path).acquire()
    finally:
        late.join()
        os.close(fd)

"""The run directory: its file names, and every read and write of them.

A run directory holds::

    config.json               what was trained (kind, preset, model and train settings)
    metrics.jsonl             one JSON record per line: "train" records every log_every steps,
                              "valid" records at the end of every epoch; each has its "step"
    checkpoints/last.safetensors, checkpoints/best.safetensors   (drawnet.checkpoint)
    eval.json                 the last `drawnet eval` (read by the report)
    samples/                  pictures written during training and by sample/animate
    tensorboard/              TensorBoard event files
    report.html               `drawnet report`
    .lock                     held by the process training in it (an advisory lock, with its pid)

Writes are atomic (a temporary file in the same folder, fsynced, renamed, then the folder fsynced),
so a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
REPORT_FILE = "report.html"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.safetensors"
BEST = "best.safetensors"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory or of a checkpoint file (RUN/checkpoints/x.safetensors)."""
    p = Path(path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == CHECKPOINT_DIR else p.parent


def checkpoint_path(run_dir: str | Path, name: str = LAST) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / name


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: not every file system supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves a half-written file.

    The file gets the permissions ``open()`` would give it (0666 & ~umask). On any error (a full
    disk, say) the temporary file is removed and the error raised; an OSError then names ``path``
    (not the temporary file, nor nothing, as a failed ``write()`` would).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and err.filename in (None, tmp):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    fsync_dir(path.parent)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the temporary files a process killed while writing left behind (ours, in the run
    directory, its checkpoints and its pictures, and those of older drawnets' safetensors saves)."""
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / SAMPLES_DIR):
        if not folder.is_dir():
            continue
        for stale in list(folder.glob(".*.tmp")) + list(folder.glob("*.tmp[A-Za-z0-9_]*")):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


# --------------------------------------------------------------------------- config and eval
def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {what}") from err


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN/config.json, or None if there is none."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    config = read_json(path, "fix or delete it")
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object; fix or delete it")
    return config


def read_eval(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / EVAL_FILE
    if not path.is_file():
        return None
    return read_json(path, "run 'drawnet eval' again")


# --------------------------------------------------------------------------- metrics
def read_metrics(run_dir: str | Path, *, warn: bool = True) -> list[dict[str, Any]]:
    """The records of RUN/metrics.jsonl (empty if there is none). A line that is not a JSON
    record (torn by a kill while it was written) is skipped with a warning."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if warn:
                print(f"drawnet: warning: skipping {path}:{number}, not a JSON record (a torn write?)", file=sys.stderr)
            continue
        records.append(record)
    return records


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    path = Path(run_dir) / METRICS_FILE
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:  # a full disk: name the file (write() errors carry no file name)
        if err.errno is not None and err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Keep only the records up to ``step`` (what a run resumed from that step has done), dropping
    torn lines; returns how many records were dropped. Written atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    lines = path.read_text(errors="replace").splitlines()
    kept = [r for r in read_metrics(run_dir, warn=False) if isinstance(r.get("step"), int) and r["step"] <= step]
    dropped = sum(1 for line in lines if line.strip()) - len(kept)
    if dropped:
        atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))
    return dropped


# --------------------------------------------------------------------------- one writer at a time
class RunInUse(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An advisory lock on a run directory (fcntl.flock on RUN/.lock, which holds the pid).

    A second process that tries to train in the same directory fails at once, naming the holder. The
    lock belongs to the open file, so a process that is killed releases it: a stale .lock file left
    behind does not block anyone.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            # The holder writes its pid just after it takes the lock: a reader that comes in between
            # sees an empty file, so wait a moment for the pid (at most 1 s) before naming it unknown.
            holder = ""
            for _ in range(20):
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.05)
            holder = holder or "unknown"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunInUse(
                    f"{self.path.parent} is in use by another drawnet process (pid {holder}); wait for it to "
                    f"finish or stop it, or train into another --out directory"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

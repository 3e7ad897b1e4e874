"""``drawnet bench``: run bench/speed.py (drawnet against a plain eager DRAW, speed and memory).

The benchmark and its reference implementation live in the repository's bench/ folder, not in
the installed package, so this command needs a source checkout (found from the current
directory upwards, or next to the package when it is installed in editable mode).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


def find_speed_script(start: Path | None = None) -> Path:
    candidates = [Path.cwd() if start is None else start]
    candidates += list(candidates[0].parents)
    candidates.append(Path(__file__).resolve().parents[3])  # src/drawnet/commands/bench.py -> repository
    for folder in candidates:
        script = folder / "bench" / "speed.py"
        if script.is_file() and (folder / "bench" / "reference.py").is_file():
            return script
    raise FileNotFoundError(
        "bench/speed.py not found: `drawnet bench` runs the benchmark of a source checkout; run it inside "
        "the drawnet repository (or run `python bench/speed.py` there)"
    )


def run(args: argparse.Namespace) -> int:
    script = find_speed_script()
    spec = importlib.util.spec_from_file_location("drawnet_bench_speed", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--configs", *args.configs, "--batches", *map(str, args.batches), "--repeats", str(args.repeats)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if args.no_memory:
        argv.append("--no-memory")
    if args.no_kernels:
        argv.append("--no-kernels")
    if args.out is not None:
        argv += ["--out", args.out]
    return module.main(argv)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="speed and memory of drawnet against a plain eager DRAW (bench/speed.py)",
        description="Runs bench/speed.py of this source checkout: training and generation images/s, GFLOP/s "
        "against the measured matmul rate, and peak memory, interleaved with the plain reference. Prints a "
        "table and writes JSON to bench/results/.",
    )
    p.add_argument("--configs", nargs="+", default=["mnist", "mnist-noattn"], help="presets to measure")
    p.add_argument("--batches", nargs="+", type=int, default=[64, 128, 256], help="batch sizes")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per implementation (median taken)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-kernels", action="store_true", help="run drawnet without its fused C kernels")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<date>.json)")
    p.set_defaults(func=run)

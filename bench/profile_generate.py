"""Where generation spends its time: cProfile of drawnet's ``generate`` (the fast path), by function.

    python bench/profile_generate.py --precision bf16 --batch 128 --threads 1

The C kernels are called through ctypes, so each shows up as its Python wrapper in drawnet.kernels
(``gemm``, ``lstm_forward``, ``write_forward``, ``from_blocked``, ...), timed with the C work inside.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys

import torch

from drawnet import DRAW, engine, presets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = DRAW(presets.resolve(args.preset, {})[0])
    run = engine.choose(model, precision=args.precision)
    print(f"{args.preset}, batch {args.batch}, {args.threads} thread(s): {run.describe()}")
    with torch.no_grad():
        for _ in range(3):  # warm-up: kernel build, kept buffers
            run.generate(model, args.batch)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.calls):
            run.generate(model, args.batch)
        profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())

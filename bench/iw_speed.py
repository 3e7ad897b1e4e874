"""Speed of the importance-weighted estimate (drawnet.evaluate.log_likelihood_iw): posterior
samples per second by the number of rows one forward pass takes (``chunk``) and by precision.

    python bench/iw_speed.py                                   # the shipped `mnist` model
    python bench/iw_speed.py --chunks 100 400 4000 --precisions fp32 --repeats 9

The estimate runs the K copies of each image through the model ``chunk`` rows at a time. A pass
over many rows keeps every step's state of all of them (T = 64 steps of 2 x 256 LSTM units each,
the attention's filter banks), which outgrows the caches; a few hundred rows fit. The settings
run interleaved (the order reversed every round) on the same 100 binary images; the table gives
samples/s as medians over the rounds and each setting's ratio to the first one as the median of
the per-round ratios. Every setting has its own engine, so its buffers stay allocated from the
warm-up call on, as in one `drawnet eval`. bf16 is measured only where the CPU multiplies it natively. Writes JSON to
bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import interleaved, machine, paired_ratio, steal_seconds  # noqa: E402  (bench/ is not a package)

from drawnet import engine, evaluate, pretrained  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist", help="a shipped model (drawnet pretrained list)")
    p.add_argument("--chunks", type=int, nargs="+", default=[200, 400, 1000, 4000],
                   help="rows per forward pass; the first is the reference of the ratios")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--images", type=int, default=100, help="images per batch (the estimate's batch_size)")
    p.add_argument("--samples", type=int, default=4000, help="posterior samples per timed call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if min(args.chunks) < args.images:
        p.error(f"every chunk must hold at least one sample of each of the {args.images} images (--images)")
    torch.set_num_threads(args.threads)
    model, _ = pretrained.load(args.model)
    model.eval()
    x = torch.bernoulli(torch.full((args.images, *model.config.image_shape), 0.15),
                        generator=torch.Generator().manual_seed(0))
    K = max(1, args.samples // args.images)
    precisions = [q for q in args.precisions if q == "fp32" or engine.native_bf16(torch.device("cpu"))[0]]
    fns = {}
    for precision in precisions:
        for chunk in args.chunks:
            # an engine per setting: each keeps its own buffers (a shared BufferPool holds two pass
            # shapes, so the settings would evict each other's and time fresh allocations)
            chosen = engine.choose(model, "cpu", precision=precision)

            def call(chunk=chunk, chosen=chosen):
                evaluate.log_likelihood_iw(model, x, K, chunk=chunk, generator=torch.Generator().manual_seed(1),
                                           engine=chosen)
            fns[f"{precision} chunk={chunk}"] = call
    steal0 = steal_seconds()
    times = interleaved(fns, args.repeats)
    steal1 = steal_seconds()
    ref = next(iter(times))
    rows = []
    print(f"{args.model}: {K} samples of {args.images} images per call, {args.threads} thread(s), "
          f"median of {args.repeats} rounds; ratio to {ref} (median of per-round ratios)")
    for name, secs in times.items():
        rate = K * args.images / statistics.median(secs)
        ratio = paired_ratio(times[ref], secs)
        rows.append({"setting": name, "samples_per_s": rate, "ratio": ratio, "seconds": secs})
        print(f"  {name:<18} {rate:7.0f} samples/s  {ratio:5.2f}x")
    if steal0 is not None and steal1 is not None:
        print(f"  (CPU time stolen by the hypervisor meanwhile: {steal1 - steal0:.1f} s)")
    out = args.out or HERE / "results" / f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M}-iw-speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

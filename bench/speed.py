"""Speed and memory of drawnet against a plain eager DRAW (bench/reference.py), measured in one run.

    python bench/speed.py                      # mnist and mnist-noattn presets, batch 64/128/256
    python bench/speed.py --batches 128 --repeats 3 --configs mnist
    python bench/speed.py --precisions fp32          # drawnet in float32 only (default: also bf16
                                                     # where the CPU multiplies it natively)

For every preset and batch size it measures, interleaved (reference, drawnet, drawnet, reference,
...), so that a change of machine load hits both alike, drawnet running through
:func:`drawnet.engine.choose` (the fast recurrence) in float32 ("drawnet") and, where asked for, with
bfloat16 matrix products ("drawnet-bf16"):

* training images/s: one step = loss forward + backward + Adam update, median over the repeats;
* generation images/s: ``generate(batch)``, the T decoder steps from the prior, median;
* peak memory of a training step: in a fresh subprocess per measurement, the peak resident set
  size (VmHWM, reset just before the step through /proc/self/clear_refs) minus the resident size
  before the step, after the model, optimiser (with its state) and libraries are loaded and warmed
  up on a tiny batch; so it counts activations, gradients and the allocator's own overhead
  (tracemalloc does not see torch's allocations; this does, Linux only);
* achieved GFLOP/s: the model's matrix-product FLOPs per image counted analytically (forward as
  the plain algorithm does it, training = 3 x forward: the backward pass costs two products per
  forward one) times images/s, against this machine's own rate on the same matrix shapes: the
  weight products of one plain training step (T x forward, input-gradient and weight-gradient
  product of every layer at that batch size) run alone, timed interleaved with the training
  steps so that it sees the same load.

The ratio drawnet / reference is given three ways: of the medians; the median of the ratios of
calls run back to back (robust to slow drifts); and of the fastest call of each (the least
disturbed). Prints a table and writes JSON to bench/results/. Run it on a quiet machine: the table
records the load average before and after, and on Linux the CPU time the hypervisor gave to other
virtual machines during the run (/proc/stat "steal"), the noise of a shared cloud machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reference import ReferenceDRAW  # noqa: E402  (bench/ is not a package)

from drawnet import DRAW, DRAWConfig, engine, kernels  # noqa: E402
from drawnet.presets import PRESETS  # noqa: E402

DEFAULT_CONFIGS = ["mnist", "mnist-noattn"]
DEFAULT_BATCHES = [64, 128, 256]


# ---------------------------------------------------------------------------- models and steps
def model_config(name: str) -> DRAWConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return DRAWConfig.from_dict(PRESETS[name]["model"])


def build(cfg: DRAWConfig, seed: int = 0) -> tuple[ReferenceDRAW, DRAW]:
    """The reference and drawnet with identical weights."""
    torch.manual_seed(seed)
    model = DRAW(cfg)
    ref = ReferenceDRAW(cfg.image_shape, cfg.T, cfg.enc_size, cfg.dec_size, cfg.z_size, cfg.read_n, cfg.write_n)
    ref.load_drawnet_state(model.state_dict())
    return ref, model


def batch_of_images(cfg: DRAWConfig, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *cfg.image_shape, generator=g).bernoulli(generator=g)  # binary, like binarized MNIST


IMPLS = {"drawnet": "fp32", "drawnet-bf16": "bf16"}  # drawnet's implementations: their precision


def drawnet_engine(impl: str, model: DRAW) -> engine.Engine:
    chosen = engine.choose(model, precision=IMPLS[impl])
    if not chosen.fast:
        raise ValueError(f"the engine did not choose the fast path: {chosen.describe()}")
    return chosen


def train_step_fn(impl: str, ref: ReferenceDRAW, model: DRAW, x: torch.Tensor):
    """A closure doing one training step (forward + backward + Adam) of ``impl``."""
    module = ref if impl == "reference" else model
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    run = None if impl == "reference" else drawnet_engine(impl, model)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = ref.loss(x) if run is None else run.loss(model, x)["loss"]
        loss.backward()
        opt.step()

    return step


def generate_fn(impl: str, ref: ReferenceDRAW, model: DRAW, batch: int):
    if impl == "reference":
        return lambda: ref.generate(batch)
    run = drawnet_engine(impl, model)
    return lambda: run.generate(model, batch)


def check_same_loss(cfg: DRAWConfig) -> float:
    """|drawnet loss - reference loss| on a small batch with the same weights and noise."""
    ref, model = build(cfg)
    x = batch_of_images(cfg, 8)
    noise = torch.randn(cfg.T, 8, cfg.z_size, generator=torch.Generator().manual_seed(2))
    return abs(drawnet_engine("drawnet", model).loss(model, x, noise)["loss"].item() - ref.loss(x, noise).item())


# ---------------------------------------------------------------------------- FLOPs
def linear_shapes(cfg: DRAWConfig) -> list[tuple[int, int]]:
    """(in, out) of every matrix product with a weight in one plain DRAW step."""
    C, H, W = cfg.image_shape
    read = 2 * C * (H * W if cfg.read_n is None else cfg.read_n**2)
    write = C * (H * W if cfg.write_n is None else cfg.write_n**2)
    E, D, Z = cfg.enc_size, cfg.dec_size, cfg.z_size
    shapes = [(read + D, 4 * E), (E, 4 * E), (E, 2 * Z), (Z, 4 * D), (D, 4 * D), (D, write)]
    if cfg.read_n is not None:
        shapes.append((D, 5))
    if cfg.write_n is not None:
        shapes.append((D, 5))
    return shapes


def forward_flops_per_image(cfg: DRAWConfig) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of one image's T steps, as the plain algorithm does them."""
    C, H, W = cfg.image_shape
    per_step = sum(2 * i * o for i, o in linear_shapes(cfg))
    if cfg.read_n is not None:  # (27): F_Y x F_X^T for x and x^ per channel, (F_Y x) first
        n = cfg.read_n
        per_step += 2 * C * (2 * n * H * W + 2 * n * W * n)
    if cfg.write_n is not None:  # (29): F_Y^T w F_X per channel, (F_Y^T w) first
        n = cfg.write_n
        per_step += C * (2 * H * n * n + 2 * H * n * W)
    return cfg.T * per_step


def train_flops_per_image(cfg: DRAWConfig) -> int:
    return 3 * forward_flops_per_image(cfg)  # backward: one product for the input, one for the weight


def generate_flops_per_image(cfg: DRAWConfig) -> int:
    """Decoder (eq. 14) and write (eq. 15) only."""
    C, H, W = cfg.image_shape
    E, D, Z = cfg.enc_size, cfg.dec_size, cfg.z_size
    write = C * (H * W if cfg.write_n is None else cfg.write_n**2)
    per_step = 2 * (Z + D) * 4 * D + 2 * D * write
    if cfg.write_n is not None:
        n = cfg.write_n
        per_step += 2 * D * 5 + C * (2 * H * n * n + 2 * H * n * W)
    del E
    return cfg.T * per_step


def matmul_workload(cfg: DRAWConfig, batch: int) -> tuple[int, callable]:
    """(FLOPs, closure): the weight products of one plain training step at ``batch``, alone.

    For every weight (in, out) and each of the T steps: the forward (batch, in) @ (in, out), the
    input gradient (batch, out) @ (out, in) and the weight gradient (out, batch) @ (batch, in).
    Timed interleaved with the training steps, it gives this machine's matmul rate on these shapes
    under the same load.
    """
    mats = []
    for i, o in linear_shapes(cfg):
        mats.append((torch.randn(batch, i), torch.randn(i, o)))
        mats.append((torch.randn(batch, o), torch.randn(o, i)))
        mats.append((torch.randn(o, batch), torch.randn(batch, i)))
    flops = cfg.T * sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in mats)

    def products():
        for _ in range(cfg.T):
            for a, b in mats:
                torch.mm(a, b)

    return flops, products


# ---------------------------------------------------------------------------- memory (subprocess)
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise FileNotFoundError(f"no {field} in /proc/self/status: the memory measurement needs Linux")


def memory_probe(impl: str, config: str, batch: int, threads: int) -> None:
    """Run in a fresh process: print the peak resident memory growth (MiB) of one training step as JSON.

    The peak (VmHWM) is reset to the current resident size just before the step (Linux
    /proc/self/clear_refs), so earlier peaks (imports, model building) do not hide the step's own.
    """
    torch.set_num_threads(threads)
    cfg = model_config(config)
    ref, model = build(cfg)
    # Warm up every code path (library loading, kernels, Adam state) on a tiny batch first.
    train_step_fn(impl, ref, model, batch_of_images(cfg, 2))()
    step = train_step_fn(impl, ref, model, batch_of_images(cfg, batch))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to VmRSS
    before = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_rss_growth_mib": (peak - before) / 1024}))


def measure_memory(impl: str, config: str, batch: int, threads: int) -> float:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", impl, config, str(batch)]
    cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_growth_mib"]


# ---------------------------------------------------------------------------- timing
def interleaved(fns: dict[str, callable], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, alternating the order every round; one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave to other guests so far, all CPUs (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def paired_ratio(ref: list[float], drawnet: list[float]) -> float:
    """Median over rounds of reference / drawnet seconds: each pair ran back to back."""
    return statistics.median(r / d for r, d in zip(ref, drawnet, strict=True))


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "drawnet_kernels": kernels.status(),  # whether drawnet ran its fused C kernels (drawnet.kernels)
    }


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": os.getloadavg(),
        "method": {
            "repeats": args.repeats,
            "images_per_s": "batch / median seconds per call, reference and drawnet interleaved",
            "memory": "peak resident memory (VmHWM) over one training step minus the resident memory before it, "
            "in a fresh subprocess after a warm-up step (the Adam state is allocated in the warm-up)",
            "flops": "analytic matrix-product FLOPs of the plain algorithm; training = 3 x forward",
            "matmul_rate": "GFLOP/s of the weight products of one plain training step run alone, interleaved",
        },
        "rows": [],
    }
    steal_start, wall_start = steal_seconds(), time.perf_counter()
    impls = ["reference", "drawnet"] + (["drawnet-bf16"] if "bf16" in args.precisions else [])
    result["impls"] = impls
    for config in args.configs:
        cfg = model_config(config)
        diff = check_same_loss(cfg)
        print(f"{config}: |loss(drawnet) - loss(reference)| = {diff:.2e} nats on the same weights and noise")
        result.setdefault("loss_difference_nats", {})[config] = diff  # float32 drawnet against the reference
        if diff > 1e-2:
            raise ValueError(f"drawnet and the reference disagree on {config} by {diff} nats: fix that first")
        for batch in args.batches:
            ref, model = build(cfg)
            x = batch_of_images(cfg, batch)
            mm_flops, products = matmul_workload(cfg, batch)
            fns = {impl: train_step_fn(impl, ref, model, x) for impl in impls}
            train = interleaved({**fns, "matmul": products}, args.repeats)
            gen = interleaved({impl: generate_fn(impl, ref, model, batch) for impl in impls}, args.repeats)
            rate = mm_flops / statistics.median(train["matmul"]) / 1e9
            row = {"config": config, "batch": batch, "matmul_gflops": rate, "matmul_seconds": train["matmul"]}
            for impl in impls:
                t_train, t_gen = statistics.median(train[impl]), statistics.median(gen[impl])
                row[impl] = {
                    "train_images_per_s": batch / t_train,
                    "train_seconds": train[impl],
                    "train_gflops": train_flops_per_image(cfg) * batch / t_train / 1e9,
                    "generate_images_per_s": batch / t_gen,
                    "generate_seconds": gen[impl],
                    "generate_gflops": generate_flops_per_image(cfg) * batch / t_gen / 1e9,
                    "peak_mib": None if args.no_memory else measure_memory(impl, config, batch, args.threads),
                }
            row["train_ratio"] = row["drawnet"]["train_images_per_s"] / row["reference"]["train_images_per_s"]
            row["generate_ratio"] = row["drawnet"]["generate_images_per_s"] / row["reference"]["generate_images_per_s"]
            # the ratio of the fastest calls too: the least disturbed by other processes on a shared machine
            row["train_ratio_best"] = min(train["reference"]) / min(train["drawnet"])
            row["generate_ratio_best"] = min(gen["reference"]) / min(gen["drawnet"])
            # and the median of the ratios of calls run back to back: robust to slow drifts of the machine
            row["train_ratio_paired"] = paired_ratio(train["reference"], train["drawnet"])
            row["generate_ratio_paired"] = paired_ratio(gen["reference"], gen["drawnet"])
            if "drawnet-bf16" in impls:  # bf16 against the reference and against drawnet's own float32
                b = row["drawnet-bf16"]
                row["bf16"] = {
                    "train_ratio": b["train_images_per_s"] / row["reference"]["train_images_per_s"],
                    "train_ratio_paired": paired_ratio(train["reference"], train["drawnet-bf16"]),
                    "train_over_fp32": b["train_images_per_s"] / row["drawnet"]["train_images_per_s"],
                    "train_over_fp32_paired": paired_ratio(train["drawnet"], train["drawnet-bf16"]),
                    "generate_ratio": b["generate_images_per_s"] / row["reference"]["generate_images_per_s"],
                    "generate_over_fp32": b["generate_images_per_s"] / row["drawnet"]["generate_images_per_s"],
                    "generate_over_fp32_paired": paired_ratio(gen["drawnet"], gen["drawnet-bf16"]),
                }
            result["rows"].append(row)
            print(format_row(row), flush=True)
    result["load_after"] = os.getloadavg()
    steal_end = steal_seconds()
    # CPU seconds taken by other guests of the hypervisor during the run (a virtual machine's noise)
    result["cpu_steal_s"] = None if steal_start is None or steal_end is None else steal_end - steal_start
    result["wall_s"] = time.perf_counter() - wall_start
    return result


HEADER = (
    "| preset | batch | train img/s ref | train img/s drawnet | ratio (paired, best) "
    "| GFLOP/s ref / drawnet (% of matmul) | matmul GFLOP/s "
    "| generate img/s ref | generate img/s drawnet | ratio (paired, best) | peak MiB ref | peak MiB drawnet |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


BF16_HEADER = (
    "| preset | batch | train img/s ref / fp32 / bf16 | bf16 vs ref (paired) | bf16 vs fp32 (paired) "
    "| generate img/s ref / fp32 / bf16 | bf16 vs ref | bf16 vs fp32 (paired) | peak MiB ref / fp32 / bf16 |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def format_bf16_row(row: dict) -> str:
    r, d, b, q = row["reference"], row["drawnet"], row["drawnet-bf16"], row["bf16"]

    def mib(v):
        return "n/a" if v is None else f"{v:.0f}"

    return (
        f"| {row['config']} | {row['batch']} "
        f"| {r['train_images_per_s']:.0f} / {d['train_images_per_s']:.0f} / {b['train_images_per_s']:.0f} "
        f"| {q['train_ratio']:.2f}x ({q['train_ratio_paired']:.2f}x) "
        f"| {q['train_over_fp32']:.2f}x ({q['train_over_fp32_paired']:.2f}x) "
        f"| {r['generate_images_per_s']:.0f} / {d['generate_images_per_s']:.0f} / {b['generate_images_per_s']:.0f} "
        f"| {q['generate_ratio']:.2f}x | {q['generate_over_fp32']:.2f}x ({q['generate_over_fp32_paired']:.2f}x) "
        f"| {mib(r['peak_mib'])} / {mib(d['peak_mib'])} / {mib(b['peak_mib'])} |"
    )


def format_row(row: dict) -> str:
    r, d, m = row["reference"], row["drawnet"], row["matmul_gflops"]

    def mib(v):
        return "n/a" if v is None else f"{v:.0f}"

    def pct(gflops):
        return f"{gflops:.0f} ({100 * gflops / m:.0f} %)"

    return (
        f"| {row['config']} | {row['batch']} | {r['train_images_per_s']:.0f} | {d['train_images_per_s']:.0f} "
        f"| {row['train_ratio']:.2f}x ({row['train_ratio_paired']:.2f}x, {row['train_ratio_best']:.2f}x) "
        f"| {pct(r['train_gflops'])} / {pct(d['train_gflops'])} | {m:.0f} "
        f"| {r['generate_images_per_s']:.0f} | {d['generate_images_per_s']:.0f} "
        f"| {row['generate_ratio']:.2f}x ({row['generate_ratio_paired']:.2f}x, {row['generate_ratio_best']:.2f}x) "
        f"| {mib(r['peak_mib'])} | {mib(d['peak_mib'])} |"
    )


def steal_note(result: dict) -> str:
    steal = result.get("cpu_steal_s")
    if steal is None:
        return ""
    return f" CPU time taken by other virtual machines during the run: {steal:.0f} s in {result['wall_s']:.0f} s."


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cpu_count']} cores), torch {m['torch']} "
        f"({m['torch_threads']} threads, MKL {m['mkl']}), Python {m['python']}; drawnet kernels: "
        f"{m.get('drawnet_kernels', 'n/a')}.",
        f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in result['load_before'])}; "
        f"after: {', '.join(f'{v:.2f}' for v in result['load_after'])}. "
        f"Images/s: median of {result['method']['repeats']} interleaved repeats; ratio: of those medians, in "
        "brackets the median of the ratios of calls run back to back, and the ratio of the fastest call of "
        "each (least disturbed by other processes)." + steal_note(result),
        "",
        HEADER,
        *(format_row(row) for row in result["rows"]),
    ]
    if any("bf16" in row for row in result["rows"]):
        lines += ["", "bfloat16 matrix products (drawnet-bf16) beside the float32 path and the reference:", "",
                  BF16_HEADER, *(format_bf16_row(row) for row in result["rows"] if "bf16" in row)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="presets (drawnet.presets)")
    parser.add_argument("--batches", nargs="+", type=int, default=DEFAULT_BATCHES)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per implementation (median taken)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/<date>.json)")
    parser.add_argument(
        "--no-kernels", action="store_true", help="run drawnet without its fused C kernels (DRAWNET_KERNELS=0)"
    )
    parser.add_argument(
        "--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
        help="drawnet precisions to measure (default: fp32, and bf16 where this CPU multiplies it natively)",
    )
    parser.add_argument("--memory-probe", nargs=3, metavar=("IMPL", "CONFIG", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.precisions is None:
        native = engine.native_bf16(torch.device("cpu"))[0]
        args.precisions = ["fp32", "bf16"] if native else ["fp32"]
    if "fp32" not in args.precisions:
        args.precisions = ["fp32", *args.precisions]  # the float32 path is the baseline of every ratio
    if args.no_kernels:
        os.environ["DRAWNET_KERNELS"] = "0"  # also reaches the memory subprocesses
        kernels.reset()
    if args.memory_probe:
        impl, config, batch = args.memory_probe
        memory_probe(impl, config, int(batch), args.threads)
        return 0
    if args.repeats < 1 or any(b < 1 for b in args.batches) or args.threads < 1:
        raise ValueError("--repeats, --batches and --threads must be positive")
    print(f"load average before: {os.getloadavg()}")
    print(HEADER)
    result = run(args)
    out = args.out or HERE / "results" / (dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result["markdown"] = markdown(result)
    out.write_text(json.dumps(result, indent=1))
    print()
    print(result["markdown"])
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

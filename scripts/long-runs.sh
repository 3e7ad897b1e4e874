#!/usr/bin/env bash
# The long reproduction runs (issue "Reproduce Table 2/Table 1"): start, snapshot, continue.
#
# A run trains in runs/NAME (ignored by git). What a fresh machine needs to continue it is kept,
# tracked, in long-runs/NAME: config.json, metrics.jsonl and checkpoints/last.safetensors (weights,
# averaged weights, Adam state: the run resumes exactly). The snapshot is replaced, never added
# beside: one per run. With --lean the snapshot leaves Adam's moments out (half the size with
# weight averaging; for models whose full checkpoint is too big to commit, e.g. mnist-noattn's
# 43 MB): the run then continues with fresh moments and a re-warmed learning rate, not exactly.
#
#   bash scripts/long-runs.sh snapshot NAME [--lean]   # copy runs/NAME's state into long-runs/NAME
#   bash scripts/long-runs.sh continue NAME [--set key=value ...]
#                                                # resume runs/NAME, first restoring it from
#                                                # long-runs/NAME when runs/NAME is missing or older;
#                                                # a bf16 run goes on in float32 where the CPU has
#                                                # no native bfloat16 (unless --set precision=...)
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: long-runs.sh snapshot NAME [--lean] | continue NAME [--set key=value ...]"
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
cmd=$1
name=$2
shift 2
case "$name" in -*|*/*|"") echo "long-runs.sh: '$name' is not a run name (runs/NAME); $usage" >&2; exit 2 ;; esac
run=runs/$name
keep=long-runs/$name
step_of() {  # the optimisation step a run directory's last checkpoint is at (-1 if none)
  .venv/bin/python - "$1" <<'PY'
import sys
from pathlib import Path
from drawnet import checkpoint
p = Path(sys.argv[1]) / "checkpoints" / "last.safetensors"
try:
    print(checkpoint.load_checkpoint(p).trainer_state.get("step", -1) if p.is_file() else -1)
except (OSError, ValueError) as err:
    sys.exit(f"long-runs.sh: {err}")
PY
}
case "$cmd" in
  snapshot)
    [ $# -le 1 ] || { echo "long-runs.sh: too many arguments; $usage" >&2; exit 2; }
    case "${1:-}" in
      "") lean=0 ;;
      --lean) lean=1 ;;
      *) echo "long-runs.sh: unknown snapshot option ${1}; the one option is --lean" >&2; exit 2 ;;
    esac
    [ -f "$run/checkpoints/last.safetensors" ] || { echo "no checkpoint in $run" >&2; exit 2; }
    mkdir -p "$keep/checkpoints"
    # the checkpoint first (written atomically by the trainer), then the records up to it
    if [ "$lean" = 1 ]; then
      .venv/bin/python - "$run/checkpoints/last.safetensors" "$keep/checkpoints/last.safetensors" <<'PY'
import sys
from drawnet import checkpoint
try:
    checkpoint.lean_copy(*sys.argv[1:])
except (OSError, ValueError) as err:
    sys.exit(f"long-runs.sh: {err}")
PY
    else
      cp "$run/checkpoints/last.safetensors" "$keep/checkpoints/.last.tmp"
      mv "$keep/checkpoints/.last.tmp" "$keep/checkpoints/last.safetensors"
    fi
    cp "$run/config.json" "$keep/config.json"
    step=$(step_of "$keep")  # (set -e: a failure stops here)
    .venv/bin/python - "$run/metrics.jsonl" "$keep/metrics.jsonl" "$step" <<'PY'
import json, os, sys
src, dst, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
kept = []
for line in open(src) if os.path.exists(src) else []:  # a run stopped before its first record has none
    try:
        r = json.loads(line)
    except json.JSONDecodeError:
        continue
    if isinstance(r, dict) and r.get("step", 0) <= step:
        kept.append(json.dumps(r))
open(dst, "w").write("\n".join(kept) + "\n")
PY
    echo "long-runs/$name: step $step"
    ;;
  continue)
    have=$(step_of "$run")  # a damaged checkpoint stops the script here (set -e), naming it
    kept=$(step_of "$keep")
    if [ "$have" -lt "$kept" ]; then
      echo "restoring $run from $keep"
      mkdir -p "$run/checkpoints"
      cp "$keep/config.json" "$keep/metrics.jsonl" "$run/"
      cp "$keep/checkpoints/last.safetensors" "$run/checkpoints/last.safetensors"
    fi
    # the best checkpoint is not kept (weights only, written again at the next better validation;
    # until then eval and export use the last one)
    # A run started with precision=bf16 on a CPU with AVX512-BF16 would crawl where bfloat16 products
    # are only emulated (an AVX2-only EPYC took 50 s a step instead of 1): there it continues with
    # precision=auto (float32), saying so, unless the command line gives a precision itself.
    [ -f "$run/config.json" ] || { echo "long-runs.sh: nothing to continue: neither $run nor $keep holds a run (config.json)" >&2; exit 2; }
    case " $* " in
      *" precision="* | *".precision="* | *"=precision="*) ;;
      *)
        why=$(.venv/bin/python - "$run/config.json" <<'PY'
import json, sys
from drawnet import engine
from drawnet.train import resolve_device
train = json.load(open(sys.argv[1])).get("train") or {}
try:
    native, why = engine.native_bf16(resolve_device(train.get("device", "auto"))) if train.get("precision") == "bf16" else (True, "")
except ValueError:  # a device this machine lacks: the trainer itself says so
    native, why = True, ""
print("" if native else why)
PY
)
        if [ -n "$why" ]; then
          echo "long-runs.sh: $run was trained with precision=bf16, but $why: continuing with --set precision=auto (float32; give --set precision=bf16 to keep it)" >&2
          set -- "$@" --set precision=auto
        fi
        ;;
    esac
    kind=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("kind", "draw"))' "$run/config.json")
    if [ "$kind" = classifier ]; then
      exec .venv/bin/drawnet classify train --out "$run" --resume "$@"
    fi
    exec .venv/bin/drawnet train --resume "$run" "$@"
    ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The lever study of the cluttered100-8 recipe (bench/QUALITY.md, "Table 1: the classifier's recipe"):
# one short run per lever, each the recipe the study started from (the preset with clipping at 10
# and a peak rate of 1e-3 and Adam beta2 0.999, as it was then) with one setting changed and the same 16 epochs (cosine over those 16, so every run
# completes its schedule), run one after another on one core. All now run the fast glimpse recurrence
# in float32 (drawnet.fast_classifier). base, lr5e-4, clip1 and seed1 ran the readable model (the same
# mathematics, other float rounding): collapses are chaotic, so to replay those four exactly add
# --set fast=false (bench/QUALITY.md, "Table 1").
#
#   taskset -c 1 bash bench/classifier_levers.sh [NAME ...]   # default: all of them; runs/lev-NAME
#   python bench/quality.py runs/lev-*                        # the table
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A LEVER=(
  [base]=""
  [lr5e-4]="--set lr=5e-4"
  [lr2e-3]="--set lr=2e-3"
  [b128]="--set batch_size=128"
  [clip1]="--set grad_clip=1"
  [paper-window]="--set attention_sigma_init=false"
  [warm3000]="--set lr_warmup_steps=3000"
  [seed1]="--set seed=1"
  # the recipe that followed (clipping at 1) with one more change, against lev-clip1
  [clip1-lr5e-4]="--set grad_clip=1 --set lr=5e-4"
  [clip1-bf16]="--set grad_clip=1 --set precision=bf16"
  [clip1-again]="--set grad_clip=1"  # lev-clip1 again on the fast path: how far two runs of one recipe differ
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(base lr5e-4 lr2e-3 b128 clip1 paper-window)
for name in "${names[@]}"; do
  [ -n "${LEVER[$name]+x}" ] || { echo "unknown lever $name; choose from ${!LEVER[*]}" >&2; exit 2; }
done
for name in "${names[@]}"; do
  out=runs/lev-$name
  if [ -f "$out/checkpoints/last.safetensors" ]; then echo "$out exists; skipped"; continue; fi
  # shellcheck disable=SC2086
  .venv/bin/drawnet classify train --preset cluttered100-8 --out "$out" --quiet \
    --set threads=1 --set epochs=16 --set tensorboard=false --set pictures=false --set grad_clip=10 \
    --set lr=1e-3 --set precision=fp32 --set adam_beta2=0.999 ${LEVER[$name]}
done

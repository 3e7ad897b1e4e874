#!/usr/bin/env bash
# The lever study of the cluttered100-8 recipe (bench/QUALITY.md, "Table 1: the classifier's recipe"):
# one short run per lever, each the recipe the study started from (the preset with clipping at 10
# and a peak rate of 1e-3 and Adam beta2 0.999, as it was then) with one setting changed and the same 16 epochs (cosine over those 16, so every run
# completes its schedule), run one after another on one core. All now run the fast glimpse recurrence
# in float32 (drawnet.fast_classifier). base, lr5e-4, clip1 and seed1 ran the readable model (the same
# mathematics, other float rounding): collapses are chaotic, so to replay those four exactly add
# --set fast=false (bench/QUALITY.md, "Table 1").
#
#   taskset -c 1 bash bench/classifier_levers.sh [NAME ...]   # default: the first round's; runs/lev-NAME
#   taskset -c 1 bash bench/classifier_levers.sh now-base now-b128 ...   # round 2, on today's preset
#   python bench/quality.py runs/lev-*                        # the table
set -euo pipefail
set -f  # no globbing of the settings below
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
# Round 2: the levers against the preset's recipe of today (peak 5e-4, clipping 1, Adam beta2 0.95), each
# run as the preset is with one change and the same 16 epochs in float32: runs/lev-now-NAME.
declare -A NOW=(
  [base]=""
  [seed1]="--set seed=1"  # the spread of two runs of one recipe
  [b128]="--set batch_size=128"
  [paper-window]="--set attention_sigma_init=false"
  [fixed-clutter]='--set data_options={"size":100,"distractors":8,"on_the_fly":false}'  # the same 50,000 images every epoch
  [lr1e-3]="--set lr=1e-3"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(base lr5e-4 lr2e-3 b128 clip1 paper-window)
for name in "${names[@]}"; do
  case "$name" in
    now-*) [ -n "${NOW[${name#now-}]+x}" ] ;;
    *) [ -n "${LEVER[$name]+x}" ] ;;
  esac || { echo "unknown lever $name; choose from ${!LEVER[*]} or now-NAME with NAME from ${!NOW[*]}" >&2; exit 2; }
done
for name in "${names[@]}"; do
  out=runs/lev-$name
  if [ -f "$out/checkpoints/last.safetensors" ]; then echo "$out exists; skipped"; continue; fi
  if [ "${name#now-}" != "$name" ]; then
    # shellcheck disable=SC2086
    .venv/bin/drawnet classify train --preset cluttered100-8 --out "$out" --quiet \
      --set threads=1 --set epochs=16 --set tensorboard=false --set pictures=false --set precision=fp32 \
      ${NOW[${name#now-}]}  # split on spaces only (no setting holds one); set -f keeps the JSON as it is
    continue
  fi
  # shellcheck disable=SC2086
  .venv/bin/drawnet classify train --preset cluttered100-8 --out "$out" --quiet \
    --set threads=1 --set epochs=16 --set tensorboard=false --set pictures=false --set grad_clip=10 \
    --set lr=1e-3 --set precision=fp32 --set adam_beta2=0.999 ${LEVER[$name]}
done

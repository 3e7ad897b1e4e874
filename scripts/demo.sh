#!/usr/bin/env bash
# The main job: install, fetch MNIST, train the demo preset, then write samples, animations, an
# evaluation and the HTML report. Re-running continues (or reuses) the existing run.
#   bash scripts/demo.sh [RUN_DIR]        (default runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo}
bash scripts/setup.sh
D=.venv/bin/drawnet
$D data fetch mnist
if [ -f "$RUN/checkpoints/last.safetensors" ]; then
  $D train --resume "$RUN"
else
  $D train --preset demo --out "$RUN"
fi
$D eval "$RUN" --iw 100 --iw-limit 1000
$D sample "$RUN" -n 64 --out "$RUN/samples.png"
$D sample "$RUN" -n 16 --nearest --out "$RUN/samples_nearest.png"
$D animate "$RUN" --out "$RUN/generation.gif"
$D animate "$RUN" --reconstruct --out "$RUN/reconstruction.gif"
$D report "$RUN"
echo
echo "demo finished: open $RUN/report.html"

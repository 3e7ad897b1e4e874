#!/usr/bin/env bash
# The test command: installs everything on a fresh machine, then lint + the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests use tiny tensors: one thread per process is faster than two here (the default run took
# 27 s with one thread and 70 s with two, each beside one other busy process on this 2-core machine),
# and it leaves the other core to the subprocess tests.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest -q
# Slower end-to-end checks (subprocess training, DDP, kill -9 and resume), kept out of the
# default pytest run for quick iteration but always run here.
.venv/bin/python -m pytest -q -m slow

#!/usr/bin/env bash
# Create .venv (if needed) and install drawnet with its dependencies.
# torch is installed first, pinned: on this kind of machine pip takes the CPU build from local disk
# in seconds; on a machine with a GPU the same command fetches PyPI's CUDA build. pyproject.toml
# then asks only for torch>=2.3, which the pinned build satisfies, so nothing larger is pulled in.
# Override with DRAWNET_TORCH="torch==X.Y.Z" (or a path to a wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "${DRAWNET_TORCH:-torch==2.13.0}"
fi
.venv/bin/pip install -q -e '.[dev]'

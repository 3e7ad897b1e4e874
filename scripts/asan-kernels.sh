#!/usr/bin/env bash
# The C kernels' tests with AddressSanitizer: builds drawnet/_kernels.c with -fsanitize=address into its
# own cache (/tmp/drawnet-asan-kernels) and runs tests/test_kernels.py and tests/test_fast_classifier.py
# with libasan preloaded, so a read or write past a buffer fails here instead of corrupting memory.
#   bash scripts/asan-kernels.sh            # about 80 s on one core
# The tests that raise an exception through autograd are left out: libasan's interceptor of C++
# throws cannot run inside a preloaded Python (it aborts with "CHECK failed ... __cxa_throw").
set -euo pipefail
cd "$(dirname "$0")/.."
asan=$(${CC:-cc} -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "asan-kernels: no libasan.so for ${CC:-cc} (install the compiler's sanitizer runtime)" >&2; exit 2; }
export DRAWNET_KERNEL_CACHE=/tmp/drawnet-asan-kernels ASAN_OPTIONS=detect_leaks=0
LD_PRELOAD=$asan exec .venv/bin/python - <<'PY'
import sys

import pytest

from drawnet import kernels

kernels._BASE_FLAGS = [*kernels._BASE_FLAGS, "-fsanitize=address", "-g", "-fno-omit-frame-pointer"]
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_kernels.py", "tests/test_fast_classifier.py",
                      "-k", "not bf16_products and not falls_back and not chooses"]))
PY

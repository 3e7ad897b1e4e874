"""Fused CPU kernels for :mod:`drawnet.fast`: ``_kernels.c``, compiled on first use, loaded with ctypes.

Why: after the matrix products, a DRAW training step on CPU is dominated by about a hundred small
elementwise PyTorch operations per time step (LSTM gates, filterbanks, glimpses) and by the Python
that issues them. ``_kernels.c`` does each group in one pass over memory (bench/RESULTS.md has the
measurements).

How: the C file is compiled with the system C compiler (``$CC``, else ``cc``) into
``~/.cache/drawnet/kernels/`` (or ``$DRAWNET_KERNEL_CACHE``) the first time it is needed, written
to a temporary file and renamed, keyed by a hash of the source, the compiler, the flags and the CPU.
The build records the library's SHA-256 beside it (``<name>.so.sha256``, written atomically); a
cached file is loaded only if it matches that record, else it is built again (never loaded: a
file put there under the expected name is not run).
It has no Python or PyTorch headers, so it compiles in a few seconds (2.4 s here). The kernels take float32 pointers
and row strides; the wrappers below check the layout of every tensor they pass.

When there is no compiler, the compile fails, the tensors are not float32 on the CPU, or
``DRAWNET_KERNELS=0`` is set, drawnet.fast uses its PyTorch operations instead (same results to
float rounding; tests/test_kernels.py checks both). :func:`status` says which is in use and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

from .rundir import atomic_write

SOURCE = Path(__file__).with_name("_kernels.c")
VERSION = 3  # must equal drawnet_kernels_version() in _kernels.c

# -fassociative-math (with the two flags it requires) lets the compiler vectorise sums, in another
# order than a plain loop: results differ from PyTorch's at float rounding, as PyTorch's own
# kernels do between CPUs. No -ffast-math: it would assume there is no inf or NaN.
# -ffp-contract=fast fuses a * b + c into one FMA instruction (one rounding instead of two): -std=c99
# turns that off by default, and without it the exp polynomials and the filter sums take 1.6x as
# long (measured on the LSTM forward kernel: 263 -> 163 us for 128 x 256 cells, one thread).
_BASE_FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp", "-std=c99", "-fno-math-errno", "-ffp-contract=fast"]
_BASE_FLAGS += ["-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
# Tried in order: for this CPU, at its full vector width; then portable (a compiler that does not
# know this CPU).
_FLAG_SETS = [["-march=native", "-mprefer-vector-width=512"], ["-march=native"], []]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: str | None = None

_I, _L, _P = ctypes.c_int, ctypes.c_long, ctypes.c_void_p
_SIGNATURES = {
    "drawnet_kernels_version": [],
    "lstm_forward": [_I, _I, _I, _P, _L, _P, _L, _P, _L, _P, _L],
    "lstm_backward": [_I, _I, _I, _P, _L, _P, _L, _P, _L, _P, _L, _P, _L, _P, _L, _P, _L],
    "error_image": [_I, _I, _I, _P, _P, _P, _L],
    "error_image_backward": [_I, _I, _I, _P, _P, _L, _P, _L, _P],
    "to_blocked": [_I, _I, _I, _P, _L, _P],
    "from_blocked": [_I, _I, _I, _P, _P, _L, _I],
    "blocked_sum": [_I, _I, _P, _P],
    "accumulate_sigmoid": [_I, _I, _I, _P, _P, _L, _P, _P, _L],
    "read_forward": [_I] * 6 + [_P, _P, _P, _P, _L, _P, _P, _P, _P, _P, _P, _P, _L],
    "read_backward": [_I] * 6 + [_P] * 8 + [_P, _L, _P, _L, _P],
    "write_forward": [_I] * 6 + [_P, _L, _P, _L] + [_P] * 7,
    "write_backward": [_I] * 6 + [_P] * 7 + [_P, _L, _P, _L],
    "drawnet_bf16_native": [],
    "gemm_packed_size": [_I, _I],
    "gemm_work_size": [_I, _I],
    "gemm_pack_b": [_I, _I, _I, _P, _L, _L, _P],
    "gemm_bf16": [_I, _I, _I, _I, _P, _L, _L, _P, _P, _L, _P, _L, _P, _P],
}
_RESTYPES = {"drawnet_kernels_version": ctypes.c_int, "drawnet_bf16_native": ctypes.c_int,
             "gemm_packed_size": ctypes.c_long, "gemm_work_size": ctypes.c_long}


def cache_dir() -> Path:
    env = os.environ.get("DRAWNET_KERNEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "drawnet" / "kernels"


def _cpu_id() -> str:
    """The CPU's model and feature flags (a -march=native build is only valid on the same kind)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    wanted = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted)))


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_path(library: Path) -> Path:
    """Where the build records the SHA-256 of ``library``."""
    return library.with_name(library.name + ".sha256")


def _unverified(library: Path) -> str | None:
    """Why ``library`` is not the file a build here recorded (None when it is)."""
    try:
        recorded = record_path(library).read_text().strip()
    except OSError:
        return f"{library.name} has no build record ({record_path(library).name})"
    if _sha256(library) != recorded:
        return f"{library.name} does not match the SHA-256 its build recorded"
    return None


def _compile(compiler: str, rebuild: bool = False) -> tuple[Path | None, str]:
    """The compiled library for this source, compiler and CPU: from the cache, or built now."""
    source = SOURCE.read_bytes()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"C compiler {compiler!r} not usable ({err})"
    errors = []
    for extra in _FLAG_SETS:
        flags = _BASE_FLAGS + extra
        key = hashlib.sha256(
            b"\0".join([source, version.encode(), " ".join(flags).encode(), _cpu_id().encode(), sys.platform.encode()])
        ).hexdigest()[:20]
        target = cache_dir() / f"drawnet_kernels-{key}.so"
        if target.exists() and rebuild:
            target.unlink()
        why_rebuilt = ""
        if target.exists():
            why = _unverified(target)
            if why is None:
                return target, f"fused kernels in use ({target})"
            why_rebuilt = f"; built again, not loaded: {why}"
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            cmd = [compiler, *flags, "-o", tmp, str(SOURCE)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                digest = _sha256(tmp)
                os.replace(tmp, target)  # complete or absent: never a half-written library
                # Recorded after the rename: a crash between the two leaves a library with no
                # record, which is built again, never loaded.
                atomic_write(record_path(target), lambda path, text=digest + "\n": path.write_text(text))
                return target, f"fused kernels in use (compiled now: {target}{why_rebuilt})"
            errors.append(done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"])
        except (OSError, subprocess.SubprocessError) as err:
            errors.append([str(err)])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return None, "compiling drawnet/_kernels.c failed: " + "; ".join(e[0] for e in errors)


def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("DRAWNET_KERNELS", "1").strip() in ("0", "false", "no", "off"):
        return None, "turned off by DRAWNET_KERNELS=0"
    if not sys.platform.startswith("linux"):
        return None, f"fused kernels are only built on Linux (this is {sys.platform})"
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        return None, f"no C compiler ({compiler!r} not found; set CC)"
    path, message = _compile(compiler)
    if path is None:
        return None, message
    try:
        lib = _open(path)
    except (OSError, AttributeError):  # a damaged file in the cache: build it again
        path, message = _compile(compiler, rebuild=True)
        if path is None:
            return None, message
        try:
            lib = _open(path)
        except (OSError, AttributeError) as err:
            return None, f"loading {path} failed: {err}"
    if lib.drawnet_kernels_version() != VERSION:
        return None, f"{path} is version {lib.drawnet_kernels_version()}, expected {VERSION}"
    return lib, message


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, _RESTYPES.get(name)
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, compiling them on first use; None when they cannot be used (see status())."""
    global _lib, _status
    if _status is None:
        with _lock:
            if _status is None:
                _lib, _status = _load()
    return _lib


def status() -> str:
    """One line: whether the fused kernels are in use, and why not."""
    library()
    return _status or ""


def usable(t: Tensor) -> bool:
    """Whether drawnet.fast uses the kernels for tensors like ``t``."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and library() is not None


def bf16_native() -> bool:
    """Whether the loaded kernels multiply bfloat16 in hardware (built for a CPU with AVX512-BF16)."""
    lib = library()
    return lib is not None and bool(lib.drawnet_bf16_native())


def reset() -> None:
    """Forget the loaded state (tests switch DRAWNET_KERNELS and call this)."""
    global _lib, _status
    with _lock:
        _lib, _status = None, None


# ---------------------------------------------------------------------------- wrappers
def _rows(t: Tensor, rows: int, cols: int) -> tuple[int, int]:
    """(pointer, row stride) of a (rows, cols) float32 CPU matrix with contiguous rows."""
    if t.dtype != torch.float32 or t.device.type != "cpu" or tuple(t.shape) != (rows, cols):
        raise ValueError(f"kernel argument must be a float32 CPU tensor of shape {(rows, cols)}, got {tuple(t.shape)}")
    if cols > 1 and t.stride(1) != 1:
        raise ValueError("kernel argument rows must be contiguous")
    return t.data_ptr(), t.stride(0)


def lstm_forward(gates: Tensor, c_prev: Tensor, c_out: Tensor, h_out: Tensor, scratch: Tensor | None = None) -> None:
    """As drawnet.fast._lstm_forward: activate ``gates`` in place, write c' and h' (needs no ``scratch``)."""
    B, H = c_prev.shape
    library().lstm_forward(
        torch.get_num_threads(), B, H, *_rows(gates, B, 4 * H), *_rows(c_prev, B, H), *_rows(c_out, B, H),
        *_rows(h_out, B, H),
    )  # fmt: skip


def lstm_backward(dh: Tensor, dh2: Tensor | None, dc: Tensor, act: Tensor, c_prev: Tensor, c: Tensor, dgates: Tensor):
    """As drawnet.fast._lstm_backward with dh + dh2 reaching h'; returns ``dc``, now dL/dc_prev."""
    B, H = c.shape
    d2 = _rows(dh2, B, H) if dh2 is not None else (None, 0)
    library().lstm_backward(
        torch.get_num_threads(), B, H, *_rows(dh, B, H), *d2, *_rows(dc, B, H), *_rows(act, B, 4 * H),
        *_rows(c_prev, B, H), *_rows(c, B, H), *_rows(dgates, B, 4 * H),
    )  # fmt: skip
    return dc


def _flat(t: Tensor, shape: tuple[int, ...]) -> int:
    """Pointer to a contiguous float32 CPU tensor of the given shape."""
    if t.dtype != torch.float32 or t.device.type != "cpu" or tuple(t.shape) != shape or not t.is_contiguous():
        got = f"{t.dtype} {t.device.type} {tuple(t.shape)} contiguous={t.is_contiguous()}"
        raise ValueError(f"kernel argument must be a contiguous float32 CPU tensor of shape {shape}, got {got}")
    return t.data_ptr()


def error_image(x: Tensor, canvas: Tensor, out: Tensor) -> None:
    """(3) without read attention: out = x - sigmoid(canvas), all (batch, pixels)."""
    B, pixels = x.shape
    library().error_image(
        torch.get_num_threads(), B, pixels, _flat(x, (B, pixels)), _flat(canvas, (B, pixels)), *_rows(out, B, pixels)
    )


def error_image_backward(x: Tensor, x_hat: Tensor, d_x_hat: Tensor, d_canvas: Tensor) -> None:
    """d_canvas += d_x_hat * d(x - sigmoid(c))/dc, where sigmoid(c) = x - x_hat."""
    B, pixels = x.shape
    library().error_image_backward(
        torch.get_num_threads(), B, pixels, _flat(x, (B, pixels)), *_rows(x_hat, B, pixels),
        *_rows(d_x_hat, B, pixels), _flat(d_canvas, (B, pixels)),
    )  # fmt: skip


LANES = 16  # images per block in the blocked layout of _kernels.c


def blocks(batch: int) -> int:
    """Number of blocks of LANES images that hold ``batch`` images."""
    return -(-batch // LANES)


def to_blocked(rows: Tensor, out: Tensor) -> Tensor:
    """(batch, K) rows -> ``out`` (blocks, K, LANES), zero past the batch."""
    B, K = rows.shape
    library().to_blocked(torch.get_num_threads(), B, K, *_rows(rows, B, K), _flat(out, (blocks(B), K, LANES)))
    return out


def from_blocked(blocked: Tensor, out: Tensor, sigmoid: bool = False) -> Tensor:
    """(blocks, K, LANES) -> ``out`` (batch, K) rows, optionally through the logistic sigmoid."""
    B, K = out.shape
    library().from_blocked(
        torch.get_num_threads(), B, K, _flat(blocked, (blocks(B), K, LANES)), *_rows(out, B, K), int(sigmoid)
    )
    return out


def accumulate_sigmoid(canvas: Tensor, inc: Tensor, bias: Tensor, out: Tensor) -> None:
    """(15), (18) in generation: canvas += inc + bias; out = sigmoid(canvas), all (batch, K) rows."""
    B, K = canvas.shape
    library().accumulate_sigmoid(
        torch.get_num_threads(), B, K, _flat(canvas, (B, K)), *_rows(inc, B, K), _flat(bias, (K,)), *_rows(out, B, K)
    )


def blocked_sum(blocked: Tensor, batch: int) -> Tensor:
    """The sum over the ``batch`` images of (blocks, K, LANES)."""
    K = blocked.shape[1]
    out = blocked.new_empty(K)
    library().blocked_sum(batch, K, _flat(blocked, (blocks(batch), K, LANES)), _flat(out, (K,)))
    return out


class BlockedAttention:
    """One attention layer (read or write) run by _kernels.c on blocked images, with its saved state.

    ``shapes()`` gives the buffers it needs for T steps (drawnet.fast allocates them and keeps them
    for the next pass); the methods run one step t. Images (x, x^, the canvas and its gradient)
    are blocked (blocks, C*H*W, LANES); raw, patch and r and their gradients are rows (batch, K),
    usually column blocks of the fused products.
    """

    @staticmethod
    def shapes(T: int, B: int, image_shape: tuple[int, int, int], n: int, kind: str) -> dict[str, tuple[int, ...]]:
        C, H, W = image_shape
        P, nb = max(H, W), blocks(B)
        shapes = {"F": (T, nb, 2, n, P, LANES), "Zn": (T, nb, 2, n, LANES), "mu": (T, nb, 2, n, LANES)}
        shapes["sc"] = (T, nb, 3, LANES)
        if kind in ("read", "glimpse"):  # "glimpse": the image alone (the classifier's read), C channels
            K = 2 * C if kind == "read" else C
            shapes.update(left=(T, nb, K, n, H, LANES), glimpse=(T, nb, K * n * n, LANES))
        else:
            shapes.update(patch=(T, nb, C * n * n, LANES), right=(T, nb, C, n, W, LANES))
        return shapes

    def __init__(self, B: int, image_shape: tuple[int, int, int], n: int, buffers: dict[str, Tensor]):
        C, H, W = image_shape
        self.B, self.C, self.H, self.W, self.n, self.P = B, C, H, W, n, max(H, W)
        self.nb, self.pixels = blocks(B), C * H * W
        for name, tensor in buffers.items():
            setattr(self, name, tensor)
        self._ptrs: dict[int, list[int]] = {}  # the buffers never move: their checks are done once

    def _state(self, t: int) -> list[int]:
        """Pointers to step t's filterbanks, normalisers, centres and scalars (checked once, then kept)."""
        ptrs = self._ptrs.get(t)
        if ptrs is None:
            nb, n, P = self.nb, self.n, self.P
            ptrs = self._ptrs[t] = [
                _flat(self.F[t], (nb, 2, n, P, LANES)), _flat(self.Zn[t], (nb, 2, n, LANES)),
                _flat(self.mu[t], (nb, 2, n, LANES)), _flat(self.sc[t], (nb, 3, LANES)),
            ]  # fmt: skip
        return ptrs

    def _dims(self) -> list[int]:
        return [torch.get_num_threads(), self.B, self.C, self.H, self.W, self.n]

    def _image(self, t: Tensor) -> int:
        return _flat(t, (self.nb, self.pixels, LANES))

    def read_forward(self, t: int, x: Tensor, canvas: Tensor, x_hat: Tensor, raw: Tensor, r: Tensor) -> None:
        """(3), (21)-(27): x_hat = x - sigmoid(canvas) (blocked); rows r = the glimpses times gamma."""
        B, C, n, H = self.B, self.C, self.n, self.H
        library().read_forward(
            *self._dims(), self._image(x), self._image(canvas), self._image(x_hat), *_rows(raw, B, 5),
            *self._state(t), _flat(self.left[t], (self.nb, 2 * C, n, H, LANES)),
            _flat(self.glimpse[t], (self.nb, 2 * C * n * n, LANES)), *_rows(r, B, 2 * C * n * n),
        )  # fmt: skip

    def read_backward(self, t: int, x: Tensor, x_hat: Tensor, d_r: Tensor, d_raw: Tensor, d_canvas: Tensor) -> None:
        """Backward of read_forward: rows d_raw = dL/d raw; blocked d_canvas += the gradient through x_hat."""
        B, C, n, H = self.B, self.C, self.n, self.H
        library().read_backward(
            *self._dims(), self._image(x), self._image(x_hat), *self._state(t),
            _flat(self.left[t], (self.nb, 2 * C, n, H, LANES)), _flat(self.glimpse[t], (self.nb, 2 * C * n * n, LANES)),
            *_rows(d_r, B, 2 * C * n * n), *_rows(d_raw, B, 5), self._image(d_canvas),
        )  # fmt: skip

    def glimpse_forward(self, t: int, x: Tensor, raw: Tensor, r: Tensor) -> None:
        """(21)-(27) on the image alone (buffers of kind "glimpse"): rows r = gamma F_Y x F_X^T."""
        B, C, n, H = self.B, self.C, self.n, self.H
        library().read_forward(
            *self._dims(), self._image(x), None, None, *_rows(raw, B, 5), *self._state(t),
            _flat(self.left[t], (self.nb, C, n, H, LANES)), _flat(self.glimpse[t], (self.nb, C * n * n, LANES)),
            *_rows(r, B, C * n * n),
        )  # fmt: skip

    def glimpse_backward(self, t: int, x: Tensor, d_r: Tensor, d_raw: Tensor) -> None:
        """Backward of glimpse_forward: rows d_raw = dL/d raw from the rows d_r = dL/dr."""
        B, C, n, H = self.B, self.C, self.n, self.H
        library().read_backward(
            *self._dims(), self._image(x), None, *self._state(t), _flat(self.left[t], (self.nb, C, n, H, LANES)),
            _flat(self.glimpse[t], (self.nb, C * n * n, LANES)), *_rows(d_r, B, C * n * n), *_rows(d_raw, B, 5),
            None,
        )  # fmt: skip

    def write_forward(self, t: int, raw: Tensor, patch: Tensor, canvas: Tensor) -> None:
        """(21)-(26), (28)-(29), (8): blocked canvas += F_Y^T w F_X / gamma, w the rows ``patch``."""
        B, C, n = self.B, self.C, self.n
        library().write_forward(
            *self._dims(), *_rows(raw, B, 5), *_rows(patch, B, C * n * n), *self._state(t),
            _flat(self.patch[t], (self.nb, C * n * n, LANES)), _flat(self.right[t], (self.nb, C, n, self.W, LANES)),
            self._image(canvas),
        )  # fmt: skip

    def write_backward(self, t: int, d_canvas: Tensor, d_patch: Tensor, d_raw: Tensor) -> None:
        """Backward of write_forward from the blocked d_canvas = dL/dc_t: rows d_patch and d_raw."""
        B, C, n = self.B, self.C, self.n
        library().write_backward(
            *self._dims(), *self._state(t), _flat(self.patch[t], (self.nb, C * n * n, LANES)),
            _flat(self.right[t], (self.nb, C, n, self.W, LANES)), self._image(d_canvas),
            *_rows(d_patch, B, C * n * n), *_rows(d_raw, B, 5),
        )  # fmt: skip


# ---------------------------------------------------------------------------- bfloat16 products
class PackedMatrix:
    """A (K, N) float32 matrix rounded to bfloat16 and packed for :func:`gemm` (see _kernels.c).

    Packing costs one pass over the matrix; drawnet.fast packs each weight once per pass and uses
    it for all T steps.
    """

    __slots__ = ("K", "N", "words")

    def __init__(self, matrix: Tensor, out: Tensor | None = None):
        if matrix.dtype != torch.float32 or matrix.device.type != "cpu" or matrix.dim() != 2:
            raise ValueError(f"PackedMatrix needs a 2-d float32 CPU tensor, got {matrix.dtype} {tuple(matrix.shape)}")
        lib = library()
        self.K, self.N = matrix.shape
        size = lib.gemm_packed_size(self.K, self.N)
        if out is None or out.numel() < size:
            out = torch.empty(size, dtype=torch.int32)
        elif out.dtype != torch.int32:
            out = out.view(torch.int32)  # a kept float32 buffer of the right size
        self.words = out
        lib.gemm_pack_b(torch.get_num_threads(), self.K, self.N, matrix.data_ptr(), matrix.stride(0),
                        matrix.stride(1), out.data_ptr())


def packed_size(K: int, N: int) -> int:
    """Number of 32-bit words a packed (K, N) matrix takes."""
    return int(library().gemm_packed_size(K, N))


_scratch = threading.local()  # the packed-A scratch of gemm, per thread (ctypes calls release the GIL)


def _work(words: int) -> Tensor:
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < words:
        buf = _scratch.buf = torch.empty(max(words, 1 << 16), dtype=torch.int32)
    return buf


def gemm(out: Tensor, a: Tensor, b: PackedMatrix, add: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """``out`` (M, N) = ``add`` + bf16(a) @ bf16(b) + ``bias``, summed in float32.

    ``a`` (M, K) is float32 with any strides (a transposed view too); ``add`` (M, N, rows
    contiguous, may be ``out`` itself) and ``bias`` (N,) are optional; ``out`` has contiguous rows.
    """
    M, K = a.shape
    if K != b.K or a.dtype != torch.float32 or a.device.type != "cpu":
        raise ValueError(f"gemm: a must be float32 CPU of shape (M, {b.K}), got {a.dtype} {tuple(a.shape)}")
    c_ptr, ldc = _rows(out, M, b.N)
    d_ptr, ldd = _rows(add, M, b.N) if add is not None else (None, 0)
    bias_ptr = _flat(bias, (b.N,)) if bias is not None else None
    lib = library()
    work = _work(lib.gemm_work_size(M, K))
    lib.gemm_bf16(torch.get_num_threads(), M, b.N, K, a.data_ptr(), a.stride(0), a.stride(1), b.words.data_ptr(),
                  c_ptr, ldc, d_ptr, ldd, bias_ptr, work.data_ptr())
    return out

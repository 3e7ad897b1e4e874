"""The IDX file format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

Header: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension; the data follow in C order.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4")}


def parse_idx(data: bytes | bytearray, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array (a view on ``data`` for uint8 files)."""
    if len(data) < 4:
        raise ValueError(f"{source}: {len(data)} bytes, too short for an IDX header (4 bytes); the file is truncated")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _TYPES or not 1 <= ndim <= 4:
        raise ValueError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000 then a type byte such as 08 and "
            f"1-4 dimensions, e.g. 0x00000803 for images); this is not an IDX file"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_TYPES[type_code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{source}: {len(data)} bytes but the header says shape {shape} ({expected} bytes); "
            f"the file is truncated or corrupt, delete it and fetch again"
        )
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed (``.gz``) or not."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = bytearray(f.read())
        else:
            data = bytearray(path.read_bytes())  # writable, so torch.from_numpy needs no copy
    except (OSError, EOFError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read ({err}); the file is corrupt, delete it and fetch again") from err
    return parse_idx(data, str(path))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (used to write small test files and by users placing files by hand)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()

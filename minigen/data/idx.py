"""The IDX file format of MNIST and Fashion-MNIST: a checked reader and a writer.

An IDX file is a tiny header followed by one big-endian array::

    bytes 0-1   0x00 0x00          (always zero)
    byte  2     type code          0x08 uint8, 0x09 int8, 0x0B int16,
                                   0x0C int32, 0x0D float32, 0x0E float64
    byte  3     ndim               number of dimensions
    then        ndim x uint32      the dimensions, big-endian
    then        prod(dims) x itemsize bytes of data, big-endian, C order

The files are usually shipped gzipped (``train-images-idx3-ubyte.gz``).
``read_idx`` accepts both, recognising gzip by its own magic bytes (1f 8b), and
checks every field of the header against the file before trusting it: a
truncated download or a file of the wrong kind raises ``IDXError`` with the
file's name and what is wrong, instead of a reshape error three calls later.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

__all__ = ["IDXError", "read_idx", "write_idx", "IDX_DTYPES"]

# type code -> big-endian NumPy dtype
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {dt.newbyteorder("=").str: code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXError(ValueError):
    """An IDX file is missing pieces or is not an IDX file; the message names the file."""


def _read_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when the file starts with the gzip magic."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:  # truncated or damaged gzip stream
        raise IDXError(f"{path}: the gzip stream is damaged or cut short ({exc}); "
                       "the file is probably an incomplete copy, fetch it again") from None


def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a native-byte-order NumPy array.

    The result has the shape the header declares, e.g. (60000, 28, 28) uint8 for
    ``train-images-idx3-ubyte``.  Raises ``IDXError`` naming the file when the
    magic number, the type code or the size do not add up.
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IDXError(f"{path}: only {len(raw)} bytes, too short for the 4-byte IDX magic number")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise IDXError(f"{path}: bad magic number 0x{raw[:4].hex()}; an IDX file starts with two zero "
                       "bytes (e.g. 0x00000803 for images, 0x00000801 for labels). Is this an IDX file?")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IDXError(f"{path}: unknown IDX type code 0x{code:02X} (known codes: {known})")
    if ndim == 0:
        raise IDXError(f"{path}: header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IDXError(f"{path}: header declares {ndim} dimensions ({header_len} header bytes) "
                       f"but the file holds only {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    held = len(raw) - header_len
    if held != expected:
        shape = "x".join(str(d) for d in dims)
        raise IDXError(f"{path}: header says {shape} {dtype.newbyteorder('=').name} = {expected} bytes of "
                       f"data but the file holds {held}"
                       + (" (the file is truncated)" if held < expected else " (extra bytes at the end)"))
    array = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def write_idx(path, array) -> None:
    """Write ``array`` as an IDX file; gzipped when ``path`` ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (the IDX type codes).
    """
    path = os.fspath(path)
    array = np.asarray(array)
    code = _CODE_OF.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise TypeError(f"write_idx: IDX cannot store dtype {array.dtype}; "
                        "use uint8, int8, int16, int32, float32 or float64")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: IDX stores 1 to 255 dimensions, got {array.ndim}")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)

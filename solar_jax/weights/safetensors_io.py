"""Streaming safetensors: read one tensor into a caller's buffer, write tensors one by one.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw bytes. Reading with readinto() straight into the destination
slice means importing a model costs the model plus one tensor, and bfloat16 works through
ml_dtypes (numpy has no bfloat16 of its own). Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import ml_dtypes
import numpy as np

from solar_jax.errors import SolarError

_DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def dtype_code(dtype: Any) -> str:
    return _NAMES[np.dtype(dtype)]


class SafetensorsReader:
    """Random access to the tensors of one .safetensors file, validated up front."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SolarError(f"{self.path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise SolarError(f"{self.path}: truncated or corrupt safetensors file (header of {n} bytes, file of {size})")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SolarError(f"{self.path}: corrupt safetensors header ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries: dict[str, tuple[Any, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            if info.get("dtype") not in _DTYPES:
                raise SolarError(f"{self.path}: tensor {name} has unsupported dtype {info.get('dtype')!r}")
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = info["data_offsets"]
            if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
                raise SolarError(f"{self.path}: tensor {name} has {end - begin} bytes for shape {shape} {info['dtype']}")
            if self._data_start + end > size:
                raise SolarError(
                    f"{self.path}: truncated safetensors file: tensor {name} needs bytes up to "
                    f"{self._data_start + end}, the file has {size}")
            self._entries[name] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def nbytes(self, name: str) -> int:
        _, _, begin, end = self._entries[name]
        return end - begin

    def read(self, name: str) -> np.ndarray:
        dtype, shape, _, _ = self._entries[name]
        out = np.empty(shape, dtype)
        self._read_bytes(name, out)
        return out

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Fills `out` (any float dtype, same element count) with the tensor, converting if needed."""
        dtype, shape, _, _ = self._entries[name]
        if out.size != int(np.prod(shape, dtype=np.int64)):
            raise SolarError(f"{self.path}: tensor {name} has shape {shape}, expected {out.shape}")
        if out.dtype == dtype and out.flags.c_contiguous:
            self._read_bytes(name, out)
        else:
            out[...] = self.read(name).reshape(out.shape)

    def _read_bytes(self, name: str, out: np.ndarray) -> None:
        _, _, begin, end = self._entries[name]
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            got = f.readinto(view)
        if got != end - begin:
            raise SolarError(f"{self.path}: truncated safetensors file while reading {name}")


class SafetensorsWriter:
    """Writes a file whose tensors are declared up front and then streamed in that order."""

    def __init__(self, path: str | os.PathLike, specs: list[tuple[str, Any, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        self._order = []
        for name, dtype, shape in specs:
            nbytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
            header[name] = {"dtype": dtype_code(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, np.dtype(dtype), tuple(shape)))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the reference writer does
        self._file = open(path, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        want_name, dtype, shape = self._order[self._next]
        if name != want_name or array.dtype != dtype or tuple(array.shape) != shape:
            raise AssertionError(f"writer expected {want_name} {dtype} {shape}, got {name} {array.dtype} {array.shape}")
        self._file.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            self._file.close()
            raise AssertionError(f"writer closed after {self._next} of {len(self._order)} tensors")
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self._file.close()

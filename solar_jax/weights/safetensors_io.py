"""Streaming safetensors: read one tensor into a caller's buffer, write tensors one by one.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw bytes. Reading with readinto() straight into the destination
slice means importing a model costs the model plus one tensor, and bfloat16 works through
ml_dtypes (numpy has no bfloat16 of its own). Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import math
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
_MAX_HEADER = 100_000_000  # the safetensors library's limit


def dtype_code(dtype: Any) -> str:
    return _NAMES[np.dtype(dtype)]


def _count(value: Any) -> bool:
    """A JSON unsigned integer (what the reference parser takes for usize)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_header(raw: bytes, file_size: int, where: str) -> tuple[dict[str, str], dict[str, tuple], int]:
    """Validates a header as the `safetensors` library does; returns (metadata,
    {name: (dtype, shape, begin, end)}, data start). Everything it refuses is a SolarError:
    a header that is not a JSON object of entries {dtype, shape, data_offsets} with
    non-negative integers, offsets that do not tile the data section from 0 without gaps or
    overlaps, byte counts other than dtype x shape, data that does not end at the file's end."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SolarError(f"{where}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise SolarError(f"{where}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SolarError(f"{where}: corrupt safetensors header (__metadata__ must map names to strings)")
    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise SolarError(f"{where}: tensor {name} lacks dtype, shape or data_offsets in the header")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(_count(d) for d in shape):
            raise SolarError(f"{where}: tensor {name} has an invalid shape {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets):
            raise SolarError(f"{where}: tensor {name} has invalid data_offsets {offsets!r}")
        if info["dtype"] not in _DTYPES:
            raise SolarError(f"{where}: tensor {name} has unsupported dtype {info['dtype']!r}")
        dtype = np.dtype(_DTYPES[info["dtype"]])
        entries[name] = (dtype, tuple(shape), offsets[0], offsets[1])
    end = 0  # the tensors, in offset order, must tile [0, data size) exactly
    for name, (dtype, shape, begin, stop) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if begin != end or stop < begin:
            raise SolarError(f"{where}: tensor {name} has data_offsets [{begin}, {stop}] where [{end}, ...] was "
                             "expected (gaps and overlaps are refused)")
        nbytes = dtype.itemsize * math.prod(shape)
        if stop - begin != nbytes:
            raise SolarError(f"{where}: tensor {name} has {stop - begin} bytes for shape {shape} {dtype.name}")
        end = stop
    data_start = 8 + len(raw)
    if data_start + end != file_size:
        what = "truncated" if data_start + end > file_size else "corrupt"
        raise SolarError(f"{where}: {what} safetensors file: its tensors end at byte {data_start + end}, "
                         f"the file has {file_size}")
    return metadata, entries, data_start


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
            raw = f.read(n)
        self.metadata, self._entries, self._data_start = parse_header(raw, size, self.path)

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

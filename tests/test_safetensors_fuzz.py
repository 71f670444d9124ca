"""Our safetensors reader is at least as strict as the `safetensors` library: a differential
fuzz over mutated real headers. Every file the library refuses, ours refuses with one line
(a SolarError); every file it accepts, ours reads to the same bytes."""

import json
import random
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from solar_jax.errors import SolarError
from solar_jax.weights.safetensors_io import SafetensorsReader

DTYPES = ["F32", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL", "F64", "I16"]


@pytest.fixture(scope="module")
def real_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"model.embed_tokens.weight": torch.randn(6, 4, generator=g),
               "model.norm.weight": torch.randn(4, generator=g).to(torch.bfloat16),
               "model.layers.0.mlp.up_proj.weight": torch.randn(3, 4, generator=g).to(torch.float16),
               "step": torch.tensor(7, dtype=torch.int64),
               "empty": torch.zeros(0, 3)}, str(path), metadata={"format": "pt"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _as_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _library(path):
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: _as_bytes(f.get_tensor(k)) for k in f.keys()}
    except Exception:  # noqa: BLE001  any refusal counts
        return None


def _ours(path):
    reader = SafetensorsReader(path)
    return {k: reader.read(k).tobytes() for k in reader.keys()}


def _mutate(rng: random.Random, header: dict, data: bytes) -> tuple[bytes, str]:
    """One random mutation of a real file: (file bytes, what was done)."""
    h = json.loads(json.dumps(header))
    names = [k for k in h if k != "__metadata__"]
    name = rng.choice(names)
    entry = h[name]
    kind = rng.randrange(16)
    text, tail = None, data
    if kind == 0:
        i = rng.randrange(2)
        entry["data_offsets"][i] += rng.choice([-256, -8, -2, -1, 1, 2, 4, 8, 10**6])
    elif kind == 1:
        entry["data_offsets"] = [entry["data_offsets"][1], entry["data_offsets"][0]]
    elif kind == 2 and entry["shape"]:
        i = rng.randrange(len(entry["shape"]))
        entry["shape"][i] = max(0, entry["shape"][i] + rng.choice([-1, 1, 3]))
    elif kind == 3:
        entry["shape"] = entry["shape"] + [1] if rng.random() < 0.5 else entry["shape"][:-1]
    elif kind == 4:
        entry["dtype"] = rng.choice(DTYPES)
    elif kind == 5:
        del entry[rng.choice(["dtype", "shape", "data_offsets"])]
    elif kind == 6:
        field = rng.choice(["shape", "data_offsets"])
        bad = rng.choice(["1", 1.0, True, None, -1, [1.5], [True], {}])
        entry[field] = bad if not isinstance(entry[field], list) or rng.random() < 0.5 else \
            [bad] + entry[field][1:]
    elif kind == 7:
        h["__metadata__"] = rng.choice([{"format": 1}, ["x"], "pt", {"format": None}, None, {}])
    elif kind == 8:
        tail = data[:rng.randrange(len(data))]  # truncated
    elif kind == 9:
        tail = data + b"\0" * rng.choice([1, 8, 64])  # trailing bytes
    elif kind == 10:  # a duplicate name: the later entry wins in JSON parsers that accept it
        text = json.dumps(h)[:-1] + f', "{name}": ' + json.dumps(h[rng.choice(names)]) + "}"
    elif kind == 11:
        h[name + ".copy"] = dict(entry)  # two names over the same bytes (overlap)
    elif kind == 12:
        text = rng.choice(["[]", '"x"', "null", "{", '{"a": 1}', "{}"])
    elif kind == 13:
        raw = json.dumps(h).encode()
        cut = rng.randrange(len(raw))
        raw = raw[:cut] + b"\xff\xfe" + raw[cut:]  # invalid UTF-8
        return struct.pack("<Q", len(raw)) + raw + tail, "invalid utf-8"
    elif kind == 14:
        raw = json.dumps(h).encode()
        delta = rng.choice([-3, -1, 1, 5, 10**8, 2**63])
        return struct.pack("<Q", max(0, len(raw) + delta) % 2**64) + raw + tail, f"header length {delta:+d}"
    else:
        entry["data_offsets"] = [0, 0] if rng.random() < 0.5 else entry["data_offsets"]
        entry["shape"] = [0] + entry["shape"]
    raw = (text if text is not None else json.dumps(h)).encode()
    raw += b" " * rng.choice([0, 0, 3])  # padding after the JSON is legal
    return struct.pack("<Q", len(raw)) + raw + tail, f"kind {kind} on {name}"


def test_reader_is_as_strict_as_the_safetensors_library(real_file, tmp_path):
    header, data = real_file
    rng = random.Random(0)
    refused = accepted = 0
    for case in range(600):
        blob, what = _mutate(rng, header, data)
        path = tmp_path / f"case{case}.safetensors"
        path.write_bytes(blob)
        theirs = _library(path)
        if theirs is None:
            with pytest.raises(SolarError) as e:
                _ours(path)
            assert "\n" not in str(e.value), (what, str(e.value))
            refused += 1
        else:
            try:
                ours = _ours(path)
            except SolarError as e:
                if "unsupported dtype" in str(e):  # a dtype the library has and we do not read
                    continue
                raise AssertionError(f"{what}: the library reads it, ours refuses: {e}") from None
            assert ours == theirs, what
            accepted += 1
        path.unlink()
    # Both classes were exercised, many times.
    assert refused > 200 and accepted > 50, (refused, accepted)


def test_negative_offsets_pointing_into_the_header_are_refused(real_file, tmp_path):
    # The case that once read model.norm.weight out of the JSON header bytes.
    header, data = real_file
    h = json.loads(json.dumps(header))
    h["model.norm.weight"]["data_offsets"] = [-256, 0]
    raw = json.dumps(h).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    with pytest.raises(SolarError, match="invalid data_offsets"):
        SafetensorsReader(path)
    np.testing.assert_equal(_library(path), None)

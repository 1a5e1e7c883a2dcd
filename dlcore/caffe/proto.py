"""The Caffe model file: protobuf wire format, read and written without Caffe or protobuf.

DeepLab v1 and v2 were released as Caffe models (`.caffemodel`, a protobuf `NetParameter`). Of its schema
only a few fields matter here

    NetParameter       layer = 100 (LayerParameter), legacy layers = 2 (V1LayerParameter)
    LayerParameter     name = 1, type = 2 (string), blobs = 7 (BlobProto)
    V1LayerParameter   name = 4, type = 5 (enum), blobs = 6
    BlobProto          num/channels/height/width = 1..4 (legacy 4-D shape), data = 5 (packed float),
                       shape = 7 (BlobShape: dim = 1, packed int64), double_data = 8 (packed double)

so `read_caffemodel` is a small wire-format reader (varints and length-delimited fields; packed floats go
straight into NumPy with `np.frombuffer`, no per-float Python loop) and `write_caffemodel` its inverse, used
by the tests and notebook 08 to make small files with known values. Which layer fills which dlcore module
is `dlcore.caffe.mapping`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dlcore.io import atomic_write_bytes

# --------------------------------------------------------------------------------------------------
# Protobuf wire format (https://protobuf.dev/programming-guides/encoding/)
# --------------------------------------------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# V1LayerParameter.LayerType values (caffe.proto) for the layers that carry weights, for readable messages.
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution", 0: "None"}


class _Truncated(Exception):
    """Raised inside the reader; turned into a ValueError naming the file."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Truncated(f"a varint runs past the end of its message at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Truncated(f"a varint longer than 10 bytes at byte {pos} (not protobuf)")


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value) over one message; value is an int, or (start, end) for LEN."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Truncated(f"field number 0 at byte {pos} (not protobuf)")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _LEN:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Truncated(f"field {field} claims {n} bytes at byte {pos}, but only {end - pos} remain")
            value, pos = (pos, pos + n), pos + n
        elif wire == _I32 or wire == _I64:
            n = 4 if wire == _I32 else 8
            if pos + n > end:
                raise _Truncated(f"a {8 * n}-bit field {field} runs past the end at byte {pos}")
            value, pos = (pos, pos + n), pos + n
        else:
            raise _Truncated(f"wire type {wire} (field {field}) at byte {pos} is not one protobuf uses here")
        yield field, wire, value


def _packed_varints(buf, span) -> list[int]:
    out, pos = [], span[0]
    while pos < span[1]:
        v, pos = _varint(buf, pos, span[1])
        out.append(v)
    return out


def _read_blob(buf, start: int, end: int) -> np.ndarray:
    """BlobProto -> float32 array of its shape (BlobShape, or the legacy num/channels/height/width)."""
    legacy = {}
    shape = None
    chunks: list[np.ndarray] = []
    for field, wire, value in _fields(buf, start, end):
        if field in (1, 2, 3, 4) and wire == _VARINT:
            legacy[field] = value
        elif field in (5, 8):  # data (float) / double_data (double): packed, or one element per tag
            dtype = "<f4" if field == 5 else "<f8"
            a, b = value if wire != _VARINT else (0, 0)
            size = np.dtype(dtype).itemsize
            if (b - a) % size:
                raise _Truncated(f"blob data of {b - a} bytes is not a whole number of {dtype} values")
            chunks.append(np.frombuffer(buf, dtype=dtype, count=(b - a) // size, offset=a))
        elif field == 7 and wire == _LEN:
            shape = []
            for f2, w2, v2 in _fields(buf, *value):
                if f2 == 1:
                    shape.extend(_packed_varints(buf, v2) if w2 == _LEN else [v2])
    if shape is None:
        # Legacy blobs are 4-D (num, channels, height, width); InnerProduct weights are (1, 1, out, in).
        shape = [legacy.get(i, 0) for i in (1, 2, 3, 4)] if legacy else [0]
    data = np.concatenate(chunks) if len(chunks) > 1 else chunks[0] if chunks else np.zeros(0, np.float32)
    n = math.prod(shape)  # Python ints: np.prod wraps around at 2^64 (a [2^32, 2^32] blob would "hold" 0 values)
    if data.size != n:
        raise _Truncated(f"a blob holds {data.size} values for shape {tuple(shape)} ({n} expected)")
    return data.astype(np.float32).reshape(shape)  # astype copies: the arrays do not pin the file's bytes


def caffemodel_layers(path) -> list[tuple[str, str, list[np.ndarray]]]:
    """Every layer of a .caffemodel that carries blobs, in file order: (name, type, [float32 arrays])."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no caffemodel at {path}; give the path of a .caffemodel file")
    buf = path.read_bytes()
    layers = []
    try:
        for field, wire, value in _fields(buf, 0, len(buf)):
            if wire != _LEN or field not in (2, 100):
                continue
            v1 = field == 2
            name, kind, blobs = "", "", []
            for f, w, v in _fields(buf, *value):
                if f == (4 if v1 else 1) and w == _LEN:
                    name = bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
                elif f == (5 if v1 else 2):
                    kind = _V1_TYPES.get(v, f"V1 type {v}") if v1 else bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
                elif f == (6 if v1 else 7) and w == _LEN:
                    blobs.append(_read_blob(buf, *v))
            if blobs:
                layers.append((name, kind, blobs))
    except _Truncated as e:
        raise ValueError(f"{path} is not a readable .caffemodel (truncated or another format): {e}. "
                         "Download the file again and check its size / checksum") from None
    if not layers:
        raise ValueError(f"{path} holds no layers with weights: it is not a trained .caffemodel "
                         "(a .prototxt or a solverstate?); pass the .caffemodel file")
    return layers


def read_caffemodel(path) -> dict[str, list[np.ndarray]]:
    """{layer name: [blob arrays]} of a .caffemodel (weights first, then bias; BatchNorm: mean, var, factor)."""
    return {name: blobs for name, _, blobs in caffemodel_layers(path)}


# ---- writer: the inverse, for tests, notebook 08 and benchmarks -----------------------------------

def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_len(field: int, payload: bytes) -> bytes:
    return _enc_varint(field << 3 | _LEN) + _enc_varint(len(payload)) + payload


def _enc_blob(array, legacy: bool, double: bool) -> bytes:
    a = np.asarray(array)
    data = a.astype("<f8" if double else "<f4").tobytes()
    out = b""
    if legacy:  # num/channels/height/width, padded with leading 1s to 4-D like Caffe's old blobs
        dims = (1,) * (4 - a.ndim) + a.shape if a.ndim <= 4 else None
        if dims is None:
            raise ValueError(f"a legacy blob is at most 4-D, got shape {a.shape}")
        out += b"".join(_enc_varint((i + 1) << 3 | _VARINT) + _enc_varint(d) for i, d in enumerate(dims))
    else:
        out += _enc_len(7, _enc_len(1, b"".join(_enc_varint(d) for d in a.shape)))
    return out + _enc_len(8 if double else 5, data)


def encode_caffemodel(layers, *, legacy: bool = False, double: bool = False, net_name: str = "dlcore") -> bytes:
    """NetParameter bytes for `layers`: a dict {name: [arrays]} or a list of (name, type, [arrays]).

    legacy=True writes the old `layers` field (V1LayerParameter, 4-D num/channels/height/width blobs);
    double=True writes `double_data` instead of `data`.
    """
    items = [(n, "", b) for n, b in layers.items()] if isinstance(layers, dict) else list(layers)
    out = [_enc_len(1, net_name.encode())]
    for name, kind, blobs in items:
        kind = kind or ("Convolution" if blobs and np.ndim(blobs[0]) == 4 else "")
        if legacy:
            v1_type = {v: k for k, v in _V1_TYPES.items()}.get(kind, 4)
            msg = _enc_len(4, name.encode()) + _enc_varint(5 << 3 | _VARINT) + _enc_varint(v1_type)
            msg += b"".join(_enc_len(6, _enc_blob(b, True, double)) for b in blobs)
            out.append(_enc_len(2, msg))
        else:
            msg = _enc_len(1, name.encode()) + _enc_len(2, kind.encode())
            msg += b"".join(_enc_len(7, _enc_blob(b, False, double)) for b in blobs)
            out.append(_enc_len(100, msg))
    return b"".join(out)


def write_caffemodel(path, layers, **options) -> Path:
    """Write `layers` ({name: [arrays]} or [(name, type, [arrays])]) as a .caffemodel, atomically."""
    return atomic_write_bytes(path, encode_caffemodel(layers, **options))

"""Pack a model's named tensors into one flat array per dtype for the trip through Flower, and back.

Why: flwr 1.41 moves every ``Array`` of an ArrayRecord as separate objects (the array and its
chunks), each with its own HTTP request between ServerApp, SuperLink (an SQL object store),
SuperNode and ClientApp. The FedVLA trunk has ~100 tensors, so a round made ~1,500 small requests
and that cost tens of seconds on a 2-core machine, more than local training. Packed, a round
moves a handful of 5 MB chunks. The bytes are the same (plus a small JSON index).

A packed mapping holds ``fedvla.packed.<dtype>`` (1-D, the tensors of that dtype concatenated in
index order) and ``fedvla.packed.index`` (uint8, UTF-8 JSON ``[[name, dtype, shape], ...]``).
:func:`unpack_arrays` returns any mapping without the index unchanged, so unpacked records (tests,
older clients) keep working. Numpy only: the ClientApp imports this.
"""
from __future__ import annotations

import json
import math
from typing import Mapping

import numpy as np

PACKED_PREFIX = "fedvla.packed."
PACKED_INDEX = PACKED_PREFIX + "index"


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{name: ndarray} -> {fedvla.packed.<dtype>: 1-D buffer, fedvla.packed.index: JSON}; empty stays empty."""
    if not arrays:
        return {}
    index, groups = [], {}
    for name, value in arrays.items():
        a = np.asarray(value)
        index.append([name, a.dtype.name, list(a.shape)])
        groups.setdefault(a.dtype.name, []).append(a.reshape(-1))
    out = {PACKED_PREFIX + dtype: np.concatenate(parts) for dtype, parts in groups.items()}
    out[PACKED_INDEX] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8).copy()
    return out


def unpack_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_arrays` (views into the buffers); ValueError when index and buffers disagree."""
    if PACKED_INDEX not in arrays:
        return dict(arrays)
    try:
        index = json.loads(np.asarray(arrays[PACKED_INDEX], dtype=np.uint8).tobytes().decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"packed arrays: unreadable index: {err}") from err
    offsets: dict[str, int] = {}
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape in index:
        buf = arrays.get(PACKED_PREFIX + dtype)
        if buf is None or buf.dtype.name != dtype or buf.ndim != 1:
            raise ValueError(f"packed arrays: no 1-D {dtype} buffer for {name}")
        start, size = offsets.get(dtype, 0), math.prod(shape)
        if start + size > buf.size:
            raise ValueError(f"packed arrays: {name} {shape} runs past the end of the {dtype} buffer")
        out[name] = buf[start:start + size].reshape(shape)
        offsets[dtype] = start + size
    for key, buf in arrays.items():
        if key != PACKED_INDEX and offsets.get(key[len(PACKED_PREFIX):], 0) != buf.size:
            raise ValueError(f"packed arrays: {key} has {buf.size} values, the index uses "
                             f"{offsets.get(key[len(PACKED_PREFIX):], 0)}")
    return out

"""Packing named tensors into one flat array per dtype for Flower, and back (the round-trip is exact)."""
from __future__ import annotations

import numpy as np
import pytest

from fedvla_core.federated.wire import PACKED_INDEX, pack_arrays, unpack_arrays
from fedvla_flower.task import arrays_to_numpy, numpy_to_arrays


def test_pack_round_trip_through_an_array_record_and_bad_packs_are_refused():
    rng = np.random.default_rng(0)
    arrays = {"trunk.0.expert.1.w": rng.normal(size=(4, 3)).astype(np.float32),
              "trunk.0.gate": rng.normal(size=5).astype(np.float16), "empty": np.zeros((0, 2), np.float32),
              "scalar": np.float32(2.5) * np.ones((), np.float32)}
    packed = pack_arrays(arrays)
    assert sorted(packed) == sorted([PACKED_INDEX, "fedvla.packed.float32", "fedvla.packed.float16"])
    assert packed["fedvla.packed.float32"].size == 12 + 0 + 1
    back = arrays_to_numpy(numpy_to_arrays(packed))  # what the strategies see after Flower
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)
    assert unpack_arrays(arrays) == arrays and pack_arrays({}) == {}  # unpacked records pass through

    short = dict(packed, **{"fedvla.packed.float32": packed["fedvla.packed.float32"][:-1]})
    with pytest.raises(ValueError, match="past the end"):
        unpack_arrays(short)
    longer = dict(packed, **{"fedvla.packed.float16": np.ones(9, np.float16)})
    with pytest.raises(ValueError, match="index uses"):
        unpack_arrays(longer)

"""json_safe: whatever numbers a result holds, the JSON it gives is strict (no NaN, no Infinity)."""

import json
import math
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from harness.jsonsafe import json_safe

leaves = st.one_of(st.floats(), st.integers(), st.text(max_size=5), st.none(), st.booleans())
trees = st.recursive(
    leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
)


@given(trees)
def test_output_is_strict_json_and_keeps_finite_values(tree):
    text = json.dumps(json_safe(tree), allow_nan=False)
    back = json.loads(text)
    if isinstance(tree, float):
        assert back == (tree if math.isfinite(tree) else None)


def test_numpy_scalars_and_paths_become_plain_values():
    out = json_safe({"a": np.float64("nan"), "b": np.int64(3), "c": (np.float32(1.5), Path("x/y"))})
    assert out == {"a": None, "b": 3, "c": [1.5, "x/y"]}
    assert type(out["b"]) is int

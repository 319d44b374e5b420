"""Hypothesis strategies shared by every gradient and layer test.

* ``shapes()``: small array shapes (up to 4 dims of up to 5 entries);
* ``arrays(shape)``: float64 arrays with values in a safe range;
* ``broadcastable_pair()``: two shapes that broadcast together (NumPy's rules);
* ``away_from(values, points)``: used with ``assume`` to keep relu/abs/max away
  from kinks and ties, where a finite difference straddles two branches.
"""
from __future__ import annotations

import numpy as np
from hypothesis import assume, strategies as st
from hypothesis.extra import numpy as hnp

SMALL = dict(min_dims=0, max_dims=4, min_side=1, max_side=5)


def shapes(min_dims=0, max_dims=4, min_side=1, max_side=5):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def arrays(shape, low=-3.0, high=3.0):
    """float64 arrays of ``shape`` with finite values in [low, high]."""
    return hnp.arrays(np.float64, shape,
                      elements=st.floats(low, high, allow_nan=False, allow_infinity=False, width=64))


@st.composite
def array_and_shape(draw, low=-3.0, high=3.0, **shape_kw):
    shape = draw(shapes(**shape_kw))
    return draw(arrays(shape, low, high))


@st.composite
def broadcastable_pair(draw, low=-3.0, high=3.0, max_dims=4):
    """Two float64 arrays whose shapes broadcast together."""
    a_shape, b_shape = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=max_dims,
                                                              max_side=4)).input_shapes
    return draw(arrays(a_shape, low, high)), draw(arrays(b_shape, low, high))


def away_from(values, points=(0.0,), margin=1e-3):
    """True when every value is at least ``margin`` from each of ``points``."""
    values = np.asarray(values)
    return all(np.all(np.abs(values - p) > margin) for p in points)


def no_ties(values, margin=1e-3):
    """True when no two entries are within ``margin`` (max/min/sort have no ties)."""
    flat = np.sort(np.asarray(values).ravel())
    return flat.size < 2 or np.min(np.diff(flat)) > margin


def seeds():
    return st.integers(0, 2**31 - 1)


__all__ = ["shapes", "arrays", "array_and_shape", "broadcastable_pair", "away_from", "no_ties", "seeds",
           "assume"]

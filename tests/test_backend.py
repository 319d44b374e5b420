"""The backend's shared array helpers (minigen/backend.py) and what importing minigen does.

Claims checked: ``is_array`` / ``xp_of`` recognise the arrays of every device and
nothing else; ``logsumexp`` equals SciPy's on every axis layout, never overflows,
and gives -inf (not nan) for an all -inf slice; importing minigen leaves glibc's
allocator alone, and ``tune_malloc()`` changes it only when called.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.special as sps

import minigen as mg
from minigen import backend


def test_is_array_and_xp_of(device):
    a = backend.to_device(np.zeros(3), device)
    assert backend.is_array(a) and backend.is_array(np.zeros(()))
    for other in (mg.tensor([1.0]), [1.0], 1.0, np.float64(1.0), None):
        assert not backend.is_array(other), type(other)
    assert backend.xp_of(a) is backend.get_array_module(device)


@pytest.mark.parametrize("axis, keepdims", [(None, False), (None, True), (0, False), (-1, True),
                                            ((0, 2), False), ((1, 2), True)])
def test_logsumexp_matches_scipy(device, axis, keepdims):
    x = np.random.default_rng(0).normal(size=(3, 4, 5)) * 5
    got = backend.logsumexp(backend.to_device(x, device), axis=axis, keepdims=keepdims)
    want = sps.logsumexp(x, axis=axis, keepdims=keepdims)
    assert backend.device_of(got) == device and got.shape == np.shape(want)
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-13)


def test_logsumexp_is_stable(device):
    x = backend.to_device(np.array([[1000.0, 1000.0, -1000.0],
                                    [-np.inf, -np.inf, -np.inf],
                                    [-1000.0, -1000.0, -np.inf]]), device)
    with np.errstate(over="raise", invalid="raise"):  # no overflow, no nan from -inf - (-inf)
        got = backend.to_numpy(backend.logsumexp(x, axis=1))
    np.testing.assert_allclose(got, [1000.0 + np.log(2.0), -np.inf, -1000.0 + np.log(2.0)], rtol=1e-15)
    x32 = backend.to_device(np.array([100.0, 100.0], dtype=np.float32), device)   # e^100 overflows float32
    got32 = backend.logsumexp(x32)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(got32), 100.0 + np.log(2.0), rtol=1e-6)


_SPY = """
import ctypes, json, sys
calls = []
class Spy(ctypes.CDLL):
    def __getattr__(self, name):
        if name == "mallopt":
            calls.append(name)
        return super().__getattr__(name)
ctypes.CDLL = Spy
import minigen, minigen.functional, minigen.nn, minigen.optim, minigen.distributions, minigen.metrics
import minigen.data
from minigen import backend
after_import = (list(calls), backend.MALLOC_TUNED)
tuned = backend.tune_malloc() if sys.argv[1] == "call" else None
print(json.dumps({"after_import": after_import, "tuned": tuned, "calls": calls, "flag": backend.MALLOC_TUNED}))
"""


def _spy(mode):
    proc = subprocess.run([sys.executable, "-c", _SPY, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_importing_minigen_does_not_tune_malloc():
    out = _spy("import")
    assert out["after_import"] == [[], False]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_malloc_is_an_explicit_call():
    out = _spy("call")
    assert out["after_import"] == [[], False]          # nothing before the call ...
    assert out["calls"] and out["tuned"] is out["flag"]   # ... mallopt when asked

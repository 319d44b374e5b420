"""W0: one large matrix product, C = A @ B with A, B (1024, 1024) float32 ~ N(0, 1).

This is the floor under every other workload: minigen hands matmul straight to
NumPy's BLAS (OpenBLAS) or CuPy's cuBLAS, so minigen/torch here measures the BLAS
libraries (and the few microseconds of minigen's Tensor wrapper), not minigen.
FLOP = 2 n^3.  A ``numpy_ms`` field gives the bare ``xp.matmul`` for comparison.
"""
from __future__ import annotations

import minigen as mg
from minigen import backend

from .common import Case, Row

NAME = "W0"
TITLE = "matmul 1024^3"


def build(settings, twins=None, torch_device=None) -> Case:
    n = 128 if settings.quick else 1024
    g = mg.Generator(settings.seed, "cpu")
    a_host, b_host = g.normal((n, n)), g.normal((n, n))
    a = mg.tensor(a_host, device=settings.device)
    b = mg.tensor(b_host, device=settings.device)
    xp = backend.xp_of(a.data)

    engines = {"minigen": lambda: mg.matmul(a, b),
               "numpy": lambda: xp.matmul(a.data, b.data)}
    flop = 2.0 * n ** 3
    row = Row("matmul", "minigen", flop=flop, extras={"numpy": "numpy"})
    if twins is not None:
        engines["torch"] = twins.matmul_call(twins.tensor(a_host, torch_device),
                                             twins.tensor(b_host, torch_device))
        row.torch = "torch"
    return Case(engines, [row], info={"n": n})


def check(settings, twins, torch_device):
    """C from minigen against C from torch on the same A, B."""
    from .common import rel_err
    g = mg.Generator(settings.seed, "cpu")
    a, b = g.normal((64, 48)), g.normal((48, 32))
    ours = mg.matmul(mg.tensor(a, device=settings.device), mg.tensor(b, device=settings.device)).numpy()
    ref = twins.to_numpy(twins.tensor(a, torch_device) @ twins.tensor(b, torch_device))
    return [("C", rel_err(ours, ref), 1e-5)]

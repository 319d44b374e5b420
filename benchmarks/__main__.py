"""``python -m benchmarks``: run the workloads W0-W7 (see benchmarks/README.md).

The BLAS/OpenMP thread count must be fixed before NumPy (or PyTorch) is
imported, so it is set here, first: 2 threads unless the environment already
says otherwise.  PyTorch's intra-op threads are set to the same number.  So is
OpenBLAS's idle spin (OPENBLAS_THREAD_TIMEOUT=20, as ``import minigen`` before NumPy
would set it): without it the convolutions run their batch on one thread
(minigen/functional/parallel.py).
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

from .run import main  # noqa: E402  (after the thread settings, on purpose)

raise SystemExit(main())

"""Splitting a batch over threads whose BLAS runs on one thread each.

Why: with two cores, OpenBLAS splits every matrix product over two threads.  That is
right for one big square product, but a convolution's products are long and narrow
((rows, 288) @ (288, 32) for a 32-channel 3x3 convolution) and between them come
copies (im2col) and transposes that NumPy runs on one core.  Cutting the *batch* in two
and running each half's whole pipeline -- copy, product, transpose -- on its own thread,
with BLAS set to one thread there, keeps both cores busy the whole time: W3's 3x3
convolutions ran about 1.4x faster that way (benchmarks/README.md).  NumPy copies and
OpenBLAS release the GIL, so Python threads are enough.

It needs three things: OpenBLAS's thread-count setting ``openblas_set_num_threads_local``
(OpenBLAS 0.3.27+, which NumPy's wheels ship; in their pthreads build it sets the
process-wide count, so the split sets 1 and gives the caller its count back after);
more than one BLAS thread configured; and a limit on how long OpenBLAS's idle threads
spin after a threaded product (``backend.BLAS_SPIN_LIMITED``: minigen imported before
NumPy, or OPENBLAS_THREAD_TIMEOUT set by the user).  Without the limit, the threads
that OpenBLAS woke for the caller's last product keep a core busy for about 0.1 s and
the split is slower than no split (W3: 923 ms a step against 825 serial and 657 with
the limit).  $MINIGEN_BATCH_THREADS=N forces N threads, =1 turns the split off.
Otherwise ``split_batch`` runs the whole batch as one range on the calling thread.
Each output element is the same sum either way; only a reduction over the batch (a
weight gradient) adds its per-range partial sums in another order, a float32 rounding
difference.
"""
from __future__ import annotations

import ctypes
import glob
import os

__all__ = ["batch_threads", "split_batch", "sum_parts"]

_state = None     # (pid, workers, ThreadPoolExecutor or None, OpenBLAS library): a forked child sets up its own
split_calls = 0   # batches that ran on more than one thread (tests look at it)
MIN_SPLIT_SIZE = 1 << 18   # below this much work (elements of the caller's choosing), a handoff costs more than it saves


def _openblas():
    """NumPy's OpenBLAS as a ctypes library when it has ``openblas_set_num_threads_local``, else None."""
    import numpy as np
    paths = []
    try:
        with open("/proc/self/maps") as f:        # the library NumPy actually loaded (Linux)
            paths = sorted({line.split()[-1] for line in f if "openblas" in line and ".so" in line})
    except OSError:
        pass
    paths += glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "openblas_set_num_threads_local"):
            lib.openblas_set_num_threads_local.argtypes = [ctypes.c_int]
            lib.openblas_set_num_threads_local.restype = ctypes.c_int
            return lib
    return None


def _blas_thread_count(lib) -> int:
    for name in ("openblas_get_num_threads", "openblas_get_num_threads64_",
                 "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads"):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_int
            return int(fn())
    return 1


def _setup():
    """(workers, pool): how many threads a batch is split over, and the pool that runs them."""
    global _state
    if _state is not None and _state[0] == os.getpid():
        return _state[1], _state[2]
    workers, pool = 1, None
    try:
        asked = int(os.environ.get("MINIGEN_BATCH_THREADS") or 0)
    except ValueError:
        asked = 0
    from .. import backend
    lib = _openblas() if asked > 1 or (asked == 0 and backend.BLAS_SPIN_LIMITED) else None
    if lib is not None:
        workers = asked if asked > 1 else _blas_thread_count(lib)
        workers = max(1, min(workers, os.cpu_count() or 1))
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minigen-batch",
                                      initializer=lib.openblas_set_num_threads_local, initargs=(1,))
    _state = (os.getpid(), workers, pool, lib)
    return workers, pool


def batch_threads() -> int:
    """How many threads ``split_batch`` uses in this process (1: it runs serially)."""
    return _setup()[0]


def split_batch(fn, n: int, size: int) -> list:
    """[fn(a, b) for each contiguous range [a, b) of range(n)], in order.

    With ``batch_threads()`` > 1 and ``size`` (the work, e.g. elements of the column
    matrix) at least MIN_SPLIT_SIZE, range(n) is cut into one range per thread (at most n)
    and they run at once on the pool, each with a one-thread BLAS; fn must write only
    into its own range of any shared output.  Otherwise it is ``[fn(0, n)]``, run here.
    """
    global split_calls
    workers, pool = _setup()
    parts = max(1, min(n, workers)) if size >= MIN_SPLIT_SIZE else 1
    bounds = [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]
    if pool is None or parts == 1:
        return [fn(a, b) for a, b in bounds]
    split_calls += 1
    # In OpenBLAS's pthreads builds (NumPy's wheels) the "local" count is in fact the
    # process-wide one: set it to 1 for the split and give the caller back its own after.
    lib = _state[3]
    previous = lib.openblas_set_num_threads_local(1) if lib is not None else None
    try:
        return list(pool.map(lambda ab: fn(*ab), bounds))
    finally:
        if lib is not None:
            lib.openblas_set_num_threads_local(previous)


def sum_parts(parts):
    """The sum of ``split_batch``'s per-range partial sums (arrays, or None when nothing was
    summed), added into the first."""
    total = parts[0]
    for part in parts[1:]:
        if total is not None:
            total += part
    return total

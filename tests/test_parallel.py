"""Batch-split threads (minigen/functional/parallel.py) and the convolution kernels that use them.

``split_batch`` cuts a batch into one contiguous range per thread; the fast convolution
kernels run each range's whole pipeline (im2col copy, product, transpose) on its own
thread.  Here: the ranges cover the batch in order, small work stays on the calling
thread, and every convolution face gives the same numbers split over two threads as on
one (float64, 1e-12; the weight gradients add two partial sums, so not bit for bit).
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import minigen as mg
import minigen.functional as F
import minigen.functional.parallel as par


@pytest.fixture
def two_threads(monkeypatch):
    """split_batch with two workers and no size threshold, whatever this machine's BLAS is."""
    pool = ThreadPoolExecutor(2)
    monkeypatch.setattr(par, "_state", (os.getpid(), 2, pool, None))
    monkeypatch.setattr(par, "MIN_SPLIT_SIZE", 0)
    yield
    pool.shutdown()


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setattr(par, "_state", (os.getpid(), 1, None, None))


def test_ranges_cover_the_batch_in_order(two_threads):
    assert par.split_batch(lambda a, b: (a, b), 5, 10) == [(0, 2), (2, 5)]
    assert par.split_batch(lambda a, b: (a, b), 1, 10) == [(0, 1)]       # never an empty range


def test_small_work_and_one_thread_run_the_whole_batch_here(two_threads, monkeypatch):
    monkeypatch.setattr(par, "MIN_SPLIT_SIZE", 100)
    calls = par.split_calls
    assert par.split_batch(lambda a, b: (a, b), 8, 99) == [(0, 8)]
    assert par.split_batch(lambda a, b: (a, b), 8, 100) == [(0, 4), (4, 8)]
    assert par.split_calls == calls + 1
    monkeypatch.setattr(par, "_state", (os.getpid(), 1, None, None))
    assert par.split_batch(lambda a, b: (a, b), 8, 10 ** 9) == [(0, 8)]


def test_the_ranges_really_run_on_other_threads(two_threads):
    import threading
    names = par.split_batch(lambda a, b: threading.current_thread().name, 4, 10)
    assert threading.current_thread().name not in names


def test_batch_threads_follows_the_environment(monkeypatch):
    monkeypatch.setattr(par, "_state", None)
    monkeypatch.setenv("MINIGEN_BATCH_THREADS", "1")
    assert par.batch_threads() == 1 and par._state[2] is None
    monkeypatch.setattr(par, "_state", None)
    monkeypatch.delenv("MINIGEN_BATCH_THREADS")
    n = par.batch_threads()
    assert 1 <= n <= (os.cpu_count() or 1)
    monkeypatch.setattr(par, "_state", None)      # the next caller sets up afresh


def _serial_and_split(compute, monkeypatch):
    """(compute() on one thread, compute() split over two threads with no size threshold,
    how many split_batch calls split)."""
    monkeypatch.setattr(par, "_state", (os.getpid(), 1, None, None))
    serial = compute()
    pool = ThreadPoolExecutor(2)
    monkeypatch.setattr(par, "_state", (os.getpid(), 2, pool, None))
    monkeypatch.setattr(par, "MIN_SPLIT_SIZE", 0)
    calls = par.split_calls
    try:
        split = compute()
    finally:
        pool.shutdown()
    return serial, split, par.split_calls - calls


CASES = [  # x shape, w shape, stride, padding: 3x3 gather, strided col2im, 1x1, uneven batch
    ((5, 3, 9, 8), (4, 3, 3, 3), 1, 1),
    ((4, 3, 9, 9), (6, 3, 4, 4), 2, 1),
    ((6, 5, 7, 7), (3, 5, 1, 1), 1, 0),
    ((3, 2, 6, 5), (2, 2, 3, 2), 1, (2, 0)),
]


def _conv_and_grads(xs, ws, stride, padding):
    gen = np.random.default_rng(0)
    x = mg.tensor(gen.standard_normal(xs), requires_grad=True)
    w = mg.tensor(gen.standard_normal(ws), requires_grad=True)
    b = mg.tensor(gen.standard_normal(ws[0]), requires_grad=True)
    y = F.conv2d(x, w, b, stride=stride, padding=padding)
    gy = gen.standard_normal(y.shape)
    (y * mg.tensor(gy)).sum().backward()
    return y.numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()


@pytest.mark.parametrize("xs, ws, stride, padding", CASES)
def test_conv_faces_split_over_two_threads_equal_one_thread(xs, ws, stride, padding, monkeypatch):
    serial, split, calls = _serial_and_split(lambda: _conv_and_grads(xs, ws, stride, padding), monkeypatch)
    assert calls >= 3                                   # forward, input and weight gradient each split
    for a, b in zip(split, serial):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


def test_float32_conv_split_stays_float32_and_close(two_threads):
    gen = np.random.default_rng(1)
    x = gen.standard_normal((8, 4, 10, 10)).astype(np.float32)
    w = gen.standard_normal((6, 4, 3, 3)).astype(np.float32)
    y = F.conv2d(mg.tensor(x), mg.tensor(w), padding=1).numpy()
    assert y.dtype == np.float32
    ref = F.conv2d(mg.tensor(x.astype(np.float64)), mg.tensor(w.astype(np.float64)), padding=1).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_no_split_by_default_without_a_limit_on_openblas_spinning(monkeypatch):
    from minigen import backend
    monkeypatch.delenv("MINIGEN_BATCH_THREADS", raising=False)
    monkeypatch.setattr(backend, "BLAS_SPIN_LIMITED", False)
    monkeypatch.setattr(par, "_state", None)
    assert par.batch_threads() == 1
    monkeypatch.setattr(par, "_state", None)


def test_the_callers_blas_thread_count_comes_back_after_a_split(monkeypatch):
    from minigen import backend
    monkeypatch.setattr(par, "_state", None)
    monkeypatch.delenv("MINIGEN_BATCH_THREADS", raising=False)
    monkeypatch.setattr(backend, "BLAS_SPIN_LIMITED", True)
    if par.batch_threads() < 2:
        pytest.skip("this BLAS cannot run one thread per batch range (or one thread is configured)")
    lib = par._state[3]
    before = par._blas_thread_count(lib)
    seen = par.split_batch(lambda a, b: par._blas_thread_count(lib), 4, 1 << 30)
    assert seen == [1, 1]                        # each range ran with a one-thread BLAS
    assert par._blas_thread_count(lib) == before  # and the caller has its own back
    par._state[2].shutdown()
    monkeypatch.setattr(par, "_state", None)


def _norm_and_grads(kind):
    gen = np.random.default_rng(2)
    shape = (5, 6, 4, 3) if kind == "group" else (5, 7, 6)
    x = mg.tensor(gen.standard_normal(shape) * 2 + 1, requires_grad=True)
    p_shape = (6,) if kind == "group" else (6,)
    w = mg.tensor(gen.standard_normal(p_shape), requires_grad=True)
    b = mg.tensor(gen.standard_normal(p_shape), requires_grad=True)
    y = F.group_norm(x, 3, w, b) if kind == "group" else F.layer_norm(x, 6, w, b)
    (y * mg.tensor(gen.standard_normal(shape))).sum().backward()
    return y.numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()


@pytest.mark.parametrize("kind", ["group", "layer"])
def test_norms_split_over_two_threads_equal_one_thread(kind, monkeypatch):
    serial, split, calls = _serial_and_split(lambda: _norm_and_grads(kind), monkeypatch)
    assert calls >= 2                                   # forward and backward
    for a, b in zip(split, serial):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


def _attention_and_grads(masked):
    gen = np.random.default_rng(3)
    q, k, v = (mg.tensor(gen.standard_normal((4, 3, 5, 6)), requires_grad=True) for _ in range(3))
    inputs = [q, k, v]
    if masked:      # a float mask of the scores' full shape, with a gradient of its own
        inputs.append(mg.tensor(gen.standard_normal((4, 3, 5, 5)), requires_grad=True))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=inputs[3] if masked else None)
    grads = mg.grad(y, inputs, grad_outputs=mg.tensor(gen.standard_normal(y.shape)))
    return [y.numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize("masked", [False, True])
def test_attention_split_over_two_threads_equals_one_thread(masked, monkeypatch):
    serial, split, calls = _serial_and_split(lambda: _attention_and_grads(masked), monkeypatch)
    assert calls == 2                                   # the forward and the backward
    for a, b in zip(split, serial):
        np.testing.assert_array_equal(a, b)             # no sum over the batch: the same numbers

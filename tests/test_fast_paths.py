"""Fast paths beside their readable references: two-thread elementwise chains
(``F.math.split_elementwise``) and the paths that use them (Adam, SiLU, tanh GELU,
LeakyReLU), ``linear``'s and the norms' plain backward on arrays (batch and group norm's from
two reductions, batch norm's passes in halves), and the other fast paths further down.

The split runs an in-place elementwise chain on the two halves of the flattened arrays, one
half on a pool thread.  Elementwise arithmetic does not depend on where the arrays are cut,
so each fast path must agree *bit for bit* with the same chain on one thread, and with the
readable reference (Adam: ``optim.adam_reference_step``; GELU: the formula in ops that the
recorded backward runs) to float64 rounding.  Every test also asserts that the split was
taken, so a guard that silently falls back cannot pass for a working fast path.
"""
import math

import numpy as np
import pytest

import minigen as mg
import minigen.functional as F
from minigen import nn, optim
from minigen.functional import math as fm


@pytest.fixture
def two_threads(monkeypatch):
    """Force the split on (2 threads, tiny threshold) whatever the machine and $OMP_NUM_THREADS."""
    monkeypatch.setattr(fm, "elementwise_threads", lambda: 2)
    monkeypatch.setattr(fm, "SPLIT_MIN_ELEMENTS", 64)


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setattr(fm, "elementwise_threads", lambda: 1)


def test_split_runs_both_halves_and_falls_back_where_it_must(two_threads):
    a = np.arange(1000, dtype=np.float64)
    out = np.empty_like(a)
    calls = fm.split_calls
    fm.split_elementwise(lambda x, y: np.multiply(x, 2.0, out=y), a, out)
    assert fm.split_calls == calls + 1 and np.array_equal(out, 2 * a)
    # a strided view or a small array: one call on the whole arrays, never a copy that loses writes
    strided = np.zeros((100, 20))[:, ::2]
    fm.split_elementwise(lambda y: y.__iadd__(1.0), strided)
    assert fm.split_calls == calls + 1 and np.all(strided == 1.0)
    small = np.zeros(10)
    fm.split_elementwise(lambda y: y.__iadd__(1.0), small)
    assert fm.split_calls == calls + 1 and np.all(small == 1.0)


def test_an_error_in_the_pool_half_reaches_the_caller(two_threads):
    def fn(a):
        if a[0] >= 500:                       # only the second half fails
            raise FloatingPointError("second half")
    with pytest.raises(FloatingPointError, match="second half"):
        fm.split_elementwise(fn, np.arange(1000.0))


def _adam_run(opt_cls, steps, dtype, **kw):
    rng = np.random.default_rng(0)
    w = nn.Parameter(mg.tensor(rng.standard_normal((40, 30)).astype(dtype)))
    opt = opt_cls([w], lr=1e-2, **kw)
    grads = [rng.standard_normal((40, 30)).astype(dtype) for _ in range(steps)]
    for g in grads:
        w.grad = mg.tensor(g)
        opt.step()
    return w.numpy().copy(), opt.state[w], grads


@pytest.mark.parametrize("opt_cls, kw", [(optim.Adam, {}), (optim.Adam, {"weight_decay": 0.1}),
                                         (optim.AdamW, {"weight_decay": 0.1})], ids=["adam", "adam-l2", "adamw"])
def test_adam_on_two_threads_is_bit_identical_and_matches_the_reference(monkeypatch, opt_cls, kw):
    monkeypatch.setattr(fm, "elementwise_threads", lambda: 1)
    w1, s1, grads = _adam_run(opt_cls, 5, np.float64, **kw)
    monkeypatch.setattr(fm, "elementwise_threads", lambda: 2)
    monkeypatch.setattr(fm, "SPLIT_MIN_ELEMENTS", 64)
    calls = fm.split_calls
    w2, s2, _ = _adam_run(opt_cls, 5, np.float64, **kw)
    assert fm.split_calls == calls + 5                     # the two-thread path ran every step
    assert np.array_equal(w1, w2)
    assert np.array_equal(s1["exp_avg"], s2["exp_avg"]) and np.array_equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
    # and the readable update of the paper, step by step
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40, 30))
    m, v = np.zeros_like(ref), np.zeros_like(ref)
    wd = kw.get("weight_decay", 0.0)
    for t, g in enumerate(grads, start=1):
        if opt_cls is optim.AdamW:
            ref = ref * (1 - 1e-2 * wd)
        elif wd:
            g = g + wd * ref
        ref, m, v = optim.adam_reference_step(ref, g, m, v, t, 1e-2, (0.9, 0.999), 1e-8)
    np.testing.assert_allclose(w2, ref, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("threads", ["one_thread", "two_threads"])
def test_tanh_gelu_fast_path_matches_the_formula_in_ops(request, threads):
    request.getfixturevalue(threads)
    rng = np.random.default_rng(1)
    x64 = rng.uniform(-6, 6, (16, 40))
    gy64 = rng.standard_normal(x64.shape)
    calls = fm.split_calls
    x = mg.tensor(x64, requires_grad=True)
    y = F.gelu(x, approximate="tanh")
    (fast,) = mg.grad(y, [x], grad_outputs=mg.tensor(gy64))                   # arrays, in place
    assert fm.split_calls == calls + (3 if threads == "two_threads" else 0)   # forward, slope, slope * gy
    x2 = mg.tensor(x64, requires_grad=True)
    (recorded,) = mg.grad(F.gelu(x2, approximate="tanh"), [x2], grad_outputs=mg.tensor(gy64),
                          create_graph=True)                                  # the formula in ops
    assert recorded.requires_grad and not fast.requires_grad
    k, c = math.sqrt(2 / math.pi), 0.044715
    t = np.tanh(k * (x64 + c * x64 ** 3))
    np.testing.assert_allclose(y.numpy(), 0.5 * x64 * (1 + t), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(fast.numpy(), recorded.numpy(), rtol=1e-12, atol=1e-14)
    # double backward still goes through the recorded formula
    (gg,) = mg.grad(recorded.sum(), [x2])
    assert np.all(np.isfinite(gg.numpy()))


def test_tanh_gelu_two_threads_bit_identical_to_one(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 300)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    out = {}
    for n in (1, 2):
        monkeypatch.setattr(fm, "elementwise_threads", lambda n=n: n)
        monkeypatch.setattr(fm, "SPLIT_MIN_ELEMENTS", 64)
        op = fm.GELU("tanh")
        y = op.forward(x)
        out[n] = (y, fm._gelu_slope_fused(x, "tanh", op.saved) * gy)
    assert all(np.array_equal(a, b) for a, b in zip(out[1], out[2]))
    assert out[2][0].dtype == np.float32 and out[2][1].dtype == np.float32


def test_two_threads_follow_the_batch_threads_unless_asked(monkeypatch):
    from minigen.functional import parallel
    two = 2 if (__import__("os").cpu_count() or 1) >= 2 else 1
    monkeypatch.delenv("MINIGEN_ELEMENTWISE_THREADS", raising=False)
    monkeypatch.setattr(parallel, "batch_threads", lambda: 1)
    assert fm.elementwise_threads() == 1        # off where the convolutions do not split either
    monkeypatch.setattr(parallel, "batch_threads", lambda: 2)
    assert fm.elementwise_threads() == two      # on where they do (OpenBLAS's idle spin limited)
    monkeypatch.setenv("MINIGEN_ELEMENTWISE_THREADS", "1")
    assert fm.elementwise_threads() == 1        # the environment wins both ways
    monkeypatch.setattr(parallel, "batch_threads", lambda: 1)
    monkeypatch.setenv("MINIGEN_ELEMENTWISE_THREADS", "2")
    assert fm.elementwise_threads() == two
    monkeypatch.setenv("MINIGEN_ELEMENTWISE_THREADS", "two")      # not a number: as if unset
    assert fm.elementwise_threads() == 1


@pytest.mark.parametrize("threads", ["one_thread", "two_threads"])
def test_silu_fast_path_matches_the_formula_in_ops(request, threads):
    request.getfixturevalue(threads)
    rng = np.random.default_rng(3)
    x64 = rng.uniform(-30, 30, (8, 4, 5, 5))
    gy64 = rng.standard_normal(x64.shape)
    calls = fm.split_calls
    x = mg.tensor(x64, requires_grad=True)
    y = F.silu(x)
    (fast,) = mg.grad(y, [x], grad_outputs=mg.tensor(gy64))
    assert fm.split_calls == calls + (3 if threads == "two_threads" else 0)   # forward, slope, slope * gy
    x2 = mg.tensor(x64, requires_grad=True)
    (recorded,) = mg.grad(F.silu(x2), [x2], grad_outputs=mg.tensor(gy64), create_graph=True)
    s = 1 / (1 + np.exp(-x64))
    np.testing.assert_allclose(y.numpy(), x64 * s, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(fast.numpy(), recorded.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fast.numpy(), gy64 * s * (1 + x64 * (1 - s)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("threads", ["one_thread", "two_threads"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_silu_without_a_graph_is_the_direct_formula(request, monkeypatch, threads, dtype):
    # nothing recorded (no_grad, or no input that needs a gradient): y = x / (1 + e^-x), no sigma kept
    request.getfixturevalue(threads)
    x64 = np.random.default_rng(5).uniform(-30, 30, (8, 4, 5, 5))
    kept = []
    monkeypatch.setattr(fm, "_silu_fused", lambda *a: kept.append(1))      # the recording forward
    calls = fm.split_calls
    with mg.no_grad():
        y = F.silu(mg.tensor(x64.astype(dtype), requires_grad=True))
    y2 = F.silu(mg.tensor(x64.astype(dtype)))
    assert kept == [] and fm.split_calls == calls + (2 if threads == "two_threads" else 0)
    assert not y.requires_grad and y.dtype == dtype and np.array_equal(y.numpy(), y2.numpy())
    xr = x64.astype(dtype).astype(np.float64)                            # the inputs as given
    np.testing.assert_allclose(y.numpy(), xr / (1 + np.exp(-xr)),
                               rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-30)


# ----------------------------------------------------------------------------
# linear's plain backward on arrays (minigen/functional/linalg.py)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape, bias", [((7, 4), True), ((3, 5, 4), True), ((4,), False)])
def test_linear_plain_backward_on_arrays_equals_the_recorded_ops(monkeypatch, x_shape, bias):
    from minigen.functional import linalg

    rng = np.random.default_rng(4)
    x64, w64, b64 = rng.standard_normal(x_shape), rng.standard_normal((6, 4)), rng.standard_normal(6)
    gy64 = rng.standard_normal(x_shape[:-1] + (6,))
    matmuls = []
    original = linalg.MatMul.forward
    monkeypatch.setattr(linalg.MatMul, "forward", lambda self, a, b: matmuls.append(1) or original(self, a, b))

    def grads(create_graph):
        x, w = mg.tensor(x64, requires_grad=True), mg.tensor(w64, requires_grad=True)
        inputs = [x, w] + ([mg.tensor(b64, requires_grad=True)] if bias else [])
        y = F.linear(*inputs)
        return mg.grad(y, inputs, grad_outputs=mg.tensor(gy64), create_graph=create_graph), inputs

    fast, _ = grads(False)
    assert matmuls == []                              # the array path: no matmul op was recorded or run
    recorded, inputs = grads(True)
    assert matmuls and recorded[0].requires_grad      # the ops path, differentiable again
    for a, b in zip(fast[:2], recorded[:2]):         # the same BLAS products
        assert not a.requires_grad and np.array_equal(a.numpy(), b.numpy())
    if bias:                                          # a row of ones times gy, against the recorded sum
        assert not fast[2].requires_grad
        np.testing.assert_allclose(fast[2].numpy(), recorded[2].numpy(), rtol=1e-13)
        np.testing.assert_allclose(fast[2].numpy(), gy64.reshape(-1, 6).sum(0), rtol=1e-13)
    np.testing.assert_allclose(fast[0].numpy(), (gy64 @ w64).reshape(x_shape), rtol=1e-13)
    np.testing.assert_allclose(fast[1].numpy(), gy64.reshape(-1, 6).T @ x64.reshape(-1, 4), rtol=1e-13)
    # double backward through the recorded gradient of x: d/dW <gx, 1> = sum_rows gy^T ...
    (ggw,) = mg.grad(recorded[0].sum(), [inputs[1]])
    np.testing.assert_allclose(ggw.numpy(), np.outer(gy64.reshape(-1, 6).sum(0), np.ones(4)), rtol=1e-12)


# ----------------------------------------------------------------------------
# the norms' plain backward on arrays (minigen/functional/norm.py: Normalize._backward_arrays)
# ----------------------------------------------------------------------------

NORMS = {
    "group": (lambda x, w, b: F.group_norm(x, 2, w, b), (3, 4, 5, 6), (4,)),
    "batch": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (5, 3, 4, 2), (3,)),
    "batch2d": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (6, 3), (3,)),
    "layer": (lambda x, w, b: F.layer_norm(x, (4, 5), w, b), (2, 3, 4, 5), (4, 5)),
}


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("params", ["both", "weight", "bias", "none"])
def test_norm_plain_backward_on_arrays_equals_the_recorded_formula(norm, params):
    fn, x_shape, p_shape = NORMS[norm]
    rng = np.random.default_rng(5)
    x64 = rng.standard_normal(x_shape) * 3 + 1
    gy64 = rng.standard_normal(x_shape)

    def grads(create_graph):
        x = mg.tensor(x64, requires_grad=True)
        w = mg.tensor(rng.standard_normal(p_shape) + 1, requires_grad=True) if params in ("both", "weight") else None
        b = mg.tensor(rng.standard_normal(p_shape), requires_grad=True) if params in ("both", "bias") else None
        inputs = [t for t in (x, w, b) if t is not None]
        y = fn(x, w, b)
        return mg.grad(y, inputs, grad_outputs=mg.tensor(gy64), create_graph=create_graph)

    rng = np.random.default_rng(6)
    fast = grads(False)
    rng = np.random.default_rng(6)
    recorded = grads(True)
    assert recorded[0].requires_grad and not fast[0].requires_grad
    for a, b in zip(fast, recorded):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-11, atol=1e-12)


def test_norm_plain_backward_is_the_path_taken(monkeypatch):
    from minigen.functional import norm
    taken = []
    original = norm.Normalize._backward_arrays
    monkeypatch.setattr(norm.Normalize, "_backward_arrays", lambda self, gy: taken.append(1) or original(self, gy))
    x = mg.tensor(np.random.default_rng(0).standard_normal((2, 4, 3)), requires_grad=True)
    F.group_norm(x, 2).sum().backward()
    assert taken == [1] and x.grad is not None


# ----------------------------------------------------------------------------
# nearest upsampling's adjoint as slice adds (minigen/functional/conv.py: _block_sum)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("vh, vw", [(1, 1), (2, 2), (1, 3), (3, 1), (2, 3), (4, 2)])
def test_block_sum_equals_the_reshape_sum(vh, vw):
    from minigen.functional import conv
    x = np.random.default_rng(7).standard_normal((2, 3, 4 * vh, 5 * vw))
    fast, ref = conv._block_sum(x, vh, vw), conv._block_sum_reference(x, vh, vw)
    assert fast.shape == ref.shape == (2, 3, 4, 5) and fast is not x
    np.testing.assert_allclose(fast, ref, rtol=1e-13, atol=1e-13)
    y = x.astype(np.float32)
    assert conv._block_sum(y, vh, vw).dtype == np.float32


@pytest.mark.parametrize("vh, vw", [(1, 1), (2, 2), (1, 3), (3, 1), (2, 3)])
@pytest.mark.parametrize("split", [False, True])
def test_upsample_equals_the_broadcast_copy(vh, vw, split, monkeypatch):
    # nearest upsampling as np.repeat plus row copies, whole or split over two threads
    import os
    from concurrent.futures import ThreadPoolExecutor
    from minigen.functional import conv, parallel
    pool = ThreadPoolExecutor(2) if split else None
    monkeypatch.setattr(parallel, "_state", (os.getpid(), 2 if split else 1, pool, None))
    monkeypatch.setattr(parallel, "MIN_SPLIT_SIZE", 0)
    calls = parallel.split_calls
    x = np.random.default_rng(8).standard_normal((3, 2, 4, 5)).astype(np.float32)
    fast, ref = conv._upsample(x, vh, vw), conv._upsample_reference(x, vh, vw)
    assert parallel.split_calls == calls + split
    assert fast.shape == ref.shape == (3, 2, 4 * vh, 5 * vw) and fast.dtype == np.float32
    np.testing.assert_array_equal(fast, ref)
    if pool is not None:
        pool.shutdown()



@pytest.mark.parametrize("transpose", [False, True])
def test_conv_bias_gradient_by_products_equals_the_sum(transpose):
    # the plain backward sums gy over (N, OH, OW) as two matrix-vector products
    rng = np.random.default_rng(5)
    x = mg.tensor(rng.standard_normal((3, 4, 6, 5)), requires_grad=True)
    w = mg.tensor(rng.standard_normal((4, 4, 3, 3) if transpose else (2, 4, 3, 3)), requires_grad=True)
    b = mg.tensor(rng.standard_normal(4 if transpose else 2), requires_grad=True)
    op = F.conv_transpose2d if transpose else F.conv2d
    y = op(x, w, b, padding=1)
    gy = rng.standard_normal(y.shape)
    fast = mg.grad(y, [b], grad_outputs=mg.tensor(gy), retain_graph=True)[0]
    recorded = mg.grad(y, [b], grad_outputs=mg.tensor(gy), create_graph=True)[0]
    assert not fast.requires_grad
    np.testing.assert_allclose(fast.numpy(), gy.sum((0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(recorded.numpy(), gy.sum((0, 2, 3)), rtol=1e-13)


# ----------------------------------------------------------------------------
# the norms' pooled means as BLAS products (minigen/functional/norm.py: _pooled_mean)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape, axes", [
    ((4, 3, 20), (2,)), ((4, 3, 20), (0, 2)),          # layer / group norm; batch norm, rows of 20
    ((5, 7, 1), (0, 2)), ((3, 2, 4, 5), (2, 3)),       # batch norm 1d (rows of 1); group norm 4-d
    ((3, 2, 4, 5), (0, 2, 3))])
@pytest.mark.parametrize("with_b", [False, True])
def test_pooled_mean_equals_numpy_mean(shape, axes, with_b):
    from minigen.functional.norm import _pooled_mean
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    ref = (a * b if with_b else a).mean(axis=axes, keepdims=True)
    got = _pooled_mean(a, axes, b if with_b else None)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    recorded = _pooled_mean(mg.tensor(a), axes, mg.tensor(b) if with_b else None)   # the ops path
    np.testing.assert_allclose(recorded.numpy(), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["group", "batch", "layer", "group-no-affine", "group-weight-only", "batch-bias-only"])
def test_norm_forward_without_a_graph_keeps_nothing_and_gives_the_same_numbers(kind):
    # under no_grad the norms with a small rstd * weight skip xhat: y = (x - mean) (rstd w) + b
    from minigen.functional import norm
    rng = np.random.default_rng(11)
    x = mg.tensor(rng.standard_normal((4, 6, 5, 3)) * 3 + 1)
    w, b = (mg.tensor(rng.standard_normal(6)) for _ in range(2))
    if kind == "layer":
        w, b = (mg.tensor(rng.standard_normal(3)) for _ in range(2))
    made = []
    original = norm.Normalize.forward
    norm_fn = {"group": lambda: F.group_norm(x, 3, w, b), "batch": lambda: F.batch_norm(x, None, None, w, b, True),
               "layer": lambda: F.layer_norm(x, 3, w, b), "group-no-affine": lambda: F.group_norm(x, 3),
               "group-weight-only": lambda: F.group_norm(x, 3, w),
               "batch-bias-only": lambda: F.batch_norm(x, None, None, None, b, True)}[kind]

    def spy(self, *arrays):
        out = original(self, *arrays)
        made.append(self)
        return out
    norm.Normalize.forward = spy
    try:
        with mg.no_grad():
            fast = norm_fn().numpy()
        x.requires_grad = True                     # now a graph is recorded: xhat is kept
        kept = norm_fn().numpy()
    finally:
        norm.Normalize.forward = original
    assert made[0].recording is False and made[1].recording is True
    assert made[1].xhat is not None
    assert (made[0].xhat is None) == (kind != "layer")   # layer norm's rstd * weight is full size
    np.testing.assert_allclose(fast, kept, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# large elementwise binary ops and concatenations in two halves on two threads
# (minigen/functional/math.py: _split_binary, split_halves; shape.py: _concat)
# ----------------------------------------------------------------------------

@pytest.fixture
def split_everything(monkeypatch):
    from minigen.functional import math as fmath
    monkeypatch.setattr(fmath, "elementwise_threads", lambda: 2)
    monkeypatch.setattr(fmath, "BINARY_SPLIT_MIN", 0)
    calls = []
    original = fmath.split_halves
    monkeypatch.setattr(fmath, "split_halves", lambda run, n: calls.append(n) or original(run, n))
    return calls


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("b_shape", [(5, 3, 4), (1, 3, 4), (3, 1), (4,), ()])
def test_split_binary_ops_equal_numpy(split_everything, op, b_shape):
    rng = np.random.default_rng(16)
    a, b = rng.standard_normal((5, 3, 4)).astype(np.float32), (rng.standard_normal(b_shape) + 3).astype(np.float32)
    ref = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[op](a, b)
    ta, tb = mg.tensor(a, requires_grad=True), mg.tensor(b, requires_grad=True)
    y = {"add": lambda: ta + tb, "sub": lambda: ta - tb, "mul": lambda: ta * tb, "div": lambda: ta / tb}[op]()
    assert split_everything == [5]                       # the result's first axis, cut in two
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), ref)
    y.sum().backward()                                   # gradients still reach both operands, in their shapes
    assert ta.grad.shape == a.shape and tb.grad.shape == b.shape


def test_split_binary_leaves_small_and_integer_results_alone(split_everything, monkeypatch):
    from minigen.functional import math as fmath
    monkeypatch.setattr(fmath, "BINARY_SPLIT_MIN", 13)
    a = mg.tensor(np.ones((4, 3), np.float32))
    a + a
    assert split_everything == []                        # 12 entries: below the threshold
    monkeypatch.setattr(fmath, "BINARY_SPLIT_MIN", 0)
    i = mg.tensor(np.arange(12).reshape(4, 3))
    assert np.array_equal((i + i).numpy(), 2 * np.arange(12).reshape(4, 3)) and split_everything == []


@pytest.mark.parametrize("dim", [1, 2, -1, 0])
def test_split_concat_equals_numpy(split_everything, dim):
    rng = np.random.default_rng(17)
    xs = [rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 5, 3))] if dim == 1 else \
         [rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 1))] if dim in (2, -1) else \
         [rng.standard_normal((4, 2, 3)), rng.standard_normal((1, 2, 3))]
    y = F.concat([mg.tensor(x) for x in xs], dim=dim)
    assert split_everything == ([] if dim == 0 else [4])  # joined along the first axis: nothing to split
    np.testing.assert_array_equal(y.numpy(), np.concatenate(xs, axis=dim))


# ----------------------------------------------------------------------------
# LeakyReLU's slope as max(sign(x), a), its chains on two threads (minigen/functional/math.py)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("threads", ["one_thread", "two_threads"])
@pytest.mark.parametrize("slope", [0.2, 1.0, 0.01])
def test_leaky_relu_fast_path_equals_the_mask_formula(request, threads, slope):
    request.getfixturevalue(threads)
    rng = np.random.default_rng(12)
    x64 = rng.standard_normal((6, 5, 7))
    x64[0, 0, :3] = [0.0, -0.0, 1e-300]                  # the kink and a subnormal-free tiny input
    gy64 = rng.standard_normal(x64.shape)
    calls = fm.split_calls
    x = mg.tensor(x64, requires_grad=True)
    y = F.leaky_relu(x, slope)
    (fast,) = mg.grad(y, [x], grad_outputs=mg.tensor(gy64))                    # arrays, chained
    assert fm.split_calls == calls + (2 if threads == "two_threads" else 0)    # forward and backward
    reference_slope = np.where(x64 > 0, 1.0, slope)                            # 1 where x > 0, a elsewhere
    assert np.array_equal(y.numpy(), np.where(x64 > 0, x64, slope * x64))
    assert np.array_equal(fast.numpy(), gy64 * reference_slope)
    x2 = mg.tensor(x64, requires_grad=True)
    (recorded,) = mg.grad(F.leaky_relu(x2, slope), [x2], grad_outputs=mg.tensor(gy64), create_graph=True)
    assert np.array_equal(recorded.numpy(), fast.numpy())                     # the product in ops


def test_leaky_relu_of_integers_and_other_slopes_keeps_the_plain_path():
    x = mg.tensor(np.array([-3, 0, 2]))
    assert np.allclose(F.leaky_relu(x, 0.2).numpy(), [-0.6, 0.0, 2.0])
    xf = mg.tensor(np.array([-3.0, 0.0, 2.0]), requires_grad=True)
    for slope, expect_y, expect_g in [(2.0, [-6.0, 0.0, 2.0], [2.0, 2.0, 1.0]), (-0.5, [1.5, 0.0, 2.0], [-0.5, -0.5, 1.0])]:
        (g,) = mg.grad(F.leaky_relu(xf, slope).sum(), [xf])
        assert np.array_equal(F.leaky_relu(xf, slope).numpy(), expect_y) and np.array_equal(g.numpy(), expect_g)


# ----------------------------------------------------------------------------
# batch norm: statistics over the batch, the passes after them in halves (minigen/functional/norm.py)
# ----------------------------------------------------------------------------

def _batch_norm_and_grads(shape):
    gen = np.random.default_rng(13)
    x = mg.tensor(gen.standard_normal(shape) * 2 + 1, requires_grad=True)
    w = mg.tensor(gen.standard_normal(shape[1]), requires_grad=True)
    b = mg.tensor(gen.standard_normal(shape[1]), requires_grad=True)
    y = F.batch_norm(x, None, None, w, b, training=True)
    grads = mg.grad(y, [x, w, b], grad_outputs=mg.tensor(gen.standard_normal(shape)))
    return [y.numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize("shape", [(6, 4, 5), (7, 3, 2, 2), (5, 6)])
def test_batch_norm_in_halves_equals_one_thread(shape, monkeypatch):
    from minigen.functional import norm
    monkeypatch.setattr(fm, "elementwise_threads", lambda: 1)
    serial = _batch_norm_and_grads(shape)
    monkeypatch.setattr(norm, "elementwise_threads", lambda: 2)
    monkeypatch.setattr(norm, "BATCH_NORM_SPLIT_MIN", 16)
    halves = []
    original = fm.split_halves
    monkeypatch.setattr(norm, "split_halves", lambda run, n: halves.append(n) or original(run, n))
    split = _batch_norm_and_grads(shape)
    assert len(halves) == 2                            # the forward's passes and the backward's
    for a, b in zip(split, serial):
        assert np.array_equal(a, b)                    # the same entries, only cut in two


def test_batch_and_group_norm_backwards_take_their_own_paths(monkeypatch):
    from minigen.functional import norm
    taken = []
    for name in ("_batch_normalize_backward", "_group_normalize_backward", "_normalize_backward"):
        original = getattr(norm, name)
        monkeypatch.setattr(norm, name, lambda *a, _f=original, _n=name: taken.append(_n) or _f(*a))
    x = mg.tensor(np.random.default_rng(0).standard_normal((4, 6, 3)), requires_grad=True)
    w = mg.tensor(np.ones(6), requires_grad=True)
    F.batch_norm(x, None, None, w, None, training=True).sum().backward()
    assert taken == ["_batch_normalize_backward"]
    F.group_norm(x, 2, w).sum().backward()
    assert taken[1:] == ["_group_normalize_backward"]
    F.layer_norm(x, 3, mg.tensor(np.ones(3), requires_grad=True)).sum().backward()
    assert taken[2:] == ["_normalize_backward"]
    w63, w61, w231 = np.ones((6, 3)), np.ones((6, 1)), np.ones((2, 3, 1))
    assert norm._layout((4, 6, 3), (0, 2), w63, w61) is None       # varies along a pooled axis: general path
    assert norm._layout((4, 6, 3), (0, 2), w61, None) == "batch"
    assert norm._layout((4, 2, 3, 5), (2, 3), w231, None) == "group"
    assert norm._layout((4, 2, 3, 5), (2, 3), np.ones((2, 3, 5))) is None


def test_batch_pooled_normalize_with_a_weight_along_a_pooled_axis_takes_the_general_path():
    # the batch-norm layout needs (C, 1) parameters; a weight that varies along L must not take it
    from minigen.functional import norm
    rng = np.random.default_rng(14)
    x64, w64, gy64 = rng.standard_normal((4, 6, 3)), rng.standard_normal((6, 3)), rng.standard_normal((4, 6, 3))
    mu, var = x64.mean((0, 2), keepdims=True), x64.var((0, 2), keepdims=True)
    grads = []
    for create_graph in (False, True):
        x, w = mg.tensor(x64, requires_grad=True), mg.tensor(w64, requires_grad=True)
        y = norm.Normalize((0, 2), 1e-5, True, False)(x, w)
        np.testing.assert_allclose(y.numpy(), (x64 - mu) / np.sqrt(var + 1e-5) * w64, rtol=1e-12)
        grads.append(mg.grad(y, [x, w], grad_outputs=mg.tensor(gy64), create_graph=create_graph))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-11, atol=1e-12)

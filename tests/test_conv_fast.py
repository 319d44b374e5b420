"""The fast CPU convolution kernels against the reference im2col / col2im kernels.

minigen/functional/conv.py keeps the plain im2col kernels as the reference and
runs batch-chunked kernels beside them on NumPy (``_conv_forward_chunked``,
``_conv_input_grad_gather``, ``_conv_weight_grad_chunked``), per-image products for 1x1
layers, for few input channels (``_conv_forward_small``, ``_conv_weight_grad_small``,
``_conv_input_grad_small``) and for few output channels (``_conv_forward_few``,
``_conv_weight_grad_few``).  Here each fast
kernel is called directly and compared with its reference in float64 over
strides, paddings, dilations, odd and non-square sizes, batch 1 and chunk
boundaries (a batch that the chunk size does not divide); then the public
conv2d / conv_transpose2d are run with the fast kernels on and off, values,
gradients and second derivatives, and the call counters show which path ran.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigen as mg
import minigen.functional as F
import minigen.functional.conv as cv
from minigen.testing import gradgradcheck

from helpers import tensor


@pytest.fixture(autouse=True)
def _restore_switches():
    """Every test starts with the fast kernels on and the default chunk size and channel threshold."""
    fast, chunk, small = cv.FAST_KERNELS, cv.CHUNK_BYTES, cv.SMALL_CHANNELS
    cv.FAST_KERNELS = True
    yield
    cv.FAST_KERNELS, cv.CHUNK_BYTES, cv.SMALL_CHANNELS = fast, chunk, small


def geometry(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return cv._Geometry(tuple(stride), tuple(padding), tuple(dilation), groups)


def assert_close(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(b).max()))


pairs = st.tuples(st.integers(1, 3), st.integers(1, 3))


@st.composite
def convs(draw, stride_one=False):
    """(x shape, w shape, geometry, out_hw) of a valid groups-1 convolution, float64."""
    n, c, f = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(pairs)
    stride = (1, 1) if stride_one else draw(pairs)
    dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    padding = draw(st.tuples(st.integers(0, 3), st.integers(0, 3)))
    h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 9))
    w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 9))
    geo = geometry(stride, padding, dilation)
    out = tuple(cv._out_size(s, k, stride[a], padding[a], dilation[a]) for a, (s, k) in enumerate(((h, kh), (w, kw))))
    return (n, c, h, w), (f, c, kh, kw), geo, out


# chunk sizes in bytes: 1 = one image per chunk, then a few images, then the whole batch
chunk_bytes = st.sampled_from([1, 700, 3000, 20000, 1 << 20])


def rand(rng, shape):
    return rng.standard_normal(shape)


# ----------------------------------------------------------------------------
# the kernels, called directly
# ----------------------------------------------------------------------------

def test_chunks_cover_a_batch_the_chunk_size_does_not_divide():
    x = np.arange(5 * 2 * 3 * 3, dtype=np.float64).reshape(5, 2, 3, 3)
    q, k = 9, 2 * 2 * 2                        # 3x3 outputs of a 2x2 kernel over 2 channels
    cv.CHUNK_BYTES = 2 * q * k * 8             # two images per chunk: chunks of 2, 2, 1
    seen = [(n0, n, cols.copy()) for n0, n, cols in cv._chunks(x, (1, 1, 1, 1), 2, 2, (1, 1), (1, 1), (3, 3))]
    assert [(n0, n) for n0, n, _ in seen] == [(0, 2), (2, 2), (4, 1)]
    whole = cv._im2col(x, 2, 2, geometry(padding=(1, 1)), (3, 3)).reshape(5, q, k)
    for n0, n, cols in seen:
        np.testing.assert_array_equal(cols, whole[n0:n0 + n])


# each fast kernel: (function, whether it needs stride 1)
FORWARD_KERNELS = {"chunked": (cv._conv_forward_chunked, False), "small-channels": (cv._conv_forward_small, False),
                   "few-outputs": (cv._conv_forward_few, True)}
INPUT_GRAD_KERNELS = {"gather": (cv._conv_input_grad_gather, True), "chunked": (cv._conv_input_grad_chunked, False),
                      "small-channels": (cv._conv_input_grad_small, True)}
WEIGHT_GRAD_KERNELS = {"chunked": (cv._conv_weight_grad_chunked, False),
                       "small-channels": (cv._conv_weight_grad_small, False),
                       "few-outputs": (cv._conv_weight_grad_few, True)}


@pytest.mark.parametrize("kernel", sorted(FORWARD_KERNELS))
@settings(max_examples=60)
@given(st.data(), chunk_bytes, st.integers(0, 2**31 - 1), st.booleans())
def test_forward_kernels_match_the_reference(kernel, data, chunk, seed, bias):
    fn, stride_one = FORWARD_KERNELS[kernel]
    xs, ws, geo, out = data.draw(convs(stride_one=stride_one))
    rng = np.random.default_rng(seed)
    x, w = rand(rng, xs), rand(rng, ws)
    b = rand(rng, ws[0]) if bias else None
    cv.CHUNK_BYTES = chunk
    assert_close(fn(x, w, b, geo, out), cv._conv_forward(x, w, b, geo, out)[0])


@pytest.mark.parametrize("kernel", sorted(INPUT_GRAD_KERNELS))
@settings(max_examples=60)
@given(st.data(), chunk_bytes, st.integers(0, 2**31 - 1))
def test_input_grad_kernels_match_col2im(kernel, data, chunk, seed):
    fn, stride_one = INPUT_GRAD_KERNELS[kernel]
    xs, ws, geo, out = data.draw(convs(stride_one=stride_one))
    rng = np.random.default_rng(seed)
    gy, w = rand(rng, (xs[0], ws[0]) + out), rand(rng, ws)
    cv.CHUNK_BYTES = chunk
    assert_close(fn(gy, w, geo, xs), cv._conv_input_grad(gy, w, geo, xs))


@pytest.mark.parametrize("out_pad", [1, 2])
def test_input_grad_kernels_with_output_padding(out_pad):
    """conv_transpose2d, stride 1, dilation 3: output_padding makes the image taller than gy's reach."""
    rng = np.random.default_rng(out_pad)
    geo = geometry(padding=(1, 2), dilation=(3, 3))
    gy, w = rand(rng, (3, 2, 5, 4)), rand(rng, (2, 3, 2, 3))
    x_shape = (3, 3, 5 - 2 + 3 + out_pad, 4 - 4 + 6 + out_pad)
    for fn, _ in INPUT_GRAD_KERNELS.values():
        assert_close(fn(gy, w, geo, x_shape), cv._conv_input_grad(gy, w, geo, x_shape))


@pytest.mark.parametrize("kernel", sorted(WEIGHT_GRAD_KERNELS))
@settings(max_examples=60)
@given(st.data(), chunk_bytes, st.integers(0, 2**31 - 1), st.booleans())
def test_weight_grad_kernels_match_the_reference(kernel, data, chunk, seed, fewer_rows):
    fn, stride_one = WEIGHT_GRAD_KERNELS[kernel]
    xs, ws, geo, out = data.draw(convs(stride_one=stride_one))
    if fewer_rows and out[0] > 1:          # gy may cover fewer output rows than x allows
        out = (out[0] - 1, out[1])
    rng = np.random.default_rng(seed)
    x, gy = rand(rng, xs), rand(rng, (xs[0], ws[0]) + out)
    cv.CHUNK_BYTES = chunk
    assert_close(fn(x, gy, geo, ws), cv._conv_weight_grad(x, gy, geo, ws))


def test_small_channel_taps_are_the_strided_slices():
    x = np.arange(2 * 1 * 4 * 5, dtype=np.float64).reshape(2, 1, 4, 5)
    geo = geometry(stride=(2, 1), padding=(1, 0))
    [(n0, n, taps)] = list(cv._taps(x, (1, 1, 0, 0), 2, 3, geo.stride, geo.dilation, (2, 3), 1 << 20))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    assert (n0, n, taps.shape) == (0, 2, (2, 6, 6))
    np.testing.assert_array_equal(taps[1, 1 * 3 + 2].reshape(2, 3), xp[1, 0, 1:4:2, 2:5])   # tap (1, 2)


@pytest.mark.parametrize("xs, f, dilation", [((1, 3, 4, 7), 5, 1), ((4, 2, 3, 3), 1, 2)])
def test_conv1x1_kernels_match_the_reference(xs, f, dilation):
    rng = np.random.default_rng(5)
    geo = geometry(dilation=(dilation, dilation))
    x, w, b = rand(rng, xs), rand(rng, (f, xs[1], 1, 1)), rand(rng, f)
    gy = rand(rng, (xs[0], f) + xs[2:])
    assert cv._is_1x1(w.shape, geo, xs[2:], xs[2:])
    assert_close(cv._conv1x1_forward(x, w, b), cv._conv_forward(x, w, b, geo, xs[2:])[0])
    assert_close(cv._conv1x1_input_grad(gy, w), cv._conv_input_grad(gy, w, geo, xs))
    assert_close(cv._conv1x1_weight_grad(x, gy), cv._conv_weight_grad(x, gy, geo, w.shape))


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    x, w = rand(rng, (3, 4, 6, 5)).astype(np.float32), rand(rng, (5, 4, 3, 3)).astype(np.float32)
    geo = geometry(padding=(1, 1))
    y = cv._conv_forward_chunked(x, w, None, geo, (6, 5))
    gx = cv._conv_input_grad_gather(y, w, geo, x.shape)
    gw = cv._conv_weight_grad_chunked(x, y, geo, w.shape)
    assert y.dtype == gx.dtype == gw.dtype == np.float32
    np.testing.assert_allclose(y, cv._conv_forward(x, w, None, geo, (6, 5))[0], rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------
# the public functions: fast kernels on vs off
# ----------------------------------------------------------------------------

def _values_and_grads(fn, arrays, fast):
    """fn's value, its gradients, and the gradients of the squared gradient norm (double backward)."""
    cv.FAST_KERNELS = fast
    leaves = [tensor(a, requires_grad=True) for a in arrays]
    y = fn(*leaves)
    gy = tensor(np.random.default_rng(7).standard_normal(y.shape))
    grads = mg.grad(y, leaves, grad_outputs=gy, create_graph=True)
    penalty = sum((g * g).sum() for g in grads)
    second = mg.grad(penalty, leaves, allow_unused=True)   # the bias gradient does not depend on them
    return [y.numpy()] + [g.numpy() for g in grads] + [g.numpy() for g in second if g is not None]


def _calls():
    return dict(cv.fast_calls)


CASES = [  # (x shape, w shape, keyword arguments)
    ((5, 3, 7, 6), (4, 3, 3, 3), dict(padding=1)),                       # stride 1: all three fast
    ((1, 2, 9, 5), (3, 2, 3, 2), dict(padding=(2, 0), dilation=(2, 1))),  # batch 1, non-square, dilated
    ((4, 3, 8, 7), (2, 3, 3, 3), dict(stride=2, padding=1)),            # stride 2: input grad by col2im
    ((3, 2, 5, 5), (3, 2, 1, 1), dict(padding=1)),                       # padding beyond the kernel reach
    ((3, 4, 5, 3), (6, 4, 1, 1), dict()),                                # 1x1: a plain product per image
    ((3, 4, 5, 3), (6, 4, 1, 1), dict(stride=2)),                        # 1x1 strided: the im2col kernels
    ((3, 6, 7, 6), (2, 6, 3, 3), dict(padding=1)),                       # few outputs (a last layer)
    ((2, 5, 6, 7), (1, 5, 3, 2), dict(padding=(2, 0), dilation=(2, 1))),
]


@pytest.mark.parametrize("small", [False, True], ids=["chunked", "small-channels"])
@pytest.mark.parametrize("xs, ws, kw", CASES)
def test_conv2d_fast_equals_reference_with_double_backward(xs, ws, kw, small):
    cv.CHUNK_BYTES = 500          # several chunks, the last one short
    cv.SMALL_CHANNELS = 4 if small else 0
    rng = np.random.default_rng(1)
    arrays = [rand(rng, xs), rand(rng, ws), rand(rng, ws[0])]
    fn = lambda x, w, b: F.conv2d(x, w, b, **kw)  # noqa: E731
    ref = _values_and_grads(fn, arrays, fast=False)
    before = _calls()
    fast = _values_and_grads(fn, arrays, fast=True)
    after = _calls()
    for a, b in zip(fast, ref):
        assert_close(a, b)
    if ws[2:] == (1, 1) and not kw:
        assert after["conv1x1"] >= before["conv1x1"] + 3 and after["forward"] == before["forward"]
        return
    if small:                     # forward and weight gradient (and their second derivatives)
        ran = ("small_channels", "few_outputs")
        assert sum(after[k] for k in ran) >= sum(before[k] for k in ran) + 2
        assert after["forward"] == before["forward"] and after["weight_grad"] == before["weight_grad"]
        if xs[1] > 4:             # C > SMALL_CHANNELS >= F
            assert after["few_outputs"] >= before["few_outputs"] + 2
        return
    assert all(after[k] > before[k] for k in ("forward", "input_grad", "weight_grad"))


@pytest.mark.parametrize("k, kw", [(3, dict(padding=1)), (3, dict(padding=1, dilation=2, output_padding=1)),
                                   (3, dict(stride=2, padding=1, output_padding=1)),
                                   (1, dict()), (1, dict(dilation=2, output_padding=1))])
@pytest.mark.parametrize("small", [False, True], ids=["chunked", "small-channels"])
def test_conv_transpose2d_fast_equals_reference_with_double_backward(k, kw, small):
    cv.CHUNK_BYTES = 500
    cv.SMALL_CHANNELS = 4 if small else 0
    rng = np.random.default_rng(2)
    arrays = [rand(rng, (3, 4, 5, 6)), rand(rng, (4, 2, k, k)), rand(rng, 2)]
    fn = lambda x, w, b: F.conv_transpose2d(x, w, b, **kw)  # noqa: E731
    ref = _values_and_grads(fn, arrays, fast=False)
    before = _calls()
    fast = _values_and_grads(fn, arrays, fast=True)
    for a, b in zip(fast, ref):
        assert_close(a, b)
    after = _calls()
    ran = ("forward", "conv1x1", "small_channels") if small else ("forward", "conv1x1")
    assert sum(after[k] for k in ran) > sum(before[k] for k in ran)


def test_groups_take_the_reference_kernels():
    rng = np.random.default_rng(3)
    arrays = [rand(rng, (2, 4, 5, 5)), rand(rng, (6, 2, 3, 3)), rand(rng, 6)]
    fn = lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=2)  # noqa: E731
    before = _calls()
    fast = _values_and_grads(fn, arrays, fast=True)
    assert _calls() == before
    for a, b in zip(fast, _values_and_grads(fn, arrays, fast=False)):
        assert_close(a, b)


@pytest.mark.parametrize("small", [False, True], ids=["chunked", "small-channels"])
def test_fast_kernels_pass_gradgradcheck(float64, small):
    cv.CHUNK_BYTES = 300
    cv.SMALL_CHANNELS = 4 if small else 0
    rng = np.random.default_rng(4)
    x, w, b = (tensor(rand(rng, s), requires_grad=True) for s in ((3, 2, 5, 4), (3, 2, 3, 3), (3,)))
    before = _calls()
    gradgradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b])
    after = _calls()
    ran = ("small_channels",) if small else ("forward", "input_grad", "weight_grad")
    assert all(after[k] > before[k] for k in ran)

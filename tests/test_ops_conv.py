"""Convolutions, pooling and interpolate: shapes, values, gradients, second derivatives, errors.

Values are checked against direct-loop NumPy references written here (one output
pixel at a time, nothing shared with minigen's im2col), shapes against PyTorch's
output-size formulas, gradients by float64 central differences.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import minigen as mg
import minigen.functional as F
from minigen.testing import GradcheckError, gradcheck, gradgradcheck

from strategies import no_ties, seeds
from helpers import tensor

RNG = np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Every test draws the same values whichever tests ran before it."""
    global RNG
    RNG = np.random.default_rng(1234)


def rand(*shape):
    return RNG.standard_normal(shape)


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ----------------------------------------------------------------------------
# direct-loop references
# ----------------------------------------------------------------------------

def ref_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n,f,oh,ow] = b[f] + sum W[f] * (the dilated window of group g(f) at (oh, ow))."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    N, C, H, W = x.shape
    F_, Cg, kh, kw = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((N, F_, OH, OW))
    Fg = F_ // groups
    for n in range(N):
        for f in range(F_):
            g = f // Fg
            for oh in range(OH):
                for ow in range(OW):
                    window = xpad[n, g * Cg:(g + 1) * Cg,
                                  oh * sh:oh * sh + dh * (kh - 1) + 1:dh,
                                  ow * sw:ow * sw + dw * (kw - 1) + 1:dw]
                    y[n, f, oh, ow] = np.sum(window * w[f]) + (0.0 if b is None else b[f])
    return y


def ref_conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Each input pixel scatters x[n,ci,ih,iw] * W[ci] onto the output, then the padding is cropped."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = pair(stride), pair(padding), pair(output_padding), pair(dilation)
    N, Cin, H, W = x.shape
    _, Cog, kh, kw = w.shape
    Ho = (H - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    Wo = (W - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    full = np.zeros((N, Cog * groups, Ho + 2 * ph, Wo + 2 * pw))
    Cing = Cin // groups
    for n in range(N):
        for ci in range(Cin):
            g = ci // Cing
            for ih in range(H):
                for iw in range(W):
                    full[n, g * Cog:(g + 1) * Cog,
                         ih * sh:ih * sh + dh * (kh - 1) + 1:dh,
                         iw * sw:iw * sw + dw * (kw - 1) + 1:dw] += x[n, ci, ih, iw] * w[ci]
    y = full[:, :, ph:ph + Ho, pw:pw + Wo]
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def ref_pool(x, k, s, p, reduce):
    (kh, kw), (sh, sw), (ph, pw) = pair(k), pair(s), pair(p)
    fill = 0.0 if reduce is np.mean else -np.inf
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    N, C, Hp, Wp = xpad.shape
    OH, OW = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    y = np.zeros((N, C, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            y[:, :, oh, ow] = reduce(xpad[:, :, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw], axis=(2, 3))
    return y


def ref_interpolate(x, out, mode, align_corners=False):
    N, C, H, W = x.shape
    OH, OW = out
    if mode == "nearest":
        return x[:, :, [oh * H // OH for oh in range(OH)]][:, :, :, [ow * W // OW for ow in range(OW)]]

    def coord(dst, n_in, n_out):
        if align_corners:
            return dst * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        return max((dst + 0.5) * n_in / n_out - 0.5, 0.0)

    y = np.zeros((N, C, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            sy, sx = coord(oh, H, OH), coord(ow, W, OW)
            y0, x0 = min(int(math.floor(sy)), H - 1), min(int(math.floor(sx)), W - 1)
            y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
            ay, ax = sy - y0, sx - x0
            y[:, :, oh, ow] = ((1 - ay) * (1 - ax) * x[:, :, y0, x0] + (1 - ay) * ax * x[:, :, y0, x1]
                               + ay * (1 - ax) * x[:, :, y1, x0] + ay * ax * x[:, :, y1, x1])
    return y


# ----------------------------------------------------------------------------
# shapes and values over random geometries
# ----------------------------------------------------------------------------

@st.composite
def conv_geometry(draw):
    groups = draw(st.integers(1, 3))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 1)))
    hw = tuple(max(1, d[a] * (k[a] - 1) + 1 - 2 * p[a]) + draw(st.integers(0, 4)) for a in range(2))
    return dict(N=draw(st.integers(1, 2)), Cg=draw(st.integers(1, 2)), Fg=draw(st.integers(1, 2)),
                groups=groups, k=k, stride=s, dilation=d, padding=p, hw=hw, bias=draw(st.booleans()),
                rng=np.random.default_rng(draw(seeds())))  # values reproducible from the example


@settings(max_examples=30)
@given(conv_geometry())
def test_conv2d_shape_and_values_match_the_direct_loop(g):
    G = g["groups"]
    x = g["rng"].standard_normal((g["N"], g["Cg"] * G, *g["hw"]))
    w = g["rng"].standard_normal((g["Fg"] * G, g["Cg"], *g["k"]))
    b = g["rng"].standard_normal(g["Fg"] * G) if g["bias"] else None
    y = F.conv2d(tensor(x), tensor(w), None if b is None else tensor(b), g["stride"], g["padding"], g["dilation"], G)
    expected_hw = tuple((g["hw"][a] + 2 * g["padding"][a] - g["dilation"][a] * (g["k"][a] - 1) - 1)
                        // g["stride"][a] + 1 for a in range(2))
    assert y.shape == (g["N"], g["Fg"] * G) + expected_hw
    np.testing.assert_allclose(y.numpy(), ref_conv2d(x, w, b, g["stride"], g["padding"], g["dilation"], G),
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=30)
@given(conv_geometry(), st.data())
def test_conv_transpose2d_shape_and_values_match_the_direct_loop(g, data):
    G = g["groups"]
    s, d, p = g["stride"], g["dilation"], g["padding"]
    op = tuple(data.draw(st.integers(0, max(s[a], d[a]) - 1)) for a in range(2))
    hw = tuple(1 + h % 4 for h in g["hw"])
    out_hw = tuple((hw[a] - 1) * s[a] - 2 * p[a] + d[a] * (g["k"][a] - 1) + op[a] + 1 for a in range(2))
    assume(min(out_hw) >= 1)
    x = g["rng"].standard_normal((g["N"], g["Cg"] * G, *hw))
    w = g["rng"].standard_normal((g["Cg"] * G, g["Fg"], *g["k"]))
    b = g["rng"].standard_normal(g["Fg"] * G) if g["bias"] else None
    y = F.conv_transpose2d(tensor(x), tensor(w), None if b is None else tensor(b), s, p, op, G, d)
    assert y.shape == (g["N"], g["Fg"] * G) + out_hw
    np.testing.assert_allclose(y.numpy(), ref_conv_transpose2d(x, w, b, s, p, op, G, d), rtol=1e-12, atol=1e-12)


@settings(max_examples=20)
@given(conv_geometry(), st.data())
def test_conv_transpose2d_is_the_adjoint_of_conv2d(g, data):
    # <conv_transpose2d(u, W), z> = <u, conv2d(z, W)> for every z of the transposed output's shape
    G = g["groups"]
    s, d, p = g["stride"], g["dilation"], g["padding"]
    op = tuple(data.draw(st.integers(0, max(s[a], d[a]) - 1)) for a in range(2))
    hw = tuple(1 + h % 4 for h in g["hw"])
    u = g["rng"].standard_normal((g["N"], g["Cg"] * G, *hw))
    w = g["rng"].standard_normal((g["Cg"] * G, g["Fg"], *g["k"]))
    out_hw = tuple((hw[a] - 1) * s[a] - 2 * p[a] + d[a] * (g["k"][a] - 1) + op[a] + 1 for a in range(2))
    assume(min(out_hw) >= 1)
    z = g["rng"].standard_normal((g["N"], g["Fg"] * G, *out_hw))
    lhs = float((F.conv_transpose2d(tensor(u), tensor(w), None, s, p, op, G, d).numpy() * z).sum())
    conv_z = F.conv2d(tensor(z), tensor(w), None, s, p, d, G).numpy()
    # with output_padding >= stride, conv2d(z) has extra rows that no u entry feeds
    rhs = float((u * conv_z[:, :, :hw[0], :hw[1]]).sum())
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


def test_float32_stays_float32():
    x = mg.tensor(rand(2, 3, 6, 6).astype(np.float32), requires_grad=True)
    w = mg.tensor(rand(4, 3, 3, 3).astype(np.float32), requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    gx, gw = mg.grad(y.sum(), [x, w])
    assert y.dtype == gx.dtype == gw.dtype == np.float32
    assert F.conv_transpose2d(y, w).dtype == np.float32  # back to (2, 3, 6, 6)
    for out in (F.avg_pool2d(x, 2), F.max_pool2d(x, 2), F.interpolate(x, scale_factor=2),
                F.interpolate(x, size=5, mode="bilinear")):
        assert out.dtype == np.float32


# ----------------------------------------------------------------------------
# gradients (float64 central differences)
# ----------------------------------------------------------------------------

CONV_CASES = [  # (x shape, weight shape, kwargs)
    ((2, 2, 5, 5), (3, 2, 3, 3), dict(padding=1)),
    ((1, 2, 7, 6), (2, 2, 3, 2), dict(stride=2, padding=(1, 0))),
    ((1, 2, 7, 7), (2, 2, 3, 3), dict(dilation=2, padding=1)),
    ((2, 4, 5, 5), (4, 2, 3, 3), dict(groups=2, stride=(2, 1), padding=1)),
    ((1, 3, 6, 6), (3, 1, 2, 2), dict(groups=3, stride=2)),
]


@pytest.mark.parametrize("xs, ws, kw", CONV_CASES)
def test_conv2d_gradients(xs, ws, kw, device):
    x, w, b = rand(*xs), rand(*ws), rand(ws[0])
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b], device=device)


TRANSPOSE_CASES = [  # (x shape, weight shape (in, out/groups, kh, kw), kwargs)
    ((2, 2, 3, 3), (2, 3, 3, 3), dict(padding=1)),
    ((1, 2, 3, 4), (2, 2, 4, 4), dict(stride=2, padding=1)),  # DCGAN's upsampling layer
    ((1, 2, 3, 3), (2, 2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 3), (4, 1, 3, 2), dict(groups=2, stride=(1, 2), output_padding=(0, 1))),
    ((1, 2, 3, 3), (2, 2, 2, 2), dict(dilation=3, output_padding=2)),  # output_padding >= stride
]


@pytest.mark.parametrize("xs, ws, kw", TRANSPOSE_CASES)
def test_conv_transpose2d_gradients(xs, ws, kw, device):
    groups = kw.get("groups", 1)
    x, w, b = rand(*xs), rand(*ws), rand(ws[1] * groups)
    gradcheck(lambda x, w, b: F.conv_transpose2d(x, w, b, **kw), [x, w, b], device=device)


@pytest.mark.parametrize("xs, ws, kw", [CONV_CASES[0], CONV_CASES[3], CONV_CASES[2]])
def test_conv2d_second_derivatives(xs, ws, kw, device):
    # d(gx)/dW and d(gW)/dx run through conv_transpose2d and the weight-gradient Function
    x, w, b = rand(*xs), rand(*ws), rand(ws[0])
    gradgradcheck(lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b], device=device)


@pytest.mark.parametrize("xs, ws, kw", [TRANSPOSE_CASES[2], TRANSPOSE_CASES[3], TRANSPOSE_CASES[4]])
def test_conv_transpose2d_second_derivatives(xs, ws, kw, device):
    groups = kw.get("groups", 1)
    x, w, b = rand(*xs), rand(*ws), rand(ws[1] * groups)
    gradgradcheck(lambda x, w, b: F.conv_transpose2d(x, w, b, **kw), [x, w, b], device=device)


def test_gradient_penalty_through_a_conv_critic(device):
    # WGAN-GP / R1 shape of use: the penalty |dD/dx|^2 is differentiated w.r.t. the critic's weights
    x, w1, w2 = rand(2, 1, 6, 6), rand(3, 1, 3, 3), rand(1, 3, 3, 3)

    def penalty(w1, w2):
        with mg.enable_grad():  # gradcheck's finite-difference probe runs under no_grad
            xin = mg.tensor(x, device=device, requires_grad=True)
            h = F.conv2d(xin, w1, stride=2, padding=1)
            score = F.conv2d(h * h, w2).sum()
            (gx,) = mg.grad(score, [xin], create_graph=True)
            return (gx * gx).sum()

    gradcheck(penalty, [w1, w2], device=device)


def square(fn):
    """x -> fn(x)^2, so a linear op gets a non-zero second derivative to check."""
    return lambda *a: fn(*a) * fn(*a)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=(3, 2), stride=(1, 2))])
def test_avg_pool2d_values_and_gradients(kw, device):
    x = rand(2, 2, 5, 6)
    y = F.avg_pool2d(tensor(x, device), **kw)
    np.testing.assert_allclose(y.numpy(), ref_pool(x, kw["kernel_size"], kw.get("stride", kw["kernel_size"]),
                                                   kw.get("padding", 0), np.mean), rtol=1e-12, atol=1e-12)
    gradcheck(lambda x: F.avg_pool2d(x, **kw), [x], device=device)
    gradgradcheck(square(lambda x: F.avg_pool2d(x, **kw)), [x], device=device)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=(2, 3), stride=1)])  # overlapping windows add up
def test_max_pool2d_values_and_gradients(kw, device):
    x = RNG.permutation(60).reshape(1, 2, 5, 6) / 7.0  # distinct values: no ties in any window
    assert no_ties(x)
    y = F.max_pool2d(tensor(x, device), **kw)
    np.testing.assert_array_equal(y.numpy(), ref_pool(x, kw["kernel_size"], kw.get("stride", kw["kernel_size"]),
                                                      kw.get("padding", 0), np.max))
    gradcheck(lambda x: F.max_pool2d(x, **kw), [x], device=device)
    # the probe sums values of order 10: its round-off is ~1e-16 * 10 / eps = 1e-9
    gradgradcheck(square(lambda x: F.max_pool2d(x, **kw)), [x], device=device, atol=1e-8)


def test_max_pool2d_gradient_goes_to_the_argmax():
    x = tensor([[[[1.0, 5.0], [3.0, 2.0]]]], requires_grad=True)
    F.max_pool2d(x, 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[[[0.0, 1.0], [0.0, 0.0]]]])


INTERP_CASES = [  # (input hw, kwargs, reference output hw)
    ((3, 4), dict(scale_factor=2), (6, 8)),                       # the UNet's nearest x2: block sums
    ((3, 4), dict(size=(7, 5)), (7, 5)),                          # general nearest, both directions
    ((5, 6), dict(size=(2, 3)), (2, 3)),
    ((3, 4), dict(size=(5, 7), mode="bilinear"), (5, 7)),
    ((3, 4), dict(size=(6, 3), mode="bilinear", align_corners=True), (6, 3)),
    ((4, 4), dict(scale_factor=2, mode="bilinear"), (8, 8)),
]


@pytest.mark.parametrize("hw, kw, out", INTERP_CASES)
def test_interpolate_values_and_gradients(hw, kw, out, device):
    x = rand(2, 2, *hw)
    y = F.interpolate(tensor(x, device), **kw)
    assert y.shape == (2, 2) + out
    ref = ref_interpolate(x, out, kw.get("mode", "nearest"), kw.get("align_corners", False))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-12)
    gradcheck(lambda x: F.interpolate(x, **kw), [x], device=device)
    gradgradcheck(square(lambda x: F.interpolate(x, **kw)), [x], device=device)


def test_nearest_x2_backward_sums_each_block():
    x = tensor(np.zeros((1, 1, 2, 2)), requires_grad=True)
    gy = np.arange(16.0).reshape(1, 1, 4, 4)
    F.interpolate(x, scale_factor=2).backward(tensor(gy))
    np.testing.assert_array_equal(x.grad.numpy(), gy.reshape(1, 1, 2, 2, 2, 2).sum(axis=(3, 5)))


def test_a_wrong_gradient_is_caught():
    # the checks above can fail: a conv whose weight gradient is scaled by 1.01 is rejected
    class Scaled(mg.Function):
        def forward(self, w):
            return w * 1.0

        def backward(self, gy):
            return gy * 1.01

    x = rand(1, 2, 4, 4)
    with pytest.raises(GradcheckError):
        gradcheck(lambda w: F.conv2d(mg.tensor(x), Scaled()(w), padding=1), [rand(2, 2, 3, 3)])


# ----------------------------------------------------------------------------
# errors: one clear sentence naming the op and the shapes
# ----------------------------------------------------------------------------

def test_conv2d_errors():
    x = tensor(rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"conv2d: input has 3 channels \(shape \(2, 3, 8, 8\)\).*expects 4"):
        F.conv2d(x, tensor(rand(5, 4, 3, 3)))
    with pytest.raises(ValueError, match=r"conv2d: groups=2 must divide both the input channels \(3"):
        F.conv2d(x, tensor(rand(4, 1, 3, 3)), groups=2)
    with pytest.raises(ValueError, match=r"conv2d: the input's spatial size 2x2 .*smaller than the kernel 3x3"):
        F.conv2d(tensor(rand(1, 3, 2, 2)), tensor(rand(4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"conv2d: expected a 4-D input \(N, C, H, W\), got shape \(3, 8, 8\)"):
        F.conv2d(tensor(rand(3, 8, 8)), tensor(rand(4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"conv2d: bias must be a Tensor of shape \(4,\)"):
        F.conv2d(x, tensor(rand(4, 3, 3, 3)), tensor(rand(3)))
    with pytest.raises(ValueError, match="conv2d: stride must be >= 1"):
        F.conv2d(x, tensor(rand(4, 3, 3, 3)), stride=0)
    with pytest.raises(TypeError, match="conv2d: padding must be an int or a pair"):
        F.conv2d(x, tensor(rand(4, 3, 3, 3)), padding=(1, 1, 1))


def test_conv_transpose2d_errors():
    x = tensor(rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"conv_transpose2d: input has 3 channels .*expects 4"):
        F.conv_transpose2d(x, tensor(rand(4, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"conv_transpose2d: groups=2 must divide the input channels \(3"):
        F.conv_transpose2d(x, tensor(rand(3, 2, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="conv_transpose2d: output_padding .* smaller than either stride"):
        F.conv_transpose2d(x, tensor(rand(3, 2, 3, 3)), stride=2, output_padding=2)
    with pytest.raises(ValueError, match="conv_transpose2d: the output size .* is not positive"):
        F.conv_transpose2d(tensor(rand(1, 3, 1, 1)), tensor(rand(3, 2, 1, 1)), padding=1)


def test_pool_and_interpolate_errors():
    x = tensor(rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="max_pool2d: padding .* between 0 and half the kernel size"):
        F.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match=r"avg_pool2d: the input's spatial size 4x4 .* smaller than the kernel 5x5"):
        F.avg_pool2d(x, 5)
    with pytest.raises(ValueError, match="interpolate: give exactly one of size and scale_factor"):
        F.interpolate(x)
    with pytest.raises(ValueError, match="interpolate: mode must be"):
        F.interpolate(x, size=3, mode="bicubic")
    with pytest.raises(ValueError, match="interpolate: align_corners can only be set with mode='bilinear'"):
        F.interpolate(x, size=3, align_corners=True)

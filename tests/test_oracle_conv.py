"""Oracle: minigen's convolutions, pools and interpolate against PyTorch on identical inputs.

Forward values and the gradients of every input (float64 and float32), and the
second derivative of a gradient penalty, for several configurations.  Skipped
when PyTorch is not installed; the core suite (test_ops_conv.py) stands alone.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

import minigen as mg  # noqa: E402
import minigen.functional as F  # noqa: E402
from helpers import compare  # noqa: E402

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Every test draws the same values whichever tests ran before it."""
    global RNG
    RNG = np.random.default_rng(7)
TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=2e-4, atol=2e-4)}


def both(*arrays, dtype=np.float64):
    """The same arrays as minigen and torch leaves that require grad."""
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    return ([mg.tensor(a, requires_grad=True) for a in arrays],
            [torch.tensor(a, requires_grad=True) for a in arrays])


CONV = [  # (x shape, weight shape, kwargs)
    ((2, 3, 8, 8), (4, 3, 3, 3), dict(padding=1)),
    ((2, 4, 9, 7), (6, 2, 3, 3), dict(stride=2, padding=(1, 2), groups=2)),
    ((1, 3, 10, 10), (2, 3, 3, 2), dict(dilation=(2, 3), padding=2)),
    ((2, 1, 28, 28), (8, 1, 4, 4), dict(stride=2, padding=1)),  # DCGAN discriminator's first layer
    ((1, 6, 5, 5), (6, 1, 3, 3), dict(groups=6, padding=1)),   # depthwise
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs, ws, kw", CONV)
def test_conv2d_matches_torch(xs, ws, kw, dtype):
    arrays = [RNG.standard_normal(xs), RNG.standard_normal(ws), RNG.standard_normal(ws[0])]
    compare(lambda x, w, b: F.conv2d(x, w, b, **kw), lambda x, w, b: TF.conv2d(x, w, b, **kw),
            [a.astype(dtype) for a in arrays], **TOL[dtype])


TRANSPOSE = [  # (x shape, weight shape (in, out/groups, kh, kw), kwargs)
    ((2, 4, 7, 7), (4, 3, 4, 4), dict(stride=2, padding=1)),  # DCGAN generator layer: 7 -> 14
    ((1, 4, 4, 5), (4, 2, 3, 3), dict(stride=2, padding=1, output_padding=1, groups=2)),
    ((2, 3, 4, 4), (3, 2, 3, 2), dict(stride=(1, 3), dilation=(2, 1), output_padding=(1, 2))),
    ((1, 2, 3, 3), (2, 3, 2, 2), dict(dilation=3, output_padding=2)),  # output_padding >= stride
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs, ws, kw", TRANSPOSE)
def test_conv_transpose2d_matches_torch(xs, ws, kw, dtype):
    groups = kw.get("groups", 1)
    arrays = [RNG.standard_normal(xs), RNG.standard_normal(ws), RNG.standard_normal(ws[1] * groups)]
    compare(lambda x, w, b: F.conv_transpose2d(x, w, b, **kw),
            lambda x, w, b: TF.conv_transpose2d(x, w, b, **kw), [a.astype(dtype) for a in arrays], **TOL[dtype])


@pytest.mark.parametrize("op, kw", [
    ("avg_pool2d", dict(kernel_size=2)),
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("avg_pool2d", dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0))),
    ("max_pool2d", dict(kernel_size=2)),
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("max_pool2d", dict(kernel_size=(3, 2), stride=1, padding=(1, 0))),
])
def test_pools_match_torch(op, kw):
    x = RNG.permutation(2 * 3 * 7 * 8).reshape(2, 3, 7, 8) / 10.0  # distinct values: a unique argmax
    compare(lambda x: getattr(F, op)(x, **kw), lambda x: getattr(TF, op)(x, **kw), [x], **TOL[np.float64])


@pytest.mark.parametrize("kw", [
    dict(scale_factor=2),
    dict(scale_factor=3),
    dict(size=(11, 5)),
    dict(size=(3, 4)),
    dict(size=(9, 13), mode="bilinear"),
    dict(size=(9, 13), mode="bilinear", align_corners=True),
    dict(size=(4, 3), mode="bilinear"),
    dict(scale_factor=2, mode="bilinear"),
    dict(scale_factor=(1.5, 2.5), mode="bilinear"),
    dict(scale_factor=(1.1, 1.3), mode="bilinear"),  # H stays 6: an unchanged axis is copied
    dict(scale_factor=2.1),                   # output exactly 2x the input: PyTorch doubles, dst // 2
    dict(scale_factor=0.7),
])
def test_interpolate_matches_torch(kw):
    x = RNG.standard_normal((2, 3, 6, 7))
    compare(lambda x: F.interpolate(x, **kw), lambda x: TF.interpolate(x, **kw), [x], **TOL[np.float64])


def test_r1_penalty_second_derivative_matches_torch():
    # R1 on a conv critic: d/dW of |dD/dx|^2, through conv2d, conv_transpose2d and the weight gradient
    x = RNG.standard_normal((2, 1, 8, 8))
    w1, w2 = RNG.standard_normal((4, 1, 4, 4)), RNG.standard_normal((4, 3, 3, 3))
    ws3 = RNG.standard_normal((2, 3, 3, 3))

    def critic(F_, x, w1, w2, w3):
        h = F_.conv2d(x, w1, stride=2, padding=1)
        h = F_.conv_transpose2d(h * h, w2, stride=2, padding=1, output_padding=1)
        return F_.avg_pool2d(F_.conv2d(F_.interpolate(h, scale_factor=2), w3, padding=1), 2).sum()

    (xm, w1m, w2m, w3m), (xt, w1t, w2t, w3t) = both(x, w1, w2, ws3)
    (gx,) = mg.grad(critic(F, xm, w1m, w2m, w3m), [xm], create_graph=True)
    grads = mg.grad((gx * gx).sum(), [w1m, w2m, w3m])
    (gxt,) = torch.autograd.grad(critic(TF, xt, w1t, w2t, w3t), [xt], create_graph=True)
    grads_t = torch.autograd.grad((gxt * gxt).sum(), [w1t, w2t, w3t])
    for g, gt in zip(grads, grads_t):
        np.testing.assert_allclose(g.numpy(), gt.numpy(), rtol=1e-9, atol=1e-9)

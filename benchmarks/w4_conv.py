"""W4: one 3x3 convolution, forward and forward+backward.

    y = conv2d(x, w, stride 1, padding 1, no bias),
    x (64, 64, 14, 14), w (128, 64, 3, 3), upstream gradient gy (64, 128, 14, 14),
    all ~ N(0, 1), NCHW.
    "fwd":     forward only, no graph recorded;
    "fwd+bwd": forward, then dL/dx and dL/dw for L = <y, gy> (mg.grad / torch.autograd.grad).
    FLOP fwd = 2 N F H W C 9 (0.92 GFLOP); fwd+bwd = 3x that.

This isolates the convolution kernel itself: im2col on strided views and one
large matmul in minigen, oneDNN/MKL-DNN in PyTorch.
"""
from __future__ import annotations

import minigen as mg
import minigen.functional as F

from .common import Case, Row, rel_err

NAME = "W4"
TITLE = "conv2d 3x3"


def _arrays(settings):
    n = 2 if settings.quick else 64
    c, h, w, f = 64, 14, 14, 128
    g = mg.Generator(settings.seed, "cpu")
    return g.normal((n, c, h, w)), g.normal((f, c, 3, 3)), g.normal((n, f, h, w))


def build(settings, twins=None, torch_device=None) -> Case:
    x_host, w_host, gy_host = _arrays(settings)
    dev = settings.device
    x = mg.tensor(x_host, device=dev, requires_grad=True)
    w = mg.tensor(w_host, device=dev, requires_grad=True)
    gy = mg.tensor(gy_host, device=dev)

    def fwd():
        with mg.no_grad():
            return F.conv2d(x, w, padding=1)

    def fwd_bwd():
        y = F.conv2d(x, w, padding=1)
        return mg.grad(y, [x, w], grad_outputs=gy)

    n, c, h, wd = x_host.shape
    flop = 2.0 * n * w_host.shape[0] * h * wd * c * 9
    engines = {"minigen-fwd": fwd, "minigen-fwd+bwd": fwd_bwd}
    rows = [Row("fwd", "minigen-fwd", flop=flop),
            Row("fwd+bwd", "minigen-fwd+bwd", flop=3 * flop, target=1.2)]
    if twins is not None:
        tf, tfb = twins.conv_calls(twins.tensor(x_host, torch_device, requires_grad=True),
                                   twins.tensor(w_host, torch_device, requires_grad=True),
                                   twins.tensor(gy_host, torch_device))
        engines.update({"torch-fwd": tf, "torch-fwd+bwd": tfb})
        rows[0].torch, rows[1].torch = "torch-fwd", "torch-fwd+bwd"
    return Case(engines, rows, info={"x": list(x_host.shape), "w": list(w_host.shape)})


def check(settings, twins, torch_device):
    """y, dx and dw against PyTorch on the same x, w, gy."""
    x_host, w_host, gy_host = _arrays(settings)
    dev = settings.device
    x = mg.tensor(x_host, device=dev, requires_grad=True)
    w = mg.tensor(w_host, device=dev, requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    gx, gw = mg.grad(y, [x, w], grad_outputs=mg.tensor(gy_host, device=dev))
    tx = twins.tensor(x_host, torch_device, requires_grad=True)
    tw = twins.tensor(w_host, torch_device, requires_grad=True)
    ty = twins.TF.conv2d(tx, tw, padding=1)
    tgx, tgw = twins.torch.autograd.grad(ty, (tx, tw), twins.tensor(gy_host, torch_device))
    return [("y", rel_err(y.numpy(), twins.to_numpy(ty)), 1e-5),
            ("grad x", rel_err(gx.numpy(), twins.to_numpy(tgx)), 1e-5),
            ("grad w", rel_err(gw.numpy(), twins.to_numpy(tgw)), 1e-5)]

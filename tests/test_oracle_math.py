"""Oracle: minigen's activations, softmax family and reductions against PyTorch.

Same inputs, same upstream gradient; forward values and input gradients must
agree (float64 tightly, float32 to float32 precision).  Skipped without torch.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

import minigen as mg  # noqa: E402
import minigen.functional as F  # noqa: E402
from helpers import compare  # noqa: E402

pytestmark = pytest.mark.oracle

# name -> (minigen function, torch function)
ACTIVATIONS = {
    "relu": (F.relu, TF.relu),
    "leaky_relu": (F.leaky_relu, TF.leaky_relu),
    "leaky_relu_0.2": (lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2)),
    "silu": (F.silu, TF.silu),
    "gelu": (F.gelu, TF.gelu),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh")),
    "softplus": (F.softplus, TF.softplus),
    "softplus_beta": (lambda x: F.softplus(x, beta=2.0, threshold=4.0),
                      lambda x: TF.softplus(x, beta=2.0, threshold=4.0)),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "tanh": (F.tanh, torch.tanh),
    "log_sigmoid": (F.log_sigmoid, TF.logsigmoid),
    "abs": (F.abs, torch.abs),
    "erf": (F.erf, torch.erf),
    "clamp": (lambda x: F.clamp(x, -1.0, 2.0), lambda x: torch.clamp(x, -1.0, 2.0)),
    "clamp_min": (lambda x: F.clamp(x, min=0.5), lambda x: torch.clamp(x, min=0.5)),
    "softmax": (lambda x: F.softmax(x, 1), lambda x: torch.softmax(x, 1)),
    "log_softmax": (F.log_softmax, lambda x: torch.log_softmax(x, -1)),
    "logsumexp": (lambda x: F.logsumexp(x, -1), lambda x: torch.logsumexp(x, -1)),
    "logsumexp_keepdim": (lambda x: F.logsumexp(x, (0, 2), keepdim=True),
                          lambda x: torch.logsumexp(x, (0, 2), keepdim=True)),
    "sum": (lambda x: F.sum(x, 1), lambda x: torch.sum(x, 1)),
    "mean": (lambda x: F.mean(x, (0, 2), keepdim=True), lambda x: torch.mean(x, (0, 2), keepdim=True)),
    "var": (lambda x: F.var(x, 1), lambda x: torch.var(x, 1)),
    "var_biased_all": (lambda x: F.var(x, unbiased=False), lambda x: torch.var(x, unbiased=False)),
    "var_keepdim": (lambda x: F.var(x, (1, 2), keepdim=True), lambda x: torch.var(x, (1, 2), keepdim=True)),
    "max_dim": (lambda x: F.max(x, 2), lambda x: torch.max(x, 2).values),
    "min_keepdim": (lambda x: F.min(x, 0, keepdim=True), lambda x: torch.min(x, 0, keepdim=True).values),
    "max_all": (F.max, torch.max),
    "min_all": (F.min, torch.min),
}


def _inputs(dtype):
    rng = np.random.default_rng(11)
    x = rng.uniform(-6, 6, (3, 4, 5))
    x[0, 0, :4] = [-30.0, 30.0, 25.0, -25.0]  # tails and softplus' linear regime
    return x.astype(dtype), rng.standard_normal(x.shape)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_and_gradient_match_torch(name, dtype):
    x, _ = _inputs(dtype)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=1e-5)
    (y,), _ = compare(*ACTIVATIONS[name], [x], **tol)
    assert y.dtype == dtype


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_match_torch_including_ties(op):
    a = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    b = np.array([1.0, 0.0, 3.5])  # broadcasts; a tie at [0, 0]: both sides share its gradient
    compare(getattr(F, op), getattr(torch, op), [a, b], gy=np.arange(1.0, 7.0).reshape(2, 3), rtol=0, atol=0)


def test_where_matches_torch():
    rng = np.random.default_rng(12)
    cond = rng.random((3, 1, 4)) > 0.5
    a, b = rng.standard_normal((2, 4)), rng.standard_normal((3, 2, 1))
    compare(F.where, torch.where, [cond, a, b], gy=rng.standard_normal((3, 2, 4)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["silu", "gelu", "gelu_tanh", "softplus", "log_softmax", "logsumexp"])
def test_second_derivatives_match_torch(name):
    x, w = _inputs(np.float64)
    x = x[:, :2]  # stay off softplus' threshold and tails, where both sides are flat
    ours, theirs = ACTIVATIONS[name]
    xm = mg.tensor(x, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    ym, yt = ours(xm), theirs(xt)
    u = w.reshape(-1)[:yt.numel()].reshape(tuple(yt.shape))
    (gm,) = mg.grad(ym, [xm], grad_outputs=[mg.tensor(u)], create_graph=True)
    (gt,) = torch.autograd.grad(yt, [xt], grad_outputs=[torch.tensor(u)], create_graph=True)
    (hm,) = mg.grad((gm * gm).sum(), [xm])
    (ht,) = torch.autograd.grad((gt * gt).sum(), [xt])
    np.testing.assert_allclose(hm.numpy(), ht.numpy(), rtol=1e-9, atol=1e-12)

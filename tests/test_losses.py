"""Loss functions: values against NumPy formulas, gradients (float64 central
differences, and second derivatives where gradient penalties need them),
stability at extreme logits, dtype, and the error messages.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigen as mg
import minigen.functional as F
from minigen.testing import gradcheck, gradgradcheck

from strategies import arrays, assume, away_from, shapes
from helpers import tensor

REDUCTIONS = ["mean", "sum", "none"]


def rng(seed=0):
    return np.random.default_rng(seed)


def reduce_np(v, reduction):
    return {"mean": v.mean(), "sum": v.sum(), "none": v}[reduction]


def log_softmax_np(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def sigmoid_np(x):
    return 1 / (1 + np.exp(-x))


# ----------------------------------------------------------------------------
# regression losses
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_and_l1_values(reduction, device):
    x, y = rng().standard_normal((3, 4)), rng(1).standard_normal((3, 4))
    got = F.mse_loss(tensor(x, device), tensor(y, device), reduction=reduction).numpy()
    np.testing.assert_allclose(got, reduce_np((x - y) ** 2, reduction), rtol=1e-12)
    got = F.l1_loss(tensor(x, device), y, reduction=reduction).numpy()  # an array target works too
    np.testing.assert_allclose(got, reduce_np(np.abs(x - y), reduction), rtol=1e-12)


@settings(max_examples=10)
@given(st.data())
def test_mse_l1_gradients(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3, max_side=4))
    x, y = data.draw(arrays(shape)), data.draw(arrays(shape))
    reduction = data.draw(st.sampled_from(REDUCTIONS))
    assume(away_from(x - y, (0.0,), margin=1e-3))  # |.| has a kink at 0 (and mse a zero gradient)
    assert gradcheck(lambda a, b: F.mse_loss(a, b, reduction=reduction), [x, y])
    assert gradgradcheck(lambda a, b: F.mse_loss(a, b, reduction=reduction), [x, y])
    assert gradcheck(lambda a, b: F.l1_loss(a, b, reduction=reduction), [x, y])


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gaussian_nll_values_and_grads(full, reduction, device):
    r = rng(2)
    x, y = r.standard_normal((3, 4)), r.standard_normal((3, 4))
    var = r.uniform(0.2, 2.0, (3, 4))
    want = 0.5 * (np.log(var) + (x - y) ** 2 / var) + (0.5 * math.log(2 * math.pi) if full else 0.0)
    got = F.gaussian_nll_loss(tensor(x, device), tensor(y, device), tensor(var, device), full=full, reduction=reduction)
    np.testing.assert_allclose(got.numpy(), reduce_np(want, reduction), rtol=1e-12)
    fn = lambda a, b, v: F.gaussian_nll_loss(a, b, v, full=full, reduction=reduction)  # noqa: E731
    gradcheck(fn, [x, y, var], device=device)
    gradgradcheck(fn, [x, y, var], device=device)


def test_gaussian_nll_shared_variance_shapes_and_eps_clamp():
    r = rng(3)
    x, y = r.standard_normal((2, 3)), r.standard_normal((2, 3))
    v_row = r.uniform(0.5, 1.5, (2,))
    # a variance without the last dim is shared along it
    got = F.gaussian_nll_loss(tensor(x), tensor(y), tensor(v_row), reduction="none").numpy()
    np.testing.assert_allclose(got, 0.5 * (np.log(v_row[:, None]) + (x - y) ** 2 / v_row[:, None]))
    gradcheck(lambda a, v: F.gaussian_nll_loss(a, tensor(y), v), [x, v_row])
    gradcheck(lambda a, v: F.gaussian_nll_loss(a, tensor(y), v), [x, v_row[:, None]])  # (2, 1)
    np.testing.assert_allclose(F.gaussian_nll_loss(tensor(x), tensor(y), 0.7).item(),
                               np.mean(0.5 * (np.log(0.7) + (x - y) ** 2 / 0.7)))
    # var below eps: the value uses eps, the gradient passes through the clamp (PyTorch's rule)
    v = tensor([[1e-9]], requires_grad=True)
    loss = F.gaussian_nll_loss(tensor([[0.0]]), tensor([[1e-3]]), v, eps=1e-6)
    np.testing.assert_allclose(loss.item(), 0.5 * (np.log(1e-6) + 1e-6 / 1e-6))
    loss.backward()
    np.testing.assert_allclose(v.grad.item(), 0.5 * (1 / 1e-6 - 1e-6 / 1e-12))


# ----------------------------------------------------------------------------
# binary cross-entropy
# ----------------------------------------------------------------------------

def bce_logits_np(x, y, pos_weight=1.0):
    return -(pos_weight * y * np.log(sigmoid_np(x)) + (1 - y) * np.log(1 - sigmoid_np(x)))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_values(reduction, device):
    r = rng(4)
    x, y = r.standard_normal((3, 4)) * 3, r.uniform(0, 1, (3, 4))
    w, pw = r.uniform(0.5, 2, (3, 4)), r.uniform(0.5, 2, (4,))
    got = F.binary_cross_entropy_with_logits(tensor(x, device), tensor(y, device), reduction=reduction)
    np.testing.assert_allclose(got.numpy(), reduce_np(bce_logits_np(x, y), reduction), rtol=1e-12)
    got = F.binary_cross_entropy_with_logits(tensor(x, device), tensor(y, device), weight=tensor(w, device),
                                             pos_weight=tensor(pw, device), reduction=reduction)
    np.testing.assert_allclose(got.numpy(), reduce_np(w * bce_logits_np(x, y, pw), reduction), rtol=1e-12)


@settings(max_examples=12)
@given(st.data())
def test_bce_with_logits_gradients(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3, max_side=4))
    x = data.draw(arrays(shape, -6.0, 6.0))
    y = data.draw(arrays(shape, 0.0, 1.0))
    reduction = data.draw(st.sampled_from(REDUCTIONS))
    fn = lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction)  # noqa: E731
    assert gradcheck(fn, [x, y])
    assert gradgradcheck(fn, [x, y])


def test_bce_with_logits_weights_gradients(device):
    r = rng(5)
    x, y = r.standard_normal((3, 4)), r.uniform(0, 1, (3, 4))
    w, pw = r.uniform(0.5, 2, (3, 1)), r.uniform(0.5, 2, (4,))  # both broadcast
    fn = lambda a, b, c, d: F.binary_cross_entropy_with_logits(a, b, weight=c, pos_weight=d)  # noqa: E731
    assert gradcheck(fn, [x, y, w, pw], device=device)
    assert gradgradcheck(fn, [x, y, w, pw], device=device)


def test_bce_with_logits_is_stable_at_extreme_logits(device):
    x = np.array([1000.0, -1000.0, 1000.0, -1000.0, 0.0])
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.5])
    for dtype in (np.float64, np.float32):
        a = tensor(x, device, requires_grad=True, dtype=dtype)
        loss = F.binary_cross_entropy_with_logits(a, tensor(y, device, dtype=dtype), reduction="none")
        np.testing.assert_allclose(loss.numpy(), [0.0, 0.0, 1000.0, 1000.0, math.log(2)], rtol=1e-6)
        loss.sum().backward()
        np.testing.assert_allclose(a.grad.numpy(), [0.0, 0.0, 1.0, -1.0, 0.0], atol=1e-7)
    # the second-derivative path (sigma(x) as an op) is stable too
    a = tensor(x, device, requires_grad=True)
    (g,) = mg.grad(F.binary_cross_entropy_with_logits(a, tensor(y, device), reduction="sum"), [a],
                   create_graph=True)
    np.testing.assert_allclose(g.numpy(), [0.0, 0.0, 1.0, -1.0, 0.0], atol=1e-12)
    (gg,) = mg.grad(g.sum(), [a])
    np.testing.assert_allclose(gg.numpy(), [0.0, 0.0, 0.0, 0.0, 0.25], atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_on_probabilities(reduction, device):
    r = rng(6)
    p, y, w = r.uniform(0.05, 0.95, (3, 4)), r.uniform(0, 1, (3, 4)), r.uniform(0.5, 2, (3, 4))
    want = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    got = F.binary_cross_entropy(tensor(p, device), tensor(y, device), reduction=reduction)
    np.testing.assert_allclose(got.numpy(), reduce_np(want, reduction), rtol=1e-12)
    got = F.binary_cross_entropy(tensor(p, device), tensor(y, device), weight=tensor(w, device), reduction=reduction)
    np.testing.assert_allclose(got.numpy(), reduce_np(w * want, reduction), rtol=1e-12)
    fn = lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction)  # noqa: E731
    gradcheck(fn, [p, y], device=device, eps=1e-7)
    gradgradcheck(fn, [p, y], device=device, eps=1e-7)


def test_bce_on_probabilities_clamps_logs_at_minus_100(device):
    p = tensor([0.0, 1.0, 0.0, 1.0], device, requires_grad=True)
    y = tensor([1.0, 0.0, 0.0, 1.0], device)
    loss = F.binary_cross_entropy(p, y, reduction="none")
    np.testing.assert_array_equal(loss.numpy(), [100.0, 100.0, 0.0, 0.0])
    loss.sum().backward()
    g = p.grad.numpy()
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [-1e12, 1e12, 0.0, 0.0])  # (p - t) / max(p (1 - p), 1e-12)
    # gradient with respect to a target at p = 0 or 1 uses the clamped logs as well
    yt = tensor([0.3, 0.3], device, requires_grad=True)
    F.binary_cross_entropy(tensor([0.0, 1.0], device), yt, reduction="sum").backward()
    np.testing.assert_allclose(yt.grad.numpy(), [100.0, -100.0])


# ----------------------------------------------------------------------------
# cross-entropy and NLL
# ----------------------------------------------------------------------------

def cross_entropy_np(x, y, weight=None, reduction="mean", smoothing=0.0):
    """Straight from the definition, class dim 1, index targets."""
    C = x.shape[1]
    logp = np.moveaxis(log_softmax_np(x, 1), 1, -1)          # (N, d..., C)
    w = np.ones(C) if weight is None else weight
    q = (1 - smoothing) * np.eye(C)[y] + smoothing / C        # smoothed one-hot targets
    per = -(q * w * logp).sum(-1)
    if reduction == "mean":
        return per.sum() / w[y].sum()
    return reduce_np(per, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_index_targets(reduction, shape, weighted, smoothing, device):
    r = rng(7)
    x = r.standard_normal(shape) * 2
    y = r.integers(0, shape[1], (shape[0],) + shape[2:])
    w = r.uniform(0.5, 2, shape[1]) if weighted else None
    got = F.cross_entropy(tensor(x, device), mg.tensor(y, device=device), weight=w, reduction=reduction,
                          label_smoothing=smoothing)
    np.testing.assert_allclose(got.numpy(), cross_entropy_np(x, y, w, reduction, smoothing), rtol=1e-12)
    gradcheck(lambda a: F.cross_entropy(a, y, weight=w, reduction=reduction, label_smoothing=smoothing),
              [x], device=device)


def test_cross_entropy_weighted_mean_divides_by_target_weights():
    x = np.zeros((2, 3))  # uniform predictions: each -log p = log 3
    w = np.array([1.0, 2.0, 5.0])
    got = F.cross_entropy(tensor(x), np.array([0, 2]), weight=tensor(w)).item()
    np.testing.assert_allclose(got, (1 * math.log(3) + 5 * math.log(3)) / (1 + 5))
    got_sum = F.cross_entropy(tensor(x), np.array([0, 2]), weight=tensor(w), reduction="sum").item()
    np.testing.assert_allclose(got_sum, 6 * math.log(3))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probability_targets(reduction, device):
    r = rng(8)
    x = r.standard_normal((4, 3))
    q = r.dirichlet(np.ones(3), 4)
    w = r.uniform(0.5, 2, 3)
    for smoothing in (0.0, 0.2):
        qs = q * (1 - smoothing) + smoothing / 3
        want = -(qs * w * log_softmax_np(x, 1)).sum(1)
        got = F.cross_entropy(tensor(x, device), tensor(q, device), weight=w, reduction=reduction,
                              label_smoothing=smoothing)
        np.testing.assert_allclose(got.numpy(), reduce_np(want, reduction), rtol=1e-12)
    # gradients to both the logits and the target distribution
    gradcheck(lambda a, b: F.cross_entropy(a, b, reduction=reduction), [x, q], device=device)
    gradgradcheck(lambda a, b: F.cross_entropy(a, b, reduction=reduction), [x, q], device=device)


def test_cross_entropy_index_and_onehot_targets_agree_and_match_nll():
    r = rng(9)
    x, y = r.standard_normal((5, 4)), r.integers(0, 4, 5)
    a = F.cross_entropy(tensor(x), y).item()
    b = F.cross_entropy(tensor(x), tensor(np.eye(4)[y])).item()
    c = F.nll_loss(F.log_softmax(tensor(x), 1), y).item()
    np.testing.assert_allclose([a, b], [c, c], rtol=1e-13)
    # an unbatched input (C,) with a 0-d target
    nll0 = -log_softmax_np(x[:1], 1)[0, y[0]]
    np.testing.assert_allclose(F.cross_entropy(tensor(x[0]), np.array(y[0])).item(), nll0)
    w = np.array([0.5, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(F.cross_entropy(tensor(x[0]), np.array(y[0]), weight=w, reduction="sum").item(),
                               w[y[0]] * nll0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_values_and_grads(reduction, device):
    r = rng(10)
    logp = log_softmax_np(r.standard_normal((2, 3, 4)), 1)
    y = r.integers(0, 3, (2, 4))
    w = r.uniform(0.5, 2, 3)
    picked = np.take_along_axis(logp, y[:, None], 1)[:, 0]     # (2, 4)
    per = -w[y] * picked
    want = per.sum() / w[y].sum() if reduction == "mean" else reduce_np(per, reduction)
    got = F.nll_loss(tensor(logp, device), mg.tensor(y, device=device), weight=tensor(w), reduction=reduction)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    gradcheck(lambda a: F.nll_loss(a, y, weight=w, reduction=reduction), [logp], device=device)


def test_cross_entropy_is_stable_at_extreme_logits(device):
    x = tensor([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, 1000.0]], device, requires_grad=True)
    loss = F.cross_entropy(x, np.array([1, 2]), reduction="none")
    np.testing.assert_allclose(loss.numpy(), [2000.0, 0.0])
    loss.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-12)


# ----------------------------------------------------------------------------
# dtype and errors
# ----------------------------------------------------------------------------

def _all_losses(x, y01, p, labels, var):
    return {
        "mse_loss": F.mse_loss(x, y01),
        "l1_loss": F.l1_loss(x, y01),
        "gaussian_nll_loss": F.gaussian_nll_loss(x, y01, var),
        "bce_with_logits": F.binary_cross_entropy_with_logits(x, y01, pos_weight=var[0]),
        "binary_cross_entropy": F.binary_cross_entropy(p, y01),
        "cross_entropy": F.cross_entropy(x, labels, label_smoothing=0.1, weight=var[0]),
        "cross_entropy_probs": F.cross_entropy(x, y01),
        "nll_loss": F.nll_loss(x, labels),
    }


def test_losses_keep_float32(device):
    r = rng(11)

    def f32(a, grad=False):
        return mg.tensor(a.astype(np.float32), device=device, requires_grad=grad)

    x = f32(r.standard_normal((3, 4)), True)
    p = f32(r.uniform(0.1, 0.9, (3, 4)), True)
    y01, var = f32(r.uniform(0, 1, (3, 4))), f32(r.uniform(0.5, 1.5, (3, 4)))
    for name, loss in _all_losses(x, y01, p, r.integers(0, 4, 3), var).items():
        assert loss.dtype == np.float32, name
        x.grad = p.grad = None
        loss.backward()
        g = x.grad if x.grad is not None else p.grad
        assert g.dtype == np.float32, name


def test_errors_name_the_loss_and_the_problem():
    x, y = tensor(np.zeros((2, 3))), tensor(np.zeros((2, 4)))
    for fn, name in [(F.mse_loss, "mse_loss"), (F.l1_loss, "l1_loss"),
                     (F.binary_cross_entropy_with_logits, "binary_cross_entropy_with_logits"),
                     (F.binary_cross_entropy, "binary_cross_entropy")]:
        with pytest.raises(ValueError, match=rf"{name}: input shape \(2, 3\) and target shape \(2, 4\)"):
            fn(x, y)
        with pytest.raises(ValueError, match=rf"{name}: reduction must be .*got 'avg'"):
            fn(x, tensor(np.zeros((2, 3))), reduction="avg")
    with pytest.raises(ValueError, match=r"gaussian_nll_loss: input shape \(2, 3\) and target shape \(2, 4\)"):
        F.gaussian_nll_loss(x, y, tensor(np.ones((2, 3))))
    with pytest.raises(IndexError, match="cross_entropy: class index 3 is out of range for 3 classes"):
        F.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(IndexError, match="nll_loss: class index -1 is out of range"):
        F.nll_loss(x, np.array([-1, 0]))
    with pytest.raises(ValueError, match=r"cross_entropy: class-index target of shape \(3,\).*\(2,\)"):
        F.cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"cross_entropy: input shape \(2, 3\) and target shape \(2, 4\)"):
        F.cross_entropy(x, y)
    with pytest.raises(ValueError, match=r"cross_entropy: weight must have shape \(3,\)"):
        F.cross_entropy(x, np.array([0, 1]), weight=np.ones(4))
    with pytest.raises(ValueError, match="cross_entropy: reduction"):
        F.cross_entropy(x, np.array([0, 1]), reduction="mean ")
    with pytest.raises(ValueError, match=r"binary_cross_entropy: input must hold probabilities in \[0, 1\]"):
        F.binary_cross_entropy(tensor([0.5, 1.5]), tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="pos_weight of shape \\(2,\\) does not broadcast"):
        F.binary_cross_entropy_with_logits(x, tensor(np.zeros((2, 3))), pos_weight=tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="gaussian_nll_loss: var has negative"):
        F.gaussian_nll_loss(x, tensor(np.zeros((2, 3))), tensor(-np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"gaussian_nll_loss: var of shape \(3,\)"):
        F.gaussian_nll_loss(x, tensor(np.zeros((2, 3))), tensor(np.ones(3)))

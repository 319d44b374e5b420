"""batch_norm, group_norm, layer_norm: gradients, second derivatives, statistics, errors.

Gradient checks run in float64 over x, weight and bias; the running-statistics
update is compared with its formula over several steps; the normalised output
is checked to have zero mean and unit variance over what each norm pools.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigen as mg
import minigen.functional as F
from minigen.functional import norm as norm_module
from minigen.testing import GradcheckError, gradcheck, gradgradcheck

from strategies import seeds
from helpers import tensor


def arr(rng, *shape, scale=1.0, shift=0.0):
    return rng.standard_normal(shape) * scale + shift


# ----------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2), (2, 3, 2, 2)])
def test_batch_norm_training_gradcheck(device, shape):
    rng = np.random.default_rng(0)
    C = shape[1]
    fn = lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)  # noqa: E731
    # Some entries of dx are ~1e-5 here, and the central difference of a probe of
    # size ~10 carries ~1e-9 of rounding: atol 1e-8 sits just above that noise.
    gradcheck(fn, [arr(rng, *shape), arr(rng, C), arr(rng, C)], device=device, atol=1e-8)
    # without the affine part
    gradcheck(lambda x: F.batch_norm(x, None, None, training=True), [arr(rng, *shape)], device=device,
              atol=1e-8)


def test_batch_norm_eval_gradcheck(device):
    rng = np.random.default_rng(1)
    rm, rv = tensor(arr(rng, 3), device), tensor(rng.uniform(0.5, 2.0, 3), device)
    fn = lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False)  # noqa: E731
    gradcheck(fn, [arr(rng, 2, 3, 2, 2), arr(rng, 3), arr(rng, 3)], device=device)
    gradcheck(lambda x: F.batch_norm(x, rm, rv), [arr(rng, 4, 3)], device=device)


@settings(max_examples=12)
@given(n=st.integers(1, 3), groups=st.sampled_from([1, 2, 3]), per_group=st.integers(1, 3),
       spatial=st.sampled_from([(), (3,), (2, 2)]), seed=seeds())
def test_group_norm_gradcheck(n, groups, per_group, spatial, seed):
    C = groups * per_group
    if per_group * int(np.prod(spatial)) < 2:  # a group of one entry has zero variance
        spatial = (2,)
    rng = np.random.default_rng(seed)
    fn = lambda x, w, b: F.group_norm(x, groups, w, b)  # noqa: E731
    gradcheck(fn, [arr(rng, n, C, *spatial), arr(rng, C), arr(rng, C)])


def test_group_norm_gradcheck_on_device(device):
    rng = np.random.default_rng(2)
    gradcheck(lambda x, w, b: F.group_norm(x, 2, w, b), [arr(rng, 2, 4, 3, 3), arr(rng, 4), arr(rng, 4)],
              device=device)
    gradcheck(lambda x: F.group_norm(x, 4), [arr(rng, 2, 4, 3)], device=device)


@settings(max_examples=12)
@given(lead=st.sampled_from([(), (2,), (2, 3)]), norm_shape=st.sampled_from([(4,), (2, 3), (3, 1, 2)]),
       seed=seeds())
def test_layer_norm_gradcheck(lead, norm_shape, seed):
    rng = np.random.default_rng(seed)
    fn = lambda x, w, b: F.layer_norm(x, norm_shape, w, b)  # noqa: E731
    gradcheck(fn, [arr(rng, *lead, *norm_shape), arr(rng, *norm_shape), arr(rng, *norm_shape)])


def test_layer_norm_gradcheck_on_device(device):
    rng = np.random.default_rng(3)
    gradcheck(lambda x, w, b: F.layer_norm(x, 5, w, b), [arr(rng, 3, 2, 5), arr(rng, 5), arr(rng, 5)],
              device=device)
    gradcheck(lambda x, b: F.layer_norm(x, 5, bias=b), [arr(rng, 3, 5), arr(rng, 5)], device=device)
    gradcheck(lambda x: F.layer_norm(x, (2, 5)), [arr(rng, 3, 2, 5)], device=device)


def test_gradients_of_large_inputs_along_directions():
    # > 64 entries: gradcheck switches to random directional derivatives.
    rng = np.random.default_rng(4)
    gradcheck(lambda x, w, b: F.group_norm(x, 4, w, b),
              [arr(rng, 3, 8, 5, 5, shift=3.0), arr(rng, 8), arr(rng, 8)])
    gradcheck(lambda x, w, b: F.layer_norm(x, 32, w, b), [arr(rng, 6, 32), arr(rng, 32), arr(rng, 32)])


def test_gradcheck_catches_a_planted_wrong_backward(monkeypatch):
    # Drop the xhat * mean(g * xhat) term of the backward: the check must fail.
    rng = np.random.default_rng(5)
    x, w = arr(rng, 3, 4), arr(rng, 4)
    gradcheck(lambda x, w: F.layer_norm(x, 4, w), [x, w])

    def wrong_backward(self, gy):
        xhat, rstd = self._xhat_rstd()
        g = gy * self.inputs[1]
        return (g - F.mean(g, self.axes, keepdim=True)) * rstd, gy * xhat

    monkeypatch.setattr(norm_module.Normalize, "backward", wrong_backward)
    with pytest.raises(GradcheckError):
        gradcheck(lambda x, w: F.layer_norm(x, 4, w), [x, w])


# ----------------------------------------------------------------------------
# second derivatives (exact for all three norms, w.r.t. x, weight and bias)
# ----------------------------------------------------------------------------

def test_layer_norm_gradgradcheck(device):
    rng = np.random.default_rng(6)
    gradgradcheck(lambda x, w, b: F.layer_norm(x, 4, w, b), [arr(rng, 3, 4), arr(rng, 4), arr(rng, 4)],
                  device=device)


def test_group_norm_gradgradcheck(device):
    rng = np.random.default_rng(7)
    gradgradcheck(lambda x, w, b: F.group_norm(x, 2, w, b), [arr(rng, 2, 4, 2), arr(rng, 4), arr(rng, 4)],
                  device=device)


def test_batch_norm_gradgradcheck(device):
    rng = np.random.default_rng(8)
    fn = lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)  # noqa: E731
    gradgradcheck(fn, [arr(rng, 3, 2, 2), arr(rng, 2), arr(rng, 2)], device=device)
    rm, rv = tensor(arr(rng, 2), device), tensor(rng.uniform(0.5, 2.0, 2), device)
    # eval mode: y is affine in x, so only the weight-x cross terms survive
    gradgradcheck(lambda x, w: F.batch_norm(x, rm, rv, w), [arr(rng, 3, 2), arr(rng, 2)], device=device)


def test_gradgradcheck_needs_the_recorded_statistics(monkeypatch):
    # Treating xhat and rstd as constants in the backward (the fast path) gives the
    # right first derivative but a wrong second one: the check must notice.
    rng = np.random.default_rng(16)
    inputs = [arr(rng, 3, 4), arr(rng, 4)]
    fn = lambda x, w: F.layer_norm(x, 4, w)  # noqa: E731
    gradgradcheck(fn, inputs)
    monkeypatch.setattr(norm_module.Normalize, "_xhat_rstd",
                        lambda self: (mg.Tensor(self.xhat), mg.Tensor(self.rstd)))
    gradcheck(fn, inputs)
    with pytest.raises(GradcheckError):
        gradgradcheck(fn, inputs)


def test_gradient_penalty_through_group_norm():
    # |d sum(GN(x)^3) / dx|^2 is differentiable (R1-style penalty): compare with a
    # finite difference of the penalty itself.
    rng = np.random.default_rng(9)
    x0 = arr(rng, 2, 4, 3)

    def penalty(x):
        x = x if x.requires_grad else mg.Tensor(x.data, requires_grad=True)
        with mg.enable_grad():
            (g,) = mg.grad((F.group_norm(x, 2) ** 3).sum(), [x], create_graph=True)
        return (g * g).sum()

    gradcheck(penalty, [x0])


# ----------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------

def test_running_statistics_follow_the_formula(device):
    rng = np.random.default_rng(10)
    C, momentum = 3, 0.2
    rm, rv = tensor(np.zeros(C), device), tensor(np.ones(C), device)
    mean, var = np.zeros(C), np.ones(C)
    for _ in range(4):
        x = arr(rng, 5, C, 2, 3, scale=2.0, shift=1.5)
        F.batch_norm(tensor(x, device), rm, rv, training=True, momentum=momentum)
        n = x.size // C
        bm = x.mean(axis=(0, 2, 3))
        bv = x.var(axis=(0, 2, 3)) * n / (n - 1)  # unbiased, as PyTorch
        mean = (1 - momentum) * mean + momentum * bm
        var = (1 - momentum) * var + momentum * bv
    np.testing.assert_allclose(rm.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(rv.numpy(), var, rtol=1e-12)
    # eval mode then uses exactly these statistics
    x = arr(rng, 2, C, 2, 3)
    y = F.batch_norm(tensor(x, device), rm, rv, training=False)
    np.testing.assert_allclose(y.numpy(), (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5),
                               rtol=1e-10)


def test_running_statistics_update_outside_the_graph():
    rng = np.random.default_rng(11)
    rm, rv = mg.zeros(2, dtype=np.float64), mg.ones(2, dtype=np.float64)
    x = tensor(arr(rng, 4, 2), requires_grad=True)
    F.batch_norm(x, rm, rv, training=True).sum().backward()
    assert rm.creator is None and not rm.requires_grad and rm.grad is None
    before = rm.numpy().copy()
    F.batch_norm(x, rm, rv, training=False)
    np.testing.assert_array_equal(rm.numpy(), before)  # eval leaves them alone


@pytest.mark.parametrize("op", ["batch", "group", "layer"])
def test_normalised_output_has_zero_mean_and_unit_variance(device, op):
    rng = np.random.default_rng(12)
    x = arr(rng, 4, 6, 3, 5, scale=3.0, shift=-2.0)
    X = tensor(x, device)
    if op == "batch":
        y, axes = F.batch_norm(X, None, None, training=True, eps=0.0).numpy(), (0, 2, 3)
    elif op == "group":
        y, axes = F.group_norm(X, 3, eps=0.0).numpy().reshape(4, 3, 2, 3, 5), (2, 3, 4)
    else:
        y, axes = F.layer_norm(X, (3, 5), eps=0.0).numpy(), (2, 3)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=axes), 1.0, rtol=1e-12)


def test_affine_parameters_scale_and_shift_per_channel():
    rng = np.random.default_rng(13)
    x = arr(rng, 2, 4, 3)
    w, b = arr(rng, 4), arr(rng, 4)
    plain = F.group_norm(tensor(x), 2).numpy()
    y = F.group_norm(tensor(x), 2, tensor(w), tensor(b)).numpy()
    np.testing.assert_allclose(y, plain * w[:, None] + b[:, None], rtol=1e-12)
    plain = F.layer_norm(tensor(x), 3).numpy()
    w3, b3 = arr(rng, 3), arr(rng, 3)
    np.testing.assert_allclose(F.layer_norm(tensor(x), 3, tensor(w3), tensor(b3)).numpy(), plain * w3 + b3, rtol=1e-12)
    # bias alone
    np.testing.assert_allclose(F.layer_norm(tensor(x), 3, bias=tensor(b3)).numpy(), plain + b3, rtol=1e-12)


def test_large_offset_does_not_lose_the_variance():
    # Two-pass variance: a naive E[x^2] - E[x]^2 loses every digit at this offset in float32.
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((8, 64)) + 1e4).astype(np.float32)
    y = F.layer_norm(mg.tensor(x), 64).numpy()
    ref = (x.astype(np.float64) - x.mean(1, keepdims=True, dtype=np.float64)) / x.std(1, keepdims=True,
                                                                                          dtype=np.float64)
    np.testing.assert_allclose(y, ref, atol=2e-3)


def test_float32_stays_float32(device):
    rng = np.random.default_rng(15)
    x = mg.tensor(rng.standard_normal((4, 4, 3)).astype(np.float32), device=device, requires_grad=True)
    w = mg.tensor(np.ones(4, np.float32), device=device, requires_grad=True)
    b = mg.tensor(np.zeros(4, np.float32), device=device, requires_grad=True)
    rm, rv = mg.zeros(4, device=device), mg.ones(4, device=device)
    outs = [F.group_norm(x, 2, w, b), F.batch_norm(x, rm, rv, w, b, training=True),
            F.batch_norm(x, rm, rv, w, b), F.layer_norm(x, 3)]
    for y in outs:
        assert y.dtype == np.float32
        gx, gw, gb = mg.grad(y.sum() * 1.5 + (y * y).sum(), [x, w, b], allow_unused=True)
        assert gx.dtype == np.float32
    assert rm.dtype == np.float32 and rv.dtype == np.float32


# ----------------------------------------------------------------------------
# errors: one sentence naming the op and the shapes
# ----------------------------------------------------------------------------

def test_errors_name_the_op_and_the_shapes():
    x = mg.zeros(2, 4, 3)
    with pytest.raises(ValueError, match=r"group_norm: num_groups=3 does not divide the 4 channels"):
        F.group_norm(x, 3)
    with pytest.raises(ValueError, match=r"group_norm: weight has shape \(3,\).*\(2, 4, 3\).*\(4,\)"):
        F.group_norm(x, 2, mg.ones(3))
    with pytest.raises(ValueError, match=r"batch_norm: bias has shape \(5,\)"):
        F.batch_norm(x, None, None, None, mg.ones(5), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: running_mean has shape \(2,\)"):
        F.batch_norm(x, mg.zeros(2), mg.ones(4))
    with pytest.raises(ValueError, match="batch_norm: training=False .* running_mean or running_var is None"):
        F.batch_norm(x, None, None)
    with pytest.raises(ValueError, match="more than one value per channel"):
        F.batch_norm(mg.zeros(1, 4), None, None, training=True)
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape \(4,\) does not match .*\(2, 4, 3\)"):
        F.layer_norm(x, 4)
    with pytest.raises(ValueError, match=r"layer_norm: weight has shape \(4,\)"):
        F.layer_norm(x, 3, mg.ones(4))
    with pytest.raises(ValueError, match=r"batch_norm: expected an input of shape \(N, C, \.\.\.\)"):
        F.batch_norm(mg.zeros(4), None, None, training=True)

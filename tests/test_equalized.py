"""Equalized learning rate layers, pixel norm and minibatch stddev (notes §3.3, Karras et al. 2018).

* EqualizedLinear / EqualizedConv2d: stored weights ~ N(0, 1) / lr_mul, the effective
  weight is stored x gain / sqrt(fan_in) x lr_mul (gain sqrt(2): stored x sqrt(2 / fan_in)),
  and their gradients (first and second order) pass float64 central differences;
* PixelNorm: unit mean square over the channels at every pixel;
* MinibatchStdDev: equals a NumPy reference written from the paper's description,
  including batches smaller than the group size and a clear error for the rest.
"""
import math

import numpy as np
import pytest

import minigen as mg
import minigen.functional as F
from minigen import backend, nn
from minigen.testing import GradcheckError, gradcheck, gradgradcheck


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def with_params(layer, w, b):
    """Run ``layer`` with the tensors w, b in place of its stored weight and bias (for gradcheck)."""
    layer._parameters["weight"], layer._parameters["bias"] = w, b
    return layer


# ----------------------------------------------------------------------------
# equalized layers: initialisation and effective weight
# ----------------------------------------------------------------------------

def test_stored_weights_are_standard_normal_and_lr_mul_divides_them():
    gen = backend.Generator(0, "cpu")
    layer = nn.EqualizedLinear(400, 300, generator=gen)
    w = layer.weight.numpy()
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1.0) < 0.01
    slow = nn.EqualizedLinear(400, 300, lr_mul=0.01, bias_init=1.0, generator=backend.Generator(0, "cpu"))
    np.testing.assert_allclose(slow.weight.numpy(), w / 0.01, rtol=1e-6)
    # the effective weight and bias do not depend on lr_mul at initialisation
    np.testing.assert_allclose(slow.weight.numpy() * slow.weight_scale, w * layer.weight_scale, rtol=1e-6)
    np.testing.assert_allclose(slow.bias.numpy() * slow.lr_mul, np.ones(300), rtol=1e-6)
    conv = nn.EqualizedConv2d(64, 32, 3, generator=gen)
    assert abs(conv.weight.numpy().std() - 1.0) < 0.02
    assert np.all(conv.bias.numpy() == 0)


def test_equalized_linear_effective_weight_is_stored_times_he_constant(float64):
    layer = nn.EqualizedLinear(6, 4, generator=backend.Generator(1, "cpu"))
    layer.bias.data[...] = rand(4, seed=2)
    x = rand(5, 6, seed=3)
    w_eff = layer.weight.numpy() * math.sqrt(2.0 / 6)  # He constant, fan_in = 6
    expected = x @ w_eff.T + layer.bias.numpy()
    np.testing.assert_allclose(layer(mg.tensor(x)).numpy(), expected, rtol=1e-12)
    # gain 1 (a linear output layer) and a learning-rate multiplier
    layer = nn.EqualizedLinear(6, 4, gain=1.0, lr_mul=0.1, generator=backend.Generator(1, "cpu"))
    layer.bias.data[...] = rand(4, seed=2)
    expected = x @ (layer.weight.numpy() * 0.1 / math.sqrt(6)).T + 0.1 * layer.bias.numpy()
    np.testing.assert_allclose(layer(mg.tensor(x)).numpy(), expected, rtol=1e-12)


def _conv_reference(x, w, b, padding):
    """Direct cross-correlation with zero padding, stride 1, in NumPy loops."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, _, h, wd = xp.shape
    co, _, kh, kw = w.shape
    out = np.zeros((n, co, h - kh + 1, wd - kw + 1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            patch = xp[:, :, i:i + kh, j:j + kw]                   # (n, ci, kh, kw)
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return out + b[None, :, None, None]


def test_equalized_conv_effective_weight_is_stored_times_he_constant(float64):
    conv = nn.EqualizedConv2d(3, 5, 3, padding=1, generator=backend.Generator(4, "cpu"))
    conv.bias.data[...] = rand(5, seed=5)
    x = rand(2, 3, 6, 6, seed=6)
    w_eff = conv.weight.numpy() * math.sqrt(2.0 / (3 * 3 * 3))  # fan_in = C_in kh kw = 27
    expected = _conv_reference(x, w_eff, conv.bias.numpy(), padding=1)
    np.testing.assert_allclose(conv(mg.tensor(x)).numpy(), expected, rtol=1e-10, atol=1e-12)
    one = nn.EqualizedConv2d(4, 2, 1, gain=1.0, generator=backend.Generator(4, "cpu"))  # a toRGB layer
    x = rand(2, 4, 3, 3, seed=7)
    expected = _conv_reference(x, one.weight.numpy() / 2.0, np.zeros(2), padding=0)  # 1 / sqrt(4)
    np.testing.assert_allclose(one(mg.tensor(x)).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_equalized_layers_reject_bad_scales():
    with pytest.raises(ValueError, match="lr_mul"):
        nn.EqualizedLinear(2, 2, lr_mul=0.0)
    with pytest.raises(ValueError, match="gain"):
        nn.EqualizedConv2d(2, 2, 3, gain=-1.0)


def test_state_dict_keys_match_plain_layers():
    assert list(nn.EqualizedLinear(3, 2).state_dict()) == list(nn.Linear(3, 2).state_dict())
    assert list(nn.EqualizedConv2d(3, 2, 3).state_dict()) == list(nn.Conv2d(3, 2, 3).state_dict())
    assert list(nn.EqualizedConv2d(3, 2, 3, bias=False).state_dict()) == ["weight"]


# ----------------------------------------------------------------------------
# gradients (float64 central differences, first and second order)
# ----------------------------------------------------------------------------

def test_equalized_linear_gradcheck(float64):
    layer = nn.EqualizedLinear(4, 3, lr_mul=0.5, generator=backend.Generator(0, "cpu"))
    fn = lambda x, w, b: with_params(layer, w, b)(x)  # noqa: E731
    inputs = [rand(2, 4, seed=1), rand(3, 4, seed=2), rand(3, seed=3)]
    assert gradcheck(fn, inputs)
    assert gradgradcheck(lambda x, w, b: fn(x, w, b) ** 2, inputs)


def test_equalized_conv_gradcheck(float64):
    conv = nn.EqualizedConv2d(2, 3, 3, padding=1, lr_mul=2.0, generator=backend.Generator(0, "cpu"))
    fn = lambda x, w, b: with_params(conv, w, b)(x)  # noqa: E731
    inputs = [rand(2, 2, 4, 4, seed=1), rand(3, 2, 3, 3, seed=2), rand(3, seed=3)]
    assert gradcheck(fn, inputs)
    assert gradgradcheck(lambda x, w, b: F.leaky_relu(fn(x, w, b), 0.2) ** 2, inputs)


def test_gradcheck_sees_a_missing_scale(float64):
    # the check can fail: a layer that forgot its run-time scale in the weight gradient is caught
    class Unscaled(mg.Function):
        def forward(self, w):
            return w * 1.0

        def backward(self, gy):
            return gy / 0.7  # stands for a backward that drops a constant factor

    layer = nn.EqualizedLinear(4, 3, generator=backend.Generator(0, "cpu"))
    with pytest.raises(GradcheckError):
        gradcheck(lambda w: with_params(layer, Unscaled()(w), None)(mg.tensor(rand(2, 4))), [rand(3, 4)])


# ----------------------------------------------------------------------------
# pixel norm
# ----------------------------------------------------------------------------

def test_pixel_norm_gives_unit_mean_square_over_channels(float64):
    x = rand(3, 5, 4, 4) * np.exp(2 * rand(3, 1, 4, 4, seed=1))  # pixels of very different scales
    y = nn.PixelNorm()(mg.tensor(x)).numpy()
    ms = (x ** 2).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(y, x / np.sqrt(ms + 1e-8), rtol=1e-12)
    # mean square ms / (ms + eps): 1 up to eps / ms, even for pixels a hundred times smaller than others
    np.testing.assert_allclose((y ** 2).mean(axis=1), (ms / (ms + 1e-8))[:, 0], rtol=1e-12)
    np.testing.assert_allclose((y ** 2).mean(axis=1), 1.0, rtol=1e-3)
    # direction per pixel is kept: y is a positive multiple of x
    ratio = y / x
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), rtol=1e-10)
    z = nn.PixelNorm()(mg.tensor(rand(6, 8, seed=2))).numpy()  # latent vectors (B, C)
    np.testing.assert_allclose((z ** 2).mean(axis=1), 1.0, rtol=1e-6)


def test_pixel_norm_gradients(float64):
    # (input seed 5: with the checker's upstream equal to x itself, d<x, x / rms(x)>/dx is exactly 0)
    assert gradcheck(lambda x: nn.PixelNorm()(x), [rand(2, 3, 2, 2, seed=5)])
    assert gradgradcheck(lambda x: nn.PixelNorm()(x), [rand(2, 3, 2, 2, seed=5)])


# ----------------------------------------------------------------------------
# minibatch standard deviation
# ----------------------------------------------------------------------------

def _mbstd_reference(x, group_size):
    """Karras et al. 2018 §3 in NumPy loops: group g = {n : n mod M = g}, M = B / G."""
    B, C, H, W = x.shape
    G = min(group_size, B)
    M = B // G
    out = np.empty((B, C + 1, H, W))
    out[:, :C] = x
    for g in range(M):
        members = [n for n in range(B) if n % M == g]
        assert len(members) == G
        std = np.sqrt(x[members].var(axis=0) + 1e-8)  # population std over the group (+ eps), per feature and pixel
        for n in members:
            out[n, C] = std.mean()
    return out


def test_minibatch_stddev_matches_numpy_reference_on_a_hand_built_batch(float64):
    # 8 samples, 2 groups of 4: group 0 = samples 0, 2, 4, 6 holds four copies of one image
    # (std 0); group 1 = samples 1, 3, 5, 7 holds varied images
    base = rand(2, 3, 3, seed=1)
    x = np.stack([base if n % 2 == 0 else rand(2, 3, 3, seed=10 + n) for n in range(8)])
    y = nn.MinibatchStdDev(group_size=4)(mg.tensor(x)).numpy()
    assert y.shape == (8, 3, 3, 3)
    np.testing.assert_array_equal(y[:, :2], x)
    np.testing.assert_allclose(y[0::2, 2], 1e-4, rtol=1e-6)  # sqrt(0 + eps), eps = 1e-8
    np.testing.assert_allclose(y, _mbstd_reference(x, 4), rtol=1e-6, atol=1e-6)
    assert y[1, 2, 0, 0] > 0.5
    # a hand-computed case: one feature, one pixel, values 0, 2 in each pair -> std 1
    x = np.array([0.0, 5.0, 2.0, 7.0]).reshape(4, 1, 1, 1)
    y = nn.MinibatchStdDev(group_size=2)(mg.tensor(x)).numpy()
    np.testing.assert_allclose(y[:, 1].ravel(), [1.0, 1.0, 1.0, 1.0], rtol=1e-7)


@pytest.mark.parametrize("batch, group_size", [(12, 4), (3, 4), (2, 4), (6, 3), (1, 4)])
def test_minibatch_stddev_group_sizes(float64, batch, group_size):
    x = rand(batch, 2, 2, 2, seed=batch)
    y = nn.MinibatchStdDev(group_size=group_size)(mg.tensor(x)).numpy()
    np.testing.assert_allclose(y, _mbstd_reference(x, group_size), rtol=1e-6, atol=1e-6)


def test_minibatch_stddev_rejects_indivisible_batches():
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the group size min\\(4, 6\\) = 4"):
        nn.MinibatchStdDev(4)(mg.tensor(rand(6, 2, 2, 2)))
    with pytest.raises(ValueError, match="group_size"):
        nn.MinibatchStdDev(0)
    with pytest.raises(ValueError, match="\\(B, C, H, W\\)"):
        nn.MinibatchStdDev(4)(mg.tensor(rand(4, 2)))


def test_minibatch_stddev_gradients(float64):
    # it sits inside the discriminator, so the gradient penalty differentiates it twice
    assert gradcheck(lambda x: nn.MinibatchStdDev(2)(x), [rand(4, 2, 2, 2)])
    assert gradgradcheck(lambda x: nn.MinibatchStdDev(2)(x), [rand(4, 2, 2, 2)])

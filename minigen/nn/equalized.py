"""Layers of the Progressive GAN (and StyleGAN): equalized learning rate, pixel norm, minibatch stddev.

Notes §3.3 (Progressive GAN).  Karras, Aila, Laine & Lehtinen 2018, "Progressive
Growing of GANs for Improved Quality, Stability, and Variation", §4.1 (equalized
learning rate), §4.2 (pixelwise feature normalisation) and §3 (minibatch standard
deviation).  The learning-rate multiplier ``lr_mul`` is from Karras, Laine & Aila
2019, "A Style-Based Generator Architecture for GANs" (its mapping network).

Equalized learning rate
-----------------------
A layer stores its weight as  w ~ N(0, 1) / lr_mul  and multiplies it at *run
time* by the He constant:

    w_eff = w * c,      c = gain / sqrt(fan_in) * lr_mul,     b_eff = b * lr_mul

(fan_in = in_features for a linear layer, in_channels * kh * kw for a conv).
At initialisation w_eff ~ N(0, gain^2 / fan_in), He et al.'s initialisation.
What changes is the optimiser: Adam divides each step by a running RMS of the
gradient, so a step changes a stored weight by about lr whatever its scale, and
the *effective* weight by about lr * c.  With the scale inside the forward pass,
every layer's effective weights move at a speed proportional to their own
spread, so all layers learn at the same relative rate (Karras et al. 2018 §4.1).
``lr_mul`` < 1 slows one layer further (StyleGAN's mapping network: 0.01).

The bias is stored as ``bias_init / lr_mul`` so that b_eff = bias_init at the
start, the same convention as the weight.
"""
from __future__ import annotations

import math

from .. import backend
from .. import functional as F
from .layers import _check_sizes, _new_parameter, _pair
from .module import Module

__all__ = ["EqualizedLinear", "EqualizedConv2d", "PixelNorm", "MinibatchStdDev",
           "pixel_norm", "minibatch_stddev"]


def _check_scales(layer, lr_mul, gain):
    if not (lr_mul > 0 and math.isfinite(lr_mul)):
        raise ValueError(f"{layer}: lr_mul must be a positive number, got {lr_mul}")
    if not (gain > 0 and math.isfinite(gain)):
        raise ValueError(f"{layer}: gain must be a positive number, got {gain}")


def _init_equalized(weight, bias, lr_mul, bias_init, generator):
    """w ~ N(0, 1) / lr_mul, b = bias_init / lr_mul (stored values; see the module docstring)."""
    gen = generator if generator is not None else backend.default_generator(weight.device)
    w = gen.normal(weight.shape, dtype=weight.dtype)
    weight.data[...] = backend.to_device(w, weight.device) / lr_mul
    if bias is not None:
        bias.data[...] = bias_init / lr_mul


class EqualizedLinear(Module):
    """y = x (c W)^T + lr_mul b,   c = gain / sqrt(in_features) * lr_mul.

    x (..., in_features) -> y (..., out_features); stored W (out, in) ~ N(0, 1) / lr_mul,
    b (out,) = bias_init / lr_mul.  ``gain`` sqrt(2) suits (leaky) ReLU layers,
    1 a linear output layer.  state_dict keys: ``weight``, ``bias``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, lr_mul: float = 1.0,
                 gain: float = math.sqrt(2.0), bias_init: float = 0.0, generator=None, device=None, dtype=None):
        super().__init__()
        _check_scales("EqualizedLinear", lr_mul, gain)
        _check_sizes("EqualizedLinear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.lr_mul, self.gain = float(lr_mul), float(gain)
        self.weight = _new_parameter((self.out_features, self.in_features), device, dtype)
        self.register_parameter("bias", _new_parameter((self.out_features,), device, dtype) if bias else None)
        self.weight_scale = self.gain / math.sqrt(self.in_features) * self.lr_mul  # c, applied each forward
        _init_equalized(self.weight, self.bias, self.lr_mul, float(bias_init), generator)

    def forward(self, x):
        bias = None if self.bias is None else self.bias * self.lr_mul
        return F.linear(x, self.weight * self.weight_scale, bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, lr_mul={self.lr_mul:g}, gain={self.gain:.4g}")


class EqualizedConv2d(Module):
    """y = conv2d(x, c W) + lr_mul b,   c = gain / sqrt(in_channels * kh * kw) * lr_mul.

    x (N, C_in, H, W) -> y (N, C_out, H_out, W_out) with Conv2d's output size;
    stored W (C_out, C_in, kh, kw) ~ N(0, 1) / lr_mul, b (C_out,) = 0.
    ``padding`` is an int or a pair (zero padding).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 lr_mul: float = 1.0, gain: float = math.sqrt(2.0), generator=None, device=None, dtype=None):
        super().__init__()
        _check_scales("EqualizedConv2d", lr_mul, gain)
        _check_sizes("EqualizedConv2d", in_channels=in_channels, out_channels=out_channels,
                     kernel_size=kernel_size, stride=stride)
        _check_sizes("EqualizedConv2d", 0, padding=padding)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "EqualizedConv2d kernel_size")
        self.stride = _pair(stride, "EqualizedConv2d stride")
        self.padding = _pair(padding, "EqualizedConv2d padding")
        self.lr_mul, self.gain = float(lr_mul), float(gain)
        self.weight = _new_parameter((self.out_channels, self.in_channels) + self.kernel_size, device, dtype)
        self.register_parameter("bias", _new_parameter((self.out_channels,), device, dtype) if bias else None)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.weight_scale = self.gain / math.sqrt(fan_in) * self.lr_mul
        _init_equalized(self.weight, self.bias, self.lr_mul, 0.0, generator)

    def forward(self, x):
        bias = None if self.bias is None else self.bias * self.lr_mul
        return F.conv2d(x, self.weight * self.weight_scale, bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, lr_mul={self.lr_mul:g}, gain={self.gain:.4g}")


# ----------------------------------------------------------------------------
# pixel norm and minibatch standard deviation
# ----------------------------------------------------------------------------

def pixel_norm(x, eps=1e-8):
    """b_{x,y} = a_{x,y} / sqrt(mean_j (a^j_{x,y})^2 + eps)   (Karras et al. 2018 §4.2).

    Each pixel's feature vector is scaled to unit mean square over the channels
    (dim 1).  x (B, C) or (B, C, H, W) -> same shape.  No learned parameters.
    """
    return x / ((x * x).mean(dim=1, keepdim=True) + eps).sqrt()


class PixelNorm(Module):
    """``pixel_norm`` as a layer (used after every conv of the ProGAN generator and on z)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = float(eps)

    def forward(self, x):
        return pixel_norm(x, self.eps)

    def extra_repr(self):
        return f"eps={self.eps:g}"


def minibatch_stddev(x, group_size=4, eps=1e-8):
    """Append one feature map: the average standard deviation of the features over a group.

    Karras et al. 2018 §3: for each feature and each pixel, the standard deviation
    over the samples of a group; the average of these over features and pixels is
    one number per group, replicated into a constant (H, W) map and concatenated
    to every sample of that group as an extra channel.  A discriminator that sees
    this statistic can tell a batch of near-identical fakes from varied reals,
    which discourages mode collapse.

        G = min(group_size, B);  B must be divisible by G (else ValueError)
        sample n belongs to group n mod (B / G) (groups take every (B/G)-th sample,
            as in the paper's code, so G consecutive samples land in different groups)
        s_g = mean_{c,h,w} sqrt( mean_{i in g} (x_i - mean_{i in g} x_i)^2 + eps )

    (the variance divides by G, not G - 1).  x (B, C, H, W) -> (B, C + 1, H, W).
    """
    if x.ndim != 4:
        raise ValueError(f"minibatch_stddev: x must be (B, C, H, W), got shape {x.shape}")
    B, C, H, W = x.shape
    G = min(int(group_size), B)
    if G < 1 or B % G:
        raise ValueError(f"minibatch_stddev: batch size {B} is not divisible by the group size "
                         f"min({group_size}, {B}) = {G}")
    M = B // G
    y = x.reshape(G, M, C, H, W)                          # y[i, m] = x[i * M + m]: group m, member i
    y = y - y.mean(dim=0, keepdim=True)                   # deviations from the group mean
    std = ((y * y).mean(dim=0) + eps).sqrt()              # (M, C, H, W)
    s = std.mean(dim=(1, 2, 3), keepdim=True)             # (M, 1, 1, 1): one number per group
    s = F.broadcast_to(s.reshape(1, M, 1, 1, 1), (G, M, 1, H, W)).reshape(B, 1, H, W)
    return F.concat([x, s], dim=1)                        # (B, C + 1, H, W)


class MinibatchStdDev(Module):
    """``minibatch_stddev`` as a layer: (B, C, H, W) -> (B, C + 1, H, W)."""

    def __init__(self, group_size: int = 4, eps: float = 1e-8):
        super().__init__()
        if int(group_size) < 1:
            raise ValueError(f"MinibatchStdDev: group_size must be >= 1, got {group_size}")
        self.group_size, self.eps = int(group_size), float(eps)

    def forward(self, x):
        return minibatch_stddev(x, self.group_size, self.eps)

    def extra_repr(self):
        return f"group_size={self.group_size}"

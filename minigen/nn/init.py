"""Weight initialisation: fill a tensor in place from an explicit random generator.

Why the scale matters: a layer y = W x with fan_in inputs of unit variance has
Var(y_i) = fan_in * Var(W_ij).  Choosing Var(W) ~ 1/fan_in keeps activations
from growing or shrinking layer after layer.

* Glorot & Bengio (2010), "xavier": Var(W) = gain^2 * 2 / (fan_in + fan_out),
  a compromise between the forward (fan_in) and backward (fan_out) passes.
* He et al. (2015), "kaiming": Var(W) = gain^2 / fan, with gain = sqrt(2) for
  ReLU (it zeroes half the signal), sqrt(2 / (1 + a^2)) for leaky ReLU of slope a.

A uniform U(-b, b) has variance b^2/3, so the uniform versions use b = sqrt(3) * std.

Every function takes ``generator=None`` (then the tensor's device's default
generator, seeded by ``mg.manual_seed``), changes ``tensor.data`` without
recording a graph, and returns the tensor.  Names and defaults follow
``torch.nn.init``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend

__all__ = ["calculate_gain", "uniform_", "normal_", "zeros_", "ones_", "constant_",
           "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The factor by which ``nonlinearity`` shrinks a unit-variance signal's std, inverted.

    linear / conv / sigmoid: 1,  tanh: 5/3,  relu: sqrt(2),
    leaky_relu (slope ``param``, default 0.01): sqrt(2 / (1 + slope^2)),  selu: 3/4.
    """
    if nonlinearity in ("linear", "identity", "sigmoid", "conv1d", "conv2d", "conv3d",
                        "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"calculate_gain: negative slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1.0 + slope ** 2))
    if nonlinearity == "selu":
        return 0.75
    raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}")


def _fans(tensor):
    """(fan_in, fan_out) of a weight shaped (out, in, *kernel) like PyTorch's layers.

    For Linear (out, in): fan_in = in, fan_out = out.  For a conv (out, in/groups,
    kh, kw) both are multiplied by the kernel size kh*kw.  (ConvTranspose2d's
    weight is (in, out/groups, kh, kw), so its "fan_in" is out/groups*kh*kw;
    PyTorch does the same.)
    """
    if tensor.ndim < 2:
        raise ValueError(f"init: fan in/out need a weight with at least 2 dimensions, got shape {tensor.shape}")
    receptive = int(np.prod(tensor.shape[2:])) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fill(tensor, values):
    """Write freshly drawn ``values`` into the tensor, on its device."""
    tensor.data[...] = backend.to_device(values, tensor.device)
    return tensor


def _gen(generator, tensor):
    return generator if generator is not None else backend.default_generator(tensor.device)


def uniform_(tensor, a: float = 0.0, b: float = 1.0, generator=None):
    """Fill with samples of U(a, b)."""
    return _fill(tensor, _gen(generator, tensor).uniform(tensor.shape, a, b, dtype=tensor.dtype))


def normal_(tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    """Fill with samples of N(mean, std^2)."""
    return _fill(tensor, _gen(generator, tensor).normal(tensor.shape, mean, std, dtype=tensor.dtype))


def constant_(tensor, val: float):
    """Fill the tensor with ``val`` in place; returns it."""
    tensor.data[...] = val
    return tensor


def zeros_(tensor):
    """Fill the tensor with 0 in place; returns it."""
    return constant_(tensor, 0)


def ones_(tensor):
    """Fill the tensor with 1 in place; returns it."""
    return constant_(tensor, 1)


def xavier_uniform_(tensor, gain: float = 1.0, generator=None):
    """U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))   (Glorot & Bengio 2010)."""
    fan_in, fan_out = _fans(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain: float = 1.0, generator=None):
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def _kaiming_std(tensor, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator=None):
    """U(-b, b) with b = sqrt(3) * gain / sqrt(fan)   (He et al. 2015).

    PyTorch's Linear and Conv layers use a = sqrt(5), which gives b = 1/sqrt(fan_in).
    """
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator=None):
    """N(0, std^2) with std = gain / sqrt(fan)."""
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity), generator)

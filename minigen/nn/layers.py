"""Layers with weights (Linear, Conv2d, ConvTranspose2d, Embedding) and without
(activations, Dropout, Identity, Flatten, Unflatten, Upsample).

Constructors take PyTorch's arguments and defaults, plus ``device=None``,
``dtype=None`` (the defaults set in ``minigen.backend``) and ``generator=None``
(the device's default generator, seeded by ``mg.manual_seed``): the random
initial weights always come from an explicit stream, so a seed fixes a model.

Initialisation is PyTorch's default, so a freshly built layer has the same
distribution of weights in both libraries:

    weight ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bias   ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))

(fan_in = in_features for Linear, in_channels/groups * kh * kw for Conv2d.)
Each forward is one call of the matching op in ``minigen.functional``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from .. import functional as F
from . import init
from .module import Module, Parameter

__all__ = ["Linear", "Conv2d", "ConvTranspose2d", "Embedding", "Dropout", "Identity", "Flatten",
           "Unflatten", "Upsample", "ReLU", "LeakyReLU", "SiLU", "GELU", "Tanh", "Sigmoid", "Softplus"]


def _new_parameter(shape, device=None, dtype=None) -> Parameter:
    """A zero-filled parameter on ``device`` in ``dtype`` (defaults from the backend)."""
    xp = backend.get_array_module(device)
    dtype = np.dtype(dtype) if dtype is not None else backend.get_default_dtype()
    if dtype.kind != "f":
        raise TypeError(f"parameters must be floating, got dtype {dtype}")
    return Parameter(xp.zeros(tuple(shape), dtype=dtype))


def _pair(value, name):
    """An int or a pair of ints -> a pair of ints."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(int(v) for v in pair)


def _check_sizes(layer, minimum=1, **sizes):
    """Refuse a size (an int or a pair of ints) below ``minimum``, naming the layer and the argument.

    Called first in a layer's constructor: a zero kernel or width would otherwise
    surface as a ZeroDivisionError from the init's 1/sqrt(fan_in).
    """
    for name, value in sizes.items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, (int, float, np.integer, np.floating)) and v < minimum for v in values):
            raise ValueError(f"{layer}: {name} must be >= {minimum}, got {value!r}")


def _reset_pytorch_default(weight, bias, generator):
    """PyTorch's default init of Linear/Conv layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both."""
    init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        fan_in, _ = init._fans(weight)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(bias, -bound, bound, generator)


# ----------------------------------------------------------------------------
# layers with weights
# ----------------------------------------------------------------------------

class Linear(Module):
    """y = x W^T + b.   x (..., in_features) -> y (..., out_features);  W (out, in), b (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 generator=None):
        super().__init__()
        _check_sizes("Linear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = _new_parameter((out_features, in_features), device, dtype)
        self.register_parameter("bias", _new_parameter((out_features,), device, dtype) if bias else None)
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        """Redraw weight and bias from ``generator`` as PyTorch does: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        _reset_pytorch_default(self.weight, self.bias, generator)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D cross-correlation over NCHW images.

    x (N, C_in, H, W) -> y (N, C_out, H_out, W_out),
    H_out = floor((H + 2*padding - dilation*(kh - 1) - 1) / stride) + 1  (same for W).
    weight (C_out, C_in/groups, kh, kw), bias (C_out,).
    ``padding`` is an int, a pair, ``"valid"`` (0) or ``"same"`` (stride 1 only;
    an even kernel pads one more on the bottom/right, as PyTorch does).
    ``padding_mode`` is ``"zeros"``, ``"reflect"`` or ``"replicate"``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 generator=None):
        super().__init__()
        _check_sizes("Conv2d", in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                     stride=stride, dilation=dilation, groups=groups)
        if not isinstance(padding, str):
            _check_sizes("Conv2d", 0, padding=padding)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        if padding_mode not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"Conv2d: padding_mode must be 'zeros', 'reflect' or 'replicate', got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = _pair(kernel_size, "Conv2d kernel_size")
        self.stride = _pair(stride, "Conv2d stride")
        self.dilation = _pair(dilation, "Conv2d dilation")
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Conv2d: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("Conv2d: padding='same' needs stride 1")
            self.padding = padding
            totals = [d * (k - 1) if padding == "same" else 0 for d, k in zip(self.dilation, self.kernel_size)]
            # (left, right, top, bottom): F.pad's order, last dim first
            self._pad4 = (totals[1] // 2, totals[1] - totals[1] // 2, totals[0] // 2, totals[0] - totals[0] // 2)
        else:
            self.padding = _pair(padding, "Conv2d padding")
            ph, pw = self.padding
            self._pad4 = (pw, pw, ph, ph)
        self.weight = _new_parameter((out_channels, in_channels // groups) + self.kernel_size, device, dtype)
        self.register_parameter("bias", _new_parameter((out_channels,), device, dtype) if bias else None)
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        """Redraw weight and bias from ``generator`` as PyTorch does: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        _reset_pytorch_default(self.weight, self.bias, generator)

    def forward(self, x):
        left, right, top, bottom = self._pad4
        if self.padding_mode == "zeros" and left == right and top == bottom:
            padding = (top, left)  # symmetric zero padding: the conv op pads itself
        else:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._pad4, mode=mode)
            padding = 0
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=padding,
                        dilation=self.dilation, groups=self.groups)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding not in ((0, 0), "valid"):
            text += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text


class ConvTranspose2d(Module):
    """The transpose (gradient) of Conv2d: upsamples NCHW images.

    x (N, C_in, H, W) -> y (N, C_out, H_out, W_out),
    H_out = (H - 1)*stride - 2*padding + dilation*(kh - 1) + output_padding + 1.
    weight (C_in, C_out/groups, kh, kw) -- note in/out swapped relative to Conv2d --
    bias (C_out,).  The DCGAN generator of notes §3.3 is built from these.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros",
                 device=None, dtype=None, generator=None):
        super().__init__()
        _check_sizes("ConvTranspose2d", in_channels=in_channels, out_channels=out_channels,
                     kernel_size=kernel_size, stride=stride, dilation=dilation, groups=groups)
        _check_sizes("ConvTranspose2d", 0, padding=padding, output_padding=output_padding)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"ConvTranspose2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d: only padding_mode='zeros' exists, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = _pair(kernel_size, "ConvTranspose2d kernel_size")
        self.stride = _pair(stride, "ConvTranspose2d stride")
        self.padding = _pair(padding, "ConvTranspose2d padding")
        self.output_padding = _pair(output_padding, "ConvTranspose2d output_padding")
        self.dilation = _pair(dilation, "ConvTranspose2d dilation")
        self.padding_mode = padding_mode
        self.weight = _new_parameter((in_channels, out_channels // groups) + self.kernel_size, device, dtype)
        self.register_parameter("bias", _new_parameter((out_channels,), device, dtype) if bias else None)
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        """Redraw weight and bias from ``generator`` as PyTorch does: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        _reset_pytorch_default(self.weight, self.bias, generator)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                  output_padding=self.output_padding, groups=self.groups,
                                  dilation=self.dilation)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            text += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


class Embedding(Module):
    """A lookup table: y = weight[indices].

    indices (any shape, integers in [0, num_embeddings)) -> y (*indices.shape, embedding_dim);
    weight (num_embeddings, embedding_dim) ~ N(0, 1) as in PyTorch.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None, generator=None):
        super().__init__()
        _check_sizes("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.weight = _new_parameter((num_embeddings, embedding_dim), device, dtype)
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        """Redraw the (num_embeddings, embedding_dim) table from N(0, 1), from ``generator``."""
        init.normal_(self.weight, generator=generator)

    def forward(self, indices):
        return F.embedding(indices, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


# ----------------------------------------------------------------------------
# layers without weights
# ----------------------------------------------------------------------------

class Dropout(Module):
    """Training: zero each entry with probability p and scale the rest by 1/(1-p).  Eval: identity.

    ``generator`` draws the masks (default: the device's default generator).
    """

    def __init__(self, p: float = 0.5, generator=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)
        self.generator = generator

    def forward(self, x):
        return F.dropout(x, self.p, training=self.training, generator=self.generator)

    def extra_repr(self):
        return f"p={self.p}"


class Identity(Module):
    """y = x (arguments are accepted and ignored, as in PyTorch)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Flatten(Module):
    """Merge dims start_dim..end_dim: (N, C, H, W) -> (N, C*H*W) with the defaults."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split dim ``dim`` into ``unflattened_size``: Unflatten(1, (128, 7, 7)) maps (N, 6272) -> (N, 128, 7, 7)."""

    def __init__(self, dim: int, unflattened_size):
        super().__init__()
        self.dim, self.unflattened_size = int(dim), tuple(int(s) for s in unflattened_size)

    def forward(self, x):
        d = self.dim % x.ndim
        return F.reshape(x, x.shape[:d] + self.unflattened_size + x.shape[d + 1:])

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


class Upsample(Module):
    """Resize NCHW images by ``scale_factor`` (or to ``size``); ``mode`` 'nearest' or 'bilinear'."""

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest", align_corners=None):
        super().__init__()
        self.size, self.scale_factor, self.mode, self.align_corners = size, scale_factor, mode, align_corners

    def forward(self, x):
        return F.interpolate(x, size=self.size, scale_factor=self.scale_factor, mode=self.mode,
                             align_corners=self.align_corners)

    def extra_repr(self):
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, mode='{self.mode}'"


class ReLU(Module):
    """y = max(x, 0)."""

    def forward(self, x):
        return F.relu(x)


class LeakyReLU(Module):
    """y = x for x > 0, negative_slope * x otherwise (the DCGAN discriminator uses 0.2)."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class SiLU(Module):
    """y = x * sigmoid(x) (a.k.a. swish; the diffusion UNet's activation)."""

    def forward(self, x):
        return F.silu(x)


class GELU(Module):
    """y = x * Phi(x) (``approximate='tanh'`` for the tanh approximation)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate='{self.approximate}'"


class Tanh(Module):
    """y = tanh(x) elementwise; any shape."""

    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    """y = sigmoid(x) = 1 / (1 + e^-x) elementwise; any shape."""

    def forward(self, x):
        return F.sigmoid(x)


class Softplus(Module):
    """y = log(1 + exp(beta x)) / beta, linear above ``threshold``."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x):
        return F.softplus(x, beta=self.beta, threshold=self.threshold)

    def extra_repr(self):
        return f"beta={self.beta}, threshold={self.threshold}"

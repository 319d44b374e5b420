"""Normalisation layers: BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm.

Each normalises x to zero mean and unit variance over some axes, then applies a
learned per-channel (or per-feature) affine map:

    y = (x - mean) / sqrt(var + eps) * weight + bias        weight = 1, bias = 0 at init

BatchNorm (Ioffe & Szegedy 2015) pools over the batch, so in training it uses
the batch's statistics and keeps exponential running averages

    running_mean <- (1 - momentum) * running_mean + momentum * batch mean
    running_var  <- (1 - momentum) * running_var  + momentum * unbiased batch var

which ``eval()`` mode uses instead (notes §3.3: the DCGAN normalises with it).
``momentum=None`` makes the average cumulative (factor 1/num_batches_tracked).
GroupNorm and LayerNorm pool within each sample, so they behave the same in
training and evaluation (GroupNorm is the diffusion UNet's norm, notes §5.6).
The arithmetic is in ``minigen.functional.norm``.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..autograd import Tensor
from . import init
from .layers import _check_sizes, _new_parameter
from .module import Module

__all__ = ["BatchNorm1d", "BatchNorm2d", "GroupNorm", "LayerNorm"]


class _BatchNorm(Module):
    """Shared code of BatchNorm1d / BatchNorm2d; subclasses say which input ranks they take."""

    _ranks = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        _check_sizes(type(self).__name__, num_features=num_features)
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = _new_parameter((num_features,), device, dtype)
            self.bias = _new_parameter((num_features,), device, dtype)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            xp = backend.get_array_module(device)
            dt = np.dtype(dtype) if dtype is not None else backend.get_default_dtype()
            self.register_buffer("running_mean", Tensor(xp.zeros(num_features, dtype=dt)))
            self.register_buffer("running_var", Tensor(xp.ones(num_features, dtype=dt)))
            self.register_buffer("num_batches_tracked", Tensor(xp.zeros((), dtype=np.int64)))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)
        self.reset_parameters()

    def reset_running_stats(self):
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def forward(self, x):
        if x.ndim not in self._ranks or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}): expected input of rank "
                             f"{' or '.join(map(str, self._ranks))} with {self.num_features} channels "
                             f"in dim 1, got shape {x.shape}")
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            factor = 1.0 / float(self.num_batches_tracked.item()) if self.momentum is None else self.momentum
        # Batch statistics in training, and always when no running statistics are kept.
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=use_batch_stats, momentum=factor, eps=self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm of features: x (N, C) or (N, C, L), statistics per channel C."""

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm of images: x (N, C, H, W), statistics per channel over N, H, W."""

    _ranks = (4,)


class GroupNorm(Module):
    """Normalise each sample over groups of num_channels/num_groups channels (and all positions).

    x (N, C, *) -> same shape;  weight, bias (C,).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        _check_sizes("GroupNorm", num_groups=num_groups, num_channels=num_channels)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.affine = int(num_groups), int(num_channels), eps, affine
        if affine:
            self.weight = init.ones_(_new_parameter((num_channels,), device, dtype))
            self.bias = _new_parameter((num_channels,), device, dtype)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class LayerNorm(Module):
    """Normalise each sample over its trailing ``normalized_shape`` dims.

    x (*, *normalized_shape) -> same shape;  weight, bias (normalized_shape).
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else normalized_shape
        self.normalized_shape = tuple(int(s) for s in shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        if elementwise_affine:
            self.weight = init.ones_(_new_parameter(self.normalized_shape, device, dtype))
        else:
            self.register_parameter("weight", None)
        if elementwise_affine and bias:
            self.bias = _new_parameter(self.normalized_shape, device, dtype)
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"

"""Ops that move values around without arithmetic: reshape, transpose, indexing ...

Their backwards are other shape ops: reshape's is a reshape back, permute's the
inverse permutation, broadcast_to's is sum_to and sum_to's is broadcast_to,
getitem's scatters the gradient into zeros (adding where an index repeats).
"""
from __future__ import annotations

import numpy as np

from ..autograd import Function, Tensor
from .. import backend

__all__ = [
    "reshape", "flatten", "unsqueeze", "squeeze", "transpose", "permute",
    "broadcast_to", "sum_to", "getitem", "astype", "to_device",
]


def _xp(a):
    return backend.xp_of(a)


# ----------------------------------------------------------------------------
# reshapes
# ----------------------------------------------------------------------------

class Reshape(Function):
    """y = x viewed with another shape (same number of elements)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.x_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view a tensor of shape {x.shape} "
                             f"({x.size} elements) as shape {self.shape}") from None

    def backward(self, gy):
        return reshape(gy, self.x_shape)


def reshape(x, shape):
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if x.shape == shape:
        return x
    return Reshape(shape)(x)


def flatten(x, start_dim=0, end_dim=-1):
    """Merge dims ``start_dim..end_dim`` into one (``flatten(x, 1)`` for (B, ...) -> (B, D))."""
    nd = x.ndim
    s, e = start_dim % max(nd, 1), end_dim % max(nd, 1)
    shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
    return reshape(x, shape)


def unsqueeze(x, dim):
    """Insert a dimension of size 1 at ``dim``."""
    dim = dim % (x.ndim + 1)
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


def squeeze(x, dim=None):
    """Drop dimensions of size 1 (all of them, or only ``dim``)."""
    if dim is None:
        shape = tuple(n for n in x.shape if n != 1)
    else:
        dim = dim % x.ndim
        shape = x.shape[:dim] + x.shape[dim + 1:] if x.shape[dim] == 1 else x.shape
    return reshape(x, shape)


class Permute(Function):
    """y = x with its axes reordered; backward applies the inverse order."""

    def __init__(self, axes):
        self.axes = tuple(axes)

    def forward(self, x):
        if sorted(a % x.ndim for a in self.axes) != list(range(x.ndim)):
            raise ValueError(f"permute: {self.axes} is not a permutation of the {x.ndim} dims "
                             f"of a tensor of shape {x.shape}")
        return x.transpose(self.axes)

    def backward(self, gy):
        inverse = tuple(np.argsort([a % gy.ndim for a in self.axes]))
        return permute(gy, inverse)


def permute(x, axes):
    return Permute(axes)(x)


def transpose(x, dim0=None, dim1=None):
    """Swap two dims (``transpose(x, 1, 2)``); with no dims, reverse them all."""
    if dim0 is None and dim1 is None:
        return permute(x, tuple(reversed(range(x.ndim))))
    axes = list(range(x.ndim))
    axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
    return permute(x, axes)


# ----------------------------------------------------------------------------
# broadcasting and its adjoint
# ----------------------------------------------------------------------------

class BroadcastTo(Function):
    """y = x repeated along broadcast dims;  dx = sum_to(gy, x.shape)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.x_shape = x.shape
        try:
            return _xp(x).broadcast_to(x, self.shape)
        except ValueError:
            raise ValueError(f"broadcast_to: shape {x.shape} cannot broadcast to {self.shape}") from None

    def backward(self, gy):
        return sum_to(gy, self.x_shape)


class SumTo(Function):
    """y = gy summed over the dims that broadcasting added or stretched.

    The adjoint of broadcast_to: leading extra dims are summed away and dims where
    ``shape`` has 1 are summed with keepdims.  The engine calls this once per
    broadcast input, so no other op handles broadcasting.
    """

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.x_shape = x.shape
        lead = x.ndim - len(self.shape)
        if lead < 0:
            raise ValueError(f"sum_to: cannot sum shape {x.shape} to the larger shape {self.shape}")
        axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(self.shape)
                                          if n == 1 and x.shape[lead + i] != 1)
        y = x.sum(axis=axes, keepdims=True) if axes else x
        if lead:
            y = y.reshape(self.shape)
        if y.shape != self.shape:
            raise ValueError(f"sum_to: shape {x.shape} does not broadcast from {self.shape}")
        return y

    def backward(self, gy):
        return broadcast_to(gy, self.x_shape)


def broadcast_to(x, shape):
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return BroadcastTo(shape)(x)


def sum_to(x, shape):
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return SumTo(shape)(x)


# ----------------------------------------------------------------------------
# indexing
# ----------------------------------------------------------------------------

def _index_arrays(index):
    """Replace Tensors inside an index by their arrays."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if isinstance(index, list):
        return np.asarray(index)
    return index


def _is_basic(index):
    """True for indices made only of ints, slices, None and Ellipsis (views, no repeats)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)


class GetItem(Function):
    """y = x[index] (slices, integer arrays, boolean masks)."""

    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.x_shape = x.shape
        try:
            return x[self.index]
        except IndexError as exc:
            raise IndexError(f"getitem: {exc} (tensor of shape {x.shape})") from None

    def backward(self, gy):
        return GetItemGrad(self.index, self.x_shape)(gy)


class GetItemGrad(Function):
    """The adjoint of getitem: zeros of ``x_shape`` with ``gy`` added at ``index``.

    ``xp.add.at`` is unbuffered, so an index that picks the same element twice
    adds both gradients (a plain ``gx[index] += gy`` would keep only one).
    """

    def __init__(self, index, x_shape):
        self.index, self.x_shape = index, x_shape

    def forward(self, gy):
        xp = _xp(gy)
        gx = xp.zeros(self.x_shape, dtype=gy.dtype)
        if _is_basic(self.index):
            gx[self.index] = gy  # basic indices never repeat an element
        elif xp is np:
            np.add.at(gx, self.index, gy)
        else:
            xp.add.at(gx, self.index, gy)
        return gx

    def backward(self, ggx):
        return getitem(ggx, self.index)


def getitem(x, index):
    return GetItem(_index_arrays(index))(x)


# ----------------------------------------------------------------------------
# dtype and device moves
# ----------------------------------------------------------------------------

class AsType(Function):
    """y = x converted to another floating dtype; the gradient converts back."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def forward(self, x):
        self.x_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy):
        return astype(gy, self.x_dtype)

    # the inputs legitimately differ in dtype from the output, nothing to check


class ToDevice(Function):
    """y = x copied to another device; the gradient is copied back."""

    def __init__(self, device):
        self.device = backend.check_device(device)

    def forward(self, x):
        self.x_device = backend.device_of(x)
        return backend.to_device(x, self.device)

    def backward(self, gy):
        return to_device(gy, self.x_device)


def astype(x, dtype):
    if x.dtype == np.dtype(dtype):
        return x
    return AsType(dtype)(x)


def to_device(x, device):
    if x.device == backend.check_device(device):
        return x
    return ToDevice(device)(x)

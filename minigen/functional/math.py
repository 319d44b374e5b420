"""Elementwise arithmetic and functions, activations and reductions.

Every op is a ``Function`` (forward on arrays, backward in minigen ops) and a
lowercase wrapper.  Broadcasting in binary ops is undone by the engine, so a
backward here returns gradients in the *output's* shape and never sums itself.
Backwards skip work for inputs that do not require grad
(``self.inputs[i].requires_grad``).
"""
from __future__ import annotations

import numpy as np

from ..autograd import Function, Tensor
from .. import backend

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt",
    "sum", "mean",
]


def _xp(a):
    return backend.xp_of(a)


def _axes(dim, ndim):
    """Normalise ``dim`` (None, int or tuple) to a tuple of non-negative axes."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = []
    for d in dims:
        if not -ndim <= d < max(ndim, 1):
            raise IndexError(f"dimension {d} is out of range for a tensor with {ndim} dimensions")
        out.append(d % max(ndim, 1))
    return tuple(sorted(set(out)))


def _keepdim_shape(shape, axes):
    """``shape`` with every reduced axis set to 1 (so a gradient can broadcast back)."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


# ----------------------------------------------------------------------------
# arithmetic
# ----------------------------------------------------------------------------

class Add(Function):
    """y = a + b."""

    def forward(self, a, b):
        return a + b

    def backward(self, gy):
        return gy, gy


class Sub(Function):
    """y = a - b."""

    def forward(self, a, b):
        return a - b

    def backward(self, gy):
        return gy, (-gy if self.inputs[1].requires_grad else None)


class Mul(Function):
    """y = a * b;  da = gy * b,  db = gy * a."""

    def forward(self, a, b):
        return a * b

    def backward(self, gy):
        a, b = self.inputs
        return (gy * b if a.requires_grad else None,
                gy * a if b.requires_grad else None)


class Div(Function):
    """y = a / b;  da = gy / b,  db = -gy * a / b^2."""

    def forward(self, a, b):
        return a / b

    def backward(self, gy):
        a, b = self.inputs
        ga = gy / b if a.requires_grad else None
        gb = -gy * a / (b * b) if b.requires_grad else None
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class PowConst(Function):
    """y = x ** c for a constant exponent c;  dx = gy * c * x^(c-1)."""

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        if self.c == 2:
            return x * x  # cheaper than a generic power
        return x ** x.dtype.type(self.c)

    def backward(self, gy):
        (x,) = self.inputs
        c = self.c
        if c == 2:
            return gy * (x * 2.0)
        return gy * (c * pow(x, c - 1))


class Pow(Function):
    """y = a ** b with both tensors;  da = gy b a^(b-1),  db = gy y log(a)."""

    def forward(self, a, b):
        return a ** b

    def backward(self, gy):
        a, b = self.inputs
        ga = gy * b * a ** (b - 1.0) if a.requires_grad else None
        gb = gy * self.output() * log(a) if b.requires_grad else None
        return ga, gb


def add(a, b):
    return Add()(a, b)


def sub(a, b):
    return Sub()(a, b)


def mul(a, b):
    return Mul()(a, b)


def div(a, b):
    return Div()(a, b)


def neg(x):
    return Neg()(x)


def pow(x, exponent):  # noqa: A001 (PyTorch's name)
    """``x ** exponent``; a Python-number exponent is a constant (no gradient)."""
    if isinstance(exponent, (int, float, np.number)) and isinstance(x, Tensor):
        return PowConst(float(exponent) if not float(exponent).is_integer() else int(exponent))(x)
    return Pow()(x, exponent)


# ----------------------------------------------------------------------------
# elementwise functions
# ----------------------------------------------------------------------------

class Exp(Function):
    """y = e^x;  dx = gy * y."""

    def forward(self, x):
        return _xp(x).exp(x)

    def backward(self, gy):
        return gy * self.output()


class Log(Function):
    """y = log x;  dx = gy / x."""

    def forward(self, x):
        return _xp(x).log(x)

    def backward(self, gy):
        return gy / self.inputs[0]


class Sqrt(Function):
    """y = sqrt(x);  dx = gy / (2 y)."""

    def forward(self, x):
        return _xp(x).sqrt(x)

    def backward(self, gy):
        return gy / (self.output() * 2.0)


def exp(x):
    return Exp()(x)


def log(x):
    return Log()(x)


def sqrt(x):
    return Sqrt()(x)


# ----------------------------------------------------------------------------
# reductions
# ----------------------------------------------------------------------------

class Sum(Function):
    """y = sum of x over ``dim``;  dx = gy broadcast back to x's shape."""

    def __init__(self, dim, keepdim):
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        self.axes = _axes(self.dim, x.ndim)
        self.x_shape = x.shape
        return x.sum(axis=self.axes, keepdims=self.keepdim)

    def backward(self, gy):
        if not self.keepdim:
            gy = gy.reshape(_keepdim_shape(self.x_shape, self.axes))
        return gy.broadcast_to(self.x_shape)


class Mean(Function):
    """y = mean of x over ``dim``;  dx = gy / n broadcast back."""

    def __init__(self, dim, keepdim):
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        self.axes = _axes(self.dim, x.ndim)
        self.x_shape = x.shape
        self.n = int(np.prod([x.shape[a] for a in self.axes])) if self.axes else 1
        return x.mean(axis=self.axes, keepdims=self.keepdim)

    def backward(self, gy):
        if not self.keepdim:
            gy = gy.reshape(_keepdim_shape(self.x_shape, self.axes))
        return gy.broadcast_to(self.x_shape) * (1.0 / self.n)


def sum(x, dim=None, keepdim=False):  # noqa: A001 (PyTorch's name)
    return Sum(dim, keepdim)(x)


def mean(x, dim=None, keepdim=False):
    return Mean(dim, keepdim)(x)

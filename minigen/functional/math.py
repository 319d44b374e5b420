"""Elementwise arithmetic and functions, activations and reductions.

Every op is a ``Function`` (forward on arrays, backward in minigen ops) and a
lowercase wrapper.  Broadcasting in binary ops is undone by the engine, so a
backward here returns gradients in the *output's* shape and never sums itself.
Backwards skip work for inputs that do not require grad
(``self.inputs[i].requires_grad``).
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Function, Tensor, is_grad_enabled
from .. import backend

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt",
    "abs", "tanh", "sigmoid",
    "relu", "softplus",
    "where",
    "sum", "mean", "logsumexp", "softmax", "log_softmax",
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


class Abs(Function):
    """y = |x|;  dx = gy * sign(x)  (0 at x = 0, as in PyTorch)."""

    def forward(self, x):
        return _xp(x).abs(x)

    def backward(self, gy):
        # sign(x) is a constant: the second derivative of |x| is 0 away from the kink.
        return gy * Tensor(_xp(gy.data).sign(self.inputs[0].data))


class Tanh(Function):
    """y = tanh x;  dx = gy * (1 - y^2)."""

    def forward(self, x):
        return _xp(x).tanh(x)

    def backward(self, gy):
        y = self.output()
        return gy * (1.0 - y * y)


def _exp_cap(dtype):
    """The largest whole number c with e^c finite in ``dtype`` (11, 88, 709 for float16/32/64)."""
    return math.floor(math.log(float(np.finfo(dtype).max)))


def _sigmoid_array(x):
    """sigma(x) = 1 / (1 + e^-x) on a raw array, accurate in both tails, no overflow."""
    xp = _xp(x)
    # Clamping x at -c (e^c the largest finite power) keeps e^-x finite: no overflow.  Below
    # -c sigma(x) is under the smallest normal number, so the clamp changes only denormals.
    # Neither tail cancels (1 + tiny, 1 + big), so both keep full relative precision.
    e = xp.clip(x, -_exp_cap(x.dtype), xp.inf)
    xp.negative(e, out=e)
    xp.exp(e, out=e)
    e += 1
    return xp.divide(1, e, out=e)


class Sigmoid(Function):
    """y = sigma(x) = 1 / (1 + e^-x);  dx = gy * y (1 - y).  (notes: logistic output units)"""

    def forward(self, x):
        return _sigmoid_array(x)

    def backward(self, gy):
        y = self.output()
        return gy * (y * (1.0 - y))


def exp(x):
    return Exp()(x)


def log(x):
    return Log()(x)


def sqrt(x):
    return Sqrt()(x)


def abs(x):  # noqa: A001 (PyTorch's name)
    return Abs()(x)


def tanh(x):
    return Tanh()(x)


def sigmoid(x):
    return Sigmoid()(x)


# ----------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------

class ReLU(Function):
    """y = max(x, 0);  dx = gy * [x > 0]  (0 at the kink x = 0, as in PyTorch).

    The mask is a constant in x's dtype, so a second backward is zero w.r.t. x
    (right: relu is piecewise linear) and linear in gy (also right).
    """

    def forward(self, x):
        xp = _xp(x)
        # clip with both bounds takes NumPy's vectorised loop; maximum(x, 0) is ~3x slower.
        return xp.clip(x, 0, xp.inf)

    def backward(self, gy):
        y = self.output().data
        mask = (y > 0).astype(y.dtype)  # y > 0 exactly where x > 0
        return gy * Tensor(mask)


def relu(x):
    return ReLU()(x)


class Softplus(Function):
    """y = (1/beta) log(1 + e^(beta x)), and y = x where beta x > threshold (PyTorch's rule).

    dx = gy * sigma(beta x)  (gy where beta x > threshold).  Shapes: any -> same.
    """

    def __init__(self, beta, threshold):
        self.beta, self.threshold = float(beta), float(threshold)

    def forward(self, x):
        xp = _xp(x)
        z = x * self.beta if self.beta != 1.0 else x
        # log(1 + e^z) = max(z, 0) + log1p(e^-|z|): the exponent is never positive, so
        # e^... cannot overflow, and log1p keeps the small tail exact.
        y = xp.abs(z)
        xp.negative(y, out=y)
        xp.exp(y, out=y)
        xp.log1p(y, out=y)
        y += xp.clip(z, 0, xp.inf)
        if self.beta != 1.0:
            y *= 1.0 / self.beta
        self.over = z > self.threshold
        xp.copyto(y, x, where=self.over)  # the linear regime, exactly x
        return y

    def backward(self, gy):
        x = self.inputs[0]
        s = sigmoid(x * self.beta if self.beta != 1.0 else x)
        return gy * where(self.over, 1.0, s)


def softplus(x, beta=1.0, threshold=20.0):
    return Softplus(beta, threshold)(x)


# ----------------------------------------------------------------------------
# selection: where, clip, maximum, minimum
# ----------------------------------------------------------------------------

class Where(Function):
    """y = a where cond else b (cond a constant boolean array; all three broadcast).

    da = gy where cond else 0,  db = gy where not cond else 0.
    """

    def __init__(self, cond):
        self.cond = cond

    def forward(self, a, b):
        if type(self.cond) is not type(a):
            raise RuntimeError(f"where: the condition is on {backend.device_of(self.cond)} but the "
                               f"values are on {backend.device_of(a)}")
        try:
            return _xp(a).where(self.cond, a, b)
        except ValueError:
            raise ValueError(f"where: shapes {self.cond.shape} (condition), {a.shape} and {b.shape} "
                             "do not broadcast together") from None

    def backward(self, gy):
        a, b = self.inputs
        ga = where(self.cond, gy, 0.0) if a.requires_grad else None
        gb = where(self.cond, 0.0, gy) if b.requires_grad else None
        return ga, gb


def where(condition, input, other):  # noqa: A002 (PyTorch's names)
    """``input`` where ``condition`` holds, else ``other`` (either may be a Python number)."""
    cond = condition.data if isinstance(condition, Tensor) else condition
    ref = input if isinstance(input, Tensor) else other
    if not isinstance(ref, Tensor):
        raise TypeError("where: at least one of input and other must be a Tensor")
    if not hasattr(cond, "dtype"):
        cond = _xp(ref.data).asarray(cond)
    if cond.dtype != np.bool_:
        raise TypeError(f"where: condition must be boolean, got dtype {cond.dtype} "
                        "(compare first, e.g. where(x > 0, x, 0))")
    return Where(cond)(input, other)


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


def _finite_max(x, axes):
    """Max over ``axes`` (keepdims), with infinite maxima replaced by 0.

    A row of all -inf (everything masked) would give -inf - (-inf) = nan when the
    max is subtracted; shifting such rows by 0 instead gives exp(-inf) = 0 and
    logsumexp = -inf, the right answer.
    """
    xp = _xp(x)
    m = x.max(axis=axes, keepdims=True)
    return xp.where(xp.isfinite(m), m, 0)


class LogSumExp(Function):
    """y = log sum_i e^(x_i) over ``dim``;  dx = gy * e^(x - y)  (= gy * softmax(x)).

    Shapes: x (...) -> y with ``dim`` removed (kept as 1 with keepdim).
    """

    def __init__(self, dim, keepdim):
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        xp = _xp(x)
        self.axes = _axes(self.dim, x.ndim)
        self.x_shape = x.shape
        m = _finite_max(x, self.axes)
        # subtracting the max makes every exponent <= 0: no overflow, and the largest
        # term is exactly 1, so the sum cannot underflow to 0 either.
        e = x - m
        xp.exp(e, out=e)
        with np.errstate(divide="ignore"):  # an all -inf row: log(0) = -inf is the answer
            y = xp.log(e.sum(axis=self.axes, keepdims=True))
        y += m
        return y if self.keepdim else y.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, gy):
        x, y = self.inputs[0], self.output()
        if not self.keepdim:
            keep = _keepdim_shape(self.x_shape, self.axes)
            gy, y = gy.reshape(keep), y.reshape(keep)
        return gy * exp(x - y)


def logsumexp(x, dim=None, keepdim=False):
    """log sum exp over ``dim`` (all dims when None), computed with the max subtracted."""
    return LogSumExp(dim, keepdim)(x)


def _softmax_axis(dim, ndim):
    """The single axis of a softmax (a 0-d tensor has none: its softmax is 1)."""
    if dim is None or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"softmax/log_softmax: dim must be an int, got {dim!r}")
    return () if ndim == 0 else _axes(int(dim), ndim)


class Softmax(Function):
    """y_i = e^(x_i) / sum_j e^(x_j) along ``dim``;  dx = y * (gy - sum(gy * y)).

    Shapes: any -> same.
    """

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        xp = _xp(x)
        self.axes = _softmax_axis(self.dim, x.ndim)
        y = x - x.max(axis=self.axes, keepdims=True)  # exponents <= 0: e^... cannot overflow
        xp.exp(y, out=y)
        y /= y.sum(axis=self.axes, keepdims=True)
        return y

    def backward(self, gy):
        y = self.output()
        return y * (gy - sum(gy * y, self.axes, keepdim=True))


class LogSoftmax(Function):
    """y = x - logsumexp(x) along ``dim``;  dx = gy - e^y * sum(gy).

    Shapes: any -> same.  Use it (not log(softmax)) for log-probabilities.
    """

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        xp = _xp(x)
        self.axes = _softmax_axis(self.dim, x.ndim)
        y = x - x.max(axis=self.axes, keepdims=True)  # shift by the max: exponents <= 0
        lse = xp.log(xp.exp(y).sum(axis=self.axes, keepdims=True))
        y -= lse
        return y

    def backward(self, gy):
        y = self.output()
        return gy - exp(y) * sum(gy, self.axes, keepdim=True)


def softmax(x, dim=-1):
    return Softmax(dim)(x)


def log_softmax(x, dim=-1):
    return LogSoftmax(dim)(x)

"""Elementwise arithmetic and functions, activations, selection, reductions, softmax, dropout.

Every op is a ``Function`` (forward on arrays, backward in minigen ops) and a
lowercase wrapper.  Broadcasting in binary ops is undone by the engine, so a
backward here returns gradients in the *output's* shape and never sums itself.
Backwards skip work for inputs that do not require grad
(``self.inputs[i].requires_grad``).

In order: arithmetic (add ... pow); elementwise functions (exp, expm1, log, sqrt, abs,
tanh, sigmoid, erf); activations (relu, leaky_relu, silu, gelu, softplus,
log_sigmoid); selection (where, clip/clamp, maximum, minimum); reductions (sum,
mean, var, max, min, logsumexp); softmax and log_softmax; dropout.

Three habits run through the file:
* Numerical care: sigmoid, softplus, log_sigmoid, logsumexp and the softmaxes are
  written so that no exponent can overflow; the line that does it is commented.
* Piecewise-linear ops (relu, leaky_relu, abs, clip, maximum, max ...) multiply
  gy by a constant 0/1 mask in the input's dtype: their second derivative is 0
  w.r.t. x and the backward stays linear (differentiable) in gy.
* Smooth activations used in hot loops (silu, gelu): the backward reads as the
  formula, in minigen ops, which is what runs when the backward is recorded
  (``create_graph=True``) so it can be differentiated again.  A plain backward
  computes the same slope on arrays in one named helper below the class
  (``_silu_slope_fused``, ``_gelu_slope_fused``); a test holds the two equal.
  Forward code uses in-place ufuncs on fresh temporaries and Python-number
  constants, so float32 stays float32 and no pass is wasted.
* The longest in-place chains (silu, tanh gelu, and Adam in optim.py) run through
  ``split_elementwise``: on large NumPy arrays, half of the chain runs on a pool
  thread (ufuncs release the GIL), with results identical bit for bit.
"""
from __future__ import annotations

import builtins  # this module defines sum, max, min, abs, pow: the builtins stay reachable
import math
import os

import numpy as np

from ..autograd import Function, Tensor, is_grad_enabled
from .. import backend
from ..backend import xp_of

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "exp", "expm1", "log", "sqrt",
    "abs", "tanh", "sigmoid", "erf",
    "relu", "leaky_relu", "silu", "gelu", "softplus", "log_sigmoid", "logsigmoid",
    "where", "clip", "clamp", "maximum", "minimum",
    "sum", "mean", "var", "max", "min", "logsumexp", "softmax", "log_softmax",
    "dropout",
]


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_K = math.sqrt(2.0 / math.pi)    # the tanh approximation of GELU:
_GELU_C = 0.044715                    # Phi(x) ~ (1 + tanh(K (x + C x^3))) / 2


def _array(a):
    """``a`` as an array.  NumPy hands 0-d results back as scalars, which in-place
    code (``out=``) and ``Tensor`` cannot take; arrays pass through uncopied."""
    return xp_of(a).asarray(a)


def _const(a):
    """A constant Tensor (no gradient) around an array computed in a backward."""
    return Tensor(_array(a))


# ----------------------------------------------------------------------------
# two threads for long in-place elementwise chains (NumPy arrays only)
# ----------------------------------------------------------------------------
# NumPy runs a ufunc on one core but releases the GIL inside it, so a chain of in-place
# ufuncs over large arrays can run on two halves at once: the second half on a pool
# thread, the first here.  Elementwise arithmetic does not depend on where an array is
# cut, so the result is bit for bit that of the one-thread chain.

SPLIT_MIN_ELEMENTS = 1 << 17    # below this, handing half to a thread costs more than it saves
_split_pool = None              # (pid, ThreadPoolExecutor): a forked child makes its own
split_calls = 0                 # chains that ran on two threads (tests look at it)
_CPUS = os.cpu_count() or 1     # asked once: os.cpu_count() takes ~40 us, and this is asked per op


def elementwise_threads() -> int:
    """How many threads ``split_elementwise`` uses: $MINIGEN_ELEMENTWISE_THREADS when set (1 or 2),
    otherwise 2 exactly when the convolutions split their batch too (``parallel.batch_threads``:
    two BLAS threads configured and OpenBLAS's idle spin limited).  With OpenBLAS's threads
    spinning for ~0.1 s after each product the split made W1, W3 and W5 2-6% slower; with the
    limit it makes them 3-10% faster (benchmarks/README.md)."""
    try:
        n = int(os.environ.get("MINIGEN_ELEMENTWISE_THREADS") or 0)
    except ValueError:
        n = 0
    if n == 0:
        from .parallel import batch_threads
        n = batch_threads()
    return 2 if n >= 2 and _CPUS >= 2 else 1


def _pool():
    global _split_pool
    if _split_pool is None or _split_pool[0] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor
        _split_pool = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="minigen-split"))
    return _split_pool[1]


def split_elementwise(fn, *arrays):
    """``fn(*arrays)`` where fn is an elementwise chain writing only into ``arrays`` (in place).

    With NumPy arrays that are all C-contiguous, of one size >= SPLIT_MIN_ELEMENTS, and two
    threads allowed (``elementwise_threads``), fn runs on the second halves of the flattened
    arrays on a pool thread while this thread runs it on the first halves.  Otherwise (CuPy,
    small or strided arrays) it is just ``fn(*arrays)``.  ``None`` entries pass through.
    """
    global split_calls
    present = [a for a in arrays if a is not None]
    n = present[0].size
    if (n < SPLIT_MIN_ELEMENTS or elementwise_threads() < 2
            or not all(type(a) is np.ndarray and a.size == n and a.flags.c_contiguous for a in present)):
        fn(*arrays)
        return
    h = n // 2
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    second = _pool().submit(fn, *[None if a is None else a[h:] for a in flat])
    try:
        fn(*[None if a is None else a[:h] for a in flat])
    finally:
        second.result()
    split_calls += 1


BINARY_SPLIT_MIN = 1 << 20      # entries of a result: below, the handoff costs more than half of one pass


def split_halves(run, n: int) -> None:
    """run(0, h) here and run(h, n) on the pool thread at once, h = n // 2 (run writes only into
    its own range of any shared output)."""
    h = n // 2
    second = _pool().submit(run, h, n)
    try:
        run(0, h)
    finally:
        second.result()


def halves_worthwhile(shape, arrays) -> bool:
    """Whether a result of ``shape`` built from ``arrays`` is worth ``split_halves``: all NumPy
    arrays of one float dtype, two threads allowed, at least BINARY_SPLIT_MIN entries, a first
    axis to cut."""
    return (len(shape) > 0 and shape[0] >= 2 and math.prod(shape) >= BINARY_SPLIT_MIN
            and all(type(x) is np.ndarray and x.dtype == arrays[0].dtype for x in arrays)
            and arrays[0].dtype.kind == "f" and elementwise_threads() >= 2)


def _split_binary(ufunc, a, b):
    """ufunc(a, b) with broadcasting, computed in two halves of the result's first axis on two
    threads, for NumPy float arrays of one dtype with a result of at least BINARY_SPLIT_MIN entries
    and two threads allowed; None otherwise (the caller computes it plainly).  Each entry is
    computed as in one call, so the result is bit for bit the same."""
    # this runs before every add, sub, mul and div: operand sizes first (an operand as large as the
    # result is the common case; a result made large by broadcasting two small ones is not split)
    if type(a) is not np.ndarray or type(b) is not np.ndarray or builtins.max(a.size, b.size) < BINARY_SPLIT_MIN:
        return None
    shape = np.broadcast_shapes(a.shape, b.shape)
    if not halves_worthwhile(shape, (a, b)):
        return None
    out = np.empty(shape, dtype=a.dtype)

    def part(x, lo, hi):      # an operand that broadcasts along the first axis is used whole
        return x[lo:hi] if x.ndim == len(shape) and x.shape[0] == shape[0] else x

    split_halves(lambda lo, hi: ufunc(part(a, lo, hi), part(b, lo, hi), out=out[lo:hi]), shape[0])
    return out


def _axes(dim, ndim):
    """Normalise ``dim`` (None, int or tuple) to a tuple of non-negative axes."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    span = builtins.max(ndim, 1)  # a 0-d tensor accepts dim 0 or -1 (and has no axis), as in PyTorch
    out = []
    for d in dims:
        if not -span <= d < span:
            raise IndexError(f"dimension {d} is out of range for a tensor with {ndim} dimensions")
        out.append(int(d) % span)
    return tuple(sorted(set(out))) if ndim else ()


def _keepdim_shape(shape, axes):
    """``shape`` with every reduced axis set to 1 (so a gradient can broadcast back)."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


# ----------------------------------------------------------------------------
# arithmetic
# ----------------------------------------------------------------------------

class Add(Function):
    """y = a + b."""

    def forward(self, a, b):
        y = _split_binary(np.add, a, b)   # buys: large results on two threads (see _split_binary)
        return a + b if y is None else y

    def backward(self, gy):
        return gy, gy


class Sub(Function):
    """y = a - b."""

    def forward(self, a, b):
        y = _split_binary(np.subtract, a, b)   # buys: large results on two threads (see _split_binary)
        return a - b if y is None else y

    def backward(self, gy):
        return gy, (-gy if self.inputs[1].requires_grad else None)


class Mul(Function):
    """y = a * b;  da = gy * b,  db = gy * a."""

    def forward(self, a, b):
        y = _split_binary(np.multiply, a, b)   # buys: large results on two threads (see _split_binary)
        return a * b if y is None else y

    def backward(self, gy):
        a, b = self.inputs
        return (gy * b if a.requires_grad else None,
                gy * a if b.requires_grad else None)


class Div(Function):
    """y = a / b;  da = gy / b,  db = -gy * a / b^2."""

    def forward(self, a, b):
        y = _split_binary(np.divide, a, b)   # buys: large results on two threads (see _split_binary)
        return a / b if y is None else y

    def backward(self, gy):
        a, b = self.inputs
        ga = gy / b if a.requires_grad else None
        gb = -gy * a / (b * b) if b.requires_grad else None
        return ga, gb


class Neg(Function):
    """y = -x;  dx = -gy."""

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
    """a + b elementwise, broadcasting (either may be a Python number); shape = the broadcast shape."""
    return Add()(a, b)


def sub(a, b):
    """a - b elementwise, broadcasting; shape = the broadcast shape."""
    return Sub()(a, b)


def mul(a, b):
    """a * b elementwise, broadcasting; shape = the broadcast shape."""
    return Mul()(a, b)


def div(a, b):
    """a / b elementwise, broadcasting; shape = the broadcast shape."""
    return Div()(a, b)


def neg(x):
    """-x elementwise; same shape as x."""
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
        return xp_of(x).exp(x)

    def backward(self, gy):
        return gy * self.output()


class Expm1(Function):
    """y = e^x - 1, accurate for small x (e^x - 1 would cancel to 0 below x ~ 1e-8);  dx = gy * (y + 1)."""

    def forward(self, x):
        return xp_of(x).expm1(x)

    def backward(self, gy):
        return gy * (self.output() + 1.0)


class Log(Function):
    """y = log x;  dx = gy / x."""

    def forward(self, x):
        return xp_of(x).log(x)

    def backward(self, gy):
        return gy / self.inputs[0]


class Sqrt(Function):
    """y = sqrt(x);  dx = gy / (2 y)."""

    def forward(self, x):
        return xp_of(x).sqrt(x)

    def backward(self, gy):
        return gy / (self.output() * 2.0)


class Abs(Function):
    """y = |x|;  dx = gy * sign(x)  (0 at x = 0, as in PyTorch)."""

    def forward(self, x):
        return xp_of(x).abs(x)

    def backward(self, gy):
        # sign(x) is a constant: the second derivative of |x| is 0 away from the kink.
        return gy * _const(xp_of(gy.data).sign(self.inputs[0].data))


class Tanh(Function):
    """y = tanh x;  dx = gy * (1 - y^2)."""

    def forward(self, x):
        return xp_of(x).tanh(x)

    def backward(self, gy):
        y = self.output()
        return gy * (1.0 - y * y)


def _sigmoid_array(x, out=None):
    """sigma(x) = 1 / (1 + e^-x) on a raw array (into ``out`` if given), accurate in both tails, no warning."""
    xp = xp_of(x)
    # Below x = -c (e^c the largest finite power: 88 for float32) e^-x overflows to inf and
    # sigma(x) comes out 0, where the true value is below the smallest normal number (a
    # denormal, or 0 at -inf): the overflow is expected, so NumPy is told not to warn.
    # Neither tail cancels (1 + tiny, 1 + big), so both keep full relative precision.
    # (Clamping x at -c first avoided the overflow at the cost of a full pass: 4.6 -> 4.1 ms
    # on (64, 64, 28, 28) float32 without it.)
    e = _array(xp.negative(x, out=out))
    with np.errstate(over="ignore"):
        xp.exp(e, out=e)
    e += 1
    return xp.divide(1, e, out=e)


class Sigmoid(Function):
    """y = sigma(x) = 1 / (1 + e^-x);  dx = gy * y (1 - y).

    The probability a GAN discriminator outputs (notes §3).  Shapes: any -> same.
    """

    def forward(self, x):
        return _sigmoid_array(x)

    def backward(self, gy):
        y = self.output()
        return gy * (y * (1.0 - y))


def _erf_array(x):
    """erf on a raw array (NumPy has none): ``backend.erf`` picks SciPy's or CuPy's."""
    return backend.erf(x)


class Erf(Function):
    """y = erf(x) = (2 / sqrt(pi)) int_0^x e^(-t^2) dt;  dx = gy * (2 / sqrt(pi)) e^(-x^2)."""

    def forward(self, x):
        return _erf_array(x)

    def backward(self, gy):
        x = self.inputs[0]
        return gy * (exp(-(x * x)) * _TWO_OVER_SQRT_PI)


def exp(x):
    """e^x elementwise; same shape as x."""
    return Exp()(x)


def expm1(x):
    """e^x - 1 elementwise, accurate near 0; same shape as x."""
    return Expm1()(x)


def log(x):
    """Natural logarithm elementwise; same shape as x."""
    return Log()(x)


def sqrt(x):
    """Square root elementwise; same shape as x."""
    return Sqrt()(x)


def abs(x):  # noqa: A001 (PyTorch's name)
    """|x| elementwise; same shape as x."""
    return Abs()(x)


def tanh(x):
    """Hyperbolic tangent elementwise; same shape as x."""
    return Tanh()(x)


def sigmoid(x):
    """sigma(x) = 1 / (1 + e^-x) elementwise, stable in both tails; same shape as x."""
    return Sigmoid()(x)


def erf(x):
    """The error function elementwise; same shape as x."""
    return Erf()(x)


# ----------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------

class ReLU(Function):
    """y = max(x, 0);  dx = gy * [x > 0]  (0 at the kink x = 0, as in PyTorch).

    The mask is a constant in x's dtype, so a second backward is zero w.r.t. x
    (right: relu is piecewise linear) and linear in gy (also right).
    """

    def forward(self, x):
        xp = xp_of(x)
        # clip with both bounds takes NumPy's vectorised loop, which maximum(x, 0) does not.
        return xp.clip(x, 0, xp.inf)

    def backward(self, gy):
        y = self.output().data
        mask = (y > 0).astype(y.dtype)  # y > 0 exactly where x > 0
        return gy * _const(mask)


def relu(x):
    """max(x, 0) elementwise; same shape as x."""
    return ReLU()(x)


class LeakyReLU(Function):
    """y = x for x > 0, a x otherwise (a = negative_slope);  dx = gy * (1 where x > 0, a elsewhere).

    DCGAN's discriminator uses a = 0.2 (notes §3.3).  The derivative mask is a
    constant in x's dtype, as for relu.  For 0 < a <= 1, y = max(x, a x) and the mask
    is max(sign(x), a) (sign(0) = 0, so the kink x = 0 gets a, as in PyTorch); other
    slopes build the mask from x > 0 as written above.
    """

    def __init__(self, negative_slope):
        self.slope = float(negative_slope)

    def forward(self, x):
        xp = xp_of(x)
        x = _array(x)
        if 0.0 < self.slope <= 1.0 and x.dtype.kind == "f":   # a x <= x exactly when x >= 0: no mask needed
            y = xp.empty_like(x)
            slope = x.dtype.type(self.slope)

            def chain(x_, out):
                xp.multiply(x_, slope, out=out)
                xp.maximum(x_, out, out=out)
            split_elementwise(chain, x, y)   # buys: both cores on large inputs
            return y
        y = _array(x * self.slope)
        if self.slope > 1.0:
            return xp.minimum(x, y, out=y)  # the mirror case
        return xp.where(x > 0, x, y)        # a <= 0: select explicitly

    def backward(self, gy):
        x = self.inputs[0].data
        xp = xp_of(x)
        if not (0.0 < self.slope <= 1.0 and x.dtype.kind == "f"):
            mask = (x > 0).astype(x.dtype)
            mask *= 1.0 - self.slope
            mask += self.slope  # 1 where x > 0, negative_slope elsewhere
            return gy * _const(mask)
        # buys: the slope as max(sign(x), a) -- 1 where x > 0, a where x <= 0 -- in 2 passes
        # instead of 4, and without a graph the product in the same chain on two threads
        # ((64, 64, 14, 14) fwd+bwd: benchmarks/README.md)
        slope = x.dtype.type(self.slope)
        if is_grad_enabled():
            return gy * _const(_leaky_slope_into(x, slope, xp.empty_like(x)))
        g = _array(gy.data)
        gx = xp.empty(x.shape, dtype=xp.result_type(x, g))
        if g.shape != x.shape:
            g = xp.broadcast_to(g, x.shape)

        def chain(x_, g_, out):
            _leaky_slope_into(x_, slope, out)
            out *= g_
        split_elementwise(chain, x, g, gx)
        return Tensor(gx)


def _leaky_slope_into(x, slope, out):
    """LeakyReLU's derivative for 0 < slope <= 1 into ``out``: max(sign(x), slope), i.e. 1 where x > 0, slope elsewhere."""
    xp = xp_of(x)
    xp.sign(x, out=out)
    return xp.maximum(out, slope, out=out)


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x, elementwise; same shape as x."""
    return LeakyReLU(negative_slope)(x)


class SiLU(Function):
    """y = x sigma(x) (also called swish);  dx = gy * sigma(x) (1 + x (1 - sigma(x))).

    The activation of the DDPM U-Net (notes §5.6).  Shapes: any -> same.
    """

    def forward(self, x):
        x = _array(x)
        xp = xp_of(x)
        y = xp.empty_like(x)
        if not self.recording:                           # nothing to keep: y = x / (1 + e^-x) directly
            split_elementwise(_silu_direct, x, y)
            return y
        self.s = xp.empty_like(x)                        # s = sigma(x), kept for the backward
        split_elementwise(_silu_fused, x, self.s, y)
        return y

    def backward(self, gy):
        x = self.inputs[0]
        if is_grad_enabled():  # recorded (create_graph=True): the formula in ops, so it differentiates again
            s = sigmoid(x)
            return gy * (s * (1.0 + x * (1.0 - s)))
        # plain backward: the same slope on arrays, from the forward's s and its output y = x s
        return _times_gy(gy, _silu_slope_fused(self.output().data, self.s))


def _silu_fused(x, s, y):
    """SiLU's forward into s = sigma(x) and y = x s (on two threads where ``split_elementwise`` splits)."""
    _sigmoid_array(x, out=s)
    xp_of(x).multiply(x, s, out=y)


# buys: under no_grad (sampling) 4 passes and one array instead of 5 and two: W6's (256, 32, 28, 28)
# 5.6 -> 4.4 ms, (256, 96, 28, 28) 24.9 -> 18.3 ms (benchmarks/README.md)
def _silu_direct(x, y):
    """y = x / (1 + e^-x) = x sigma(x), SiLU's forward when no backward needs sigma(x).  Where e^-x
    overflows (x below about -88 in float32) y is x / inf = -0, the true value rounded."""
    xp = xp_of(x)
    xp.negative(x, out=y)
    with np.errstate(over="ignore"):
        xp.exp(y, out=y)
    y += 1
    xp.divide(x, y, out=y)


def _silu_slope_into(y, s, slope):
    xp_of(y).subtract(1, s, out=slope)
    slope *= y
    slope += s


def _silu_slope_fused(y, s):
    """sigma(x) (1 + x (1 - sigma(x))) = s + y (1 - s) on arrays, from the forward's s = sigma(x) and y = x s."""
    # buys: reuses the forward's sigmoid and output, 3 passes in one array (4 from x; the ops take
    # several times longer): SiLU's fwd+bwd on (64, 64, 28, 28) float32 5.8-6.3 -> 5.4-5.8 ms
    y = _array(y)
    slope = xp_of(y).empty_like(y)
    split_elementwise(_silu_slope_into, y, s, slope)
    return slope


def _imul(a, b):
    a *= b


def _times_gy(gy, slope):
    """gy * slope for a plain backward: in place in ``slope`` (a fresh array) where gy has its shape
    and dtype, else the broadcasting product."""
    g = gy.data
    if g.shape == slope.shape and g.dtype == slope.dtype:
        split_elementwise(_imul, slope, g)
        return Tensor(slope)
    return gy * _const(slope)


def silu(x):
    """x * sigma(x) elementwise (SiLU / swish); same shape as x."""
    return SiLU()(x)


class GELU(Function):
    """y = x Phi(x), Phi the standard normal CDF (Hendrycks & Gimpel, 2016).

    The MLP activation of transformer blocks (ViT / DiT, notes §5.6).

    approximate='none':  Phi(x) = (1 + erf(x / sqrt 2)) / 2,  dy/dx = Phi(x) + x phi(x)
    approximate='tanh':  Phi(x) ~ (1 + tanh(u)) / 2,  u = K (x + C x^3),  K = sqrt(2/pi), C = 0.044715,
                         dy/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) u' / 2,  u' = K (1 + 3 C x^2)
    Shapes: any -> same.
    """

    def __init__(self, approximate):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        xp = xp_of(x)
        if self.approximate == "tanh":
            x = _array(x)
            h, y = xp.empty_like(x), xp.empty_like(x)
            split_elementwise(_gelu_tanh_fused, x, h, y)
            self.saved = h  # (1 + tanh(K (x + C x^3))) / 2, kept for the backward
            return y
        cdf = _erf_array(x * _SQRT_HALF)
        cdf += 1
        cdf *= 0.5
        self.saved = cdf  # Phi(x), kept for the backward
        return x * cdf

    def backward(self, gy):
        x = self.inputs[0]
        if is_grad_enabled():  # recorded (create_graph=True): the formula in ops, so it differentiates again
            if self.approximate == "tanh":
                t = tanh((x + x * x * x * _GELU_C) * _GELU_K)
                slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * (_GELU_K * (1.0 + 3 * _GELU_C * x * x))
            else:
                cdf = 0.5 * (1.0 + erf(x * _SQRT_HALF))      # Phi(x)
                pdf = exp(-0.5 * x * x) * _INV_SQRT_2PI       # phi(x)
                slope = cdf + x * pdf
            return gy * slope
        # plain backward: the same slope on arrays
        return _times_gy(gy, _gelu_slope_fused(x.data, self.approximate, self.saved))


def _gelu_tanh_fused(x, h, y):
    """The tanh GELU's forward into h and y: h = (1 + tanh(u)) / 2 with u = K (x + C x^3), y = x h."""
    # buys: 8 passes, not 9 (K folded into the cubic), with the slope below: W5's (64, 49, 512) fwd+bwd 6.9 vs 8.8 ms
    xp = xp_of(x)
    xp.multiply(x, x, out=h)
    h *= _GELU_K * _GELU_C
    h += _GELU_K
    h *= x                                  # u = x (K + K C x^2)
    xp.tanh(h, out=h)
    h *= 0.5
    h += 0.5
    xp.multiply(x, h, out=y)


def _gelu_tanh_slope(x, h, slope, scratch):
    """dy/dx of the tanh GELU from h = (1 + t) / 2, t = tanh(u), into ``slope``.

    dy/dx = (1 + t) / 2 + x (1 - t^2) u' / 2 = h (1 + x (1 - h) 2u'),  as 1 - t^2 = 4 h (1 - h),
    2u' = 2K (1 + 3 C x^2).
    """
    xp = xp_of(x)
    xp.multiply(x, x, out=slope)
    slope *= 6 * _GELU_C * _GELU_K
    slope += 2 * _GELU_K                    # 2u'
    slope *= x
    xp.subtract(1, h, out=scratch)
    slope *= scratch
    slope += 1
    slope *= h


def _gelu_slope_fused(x, approximate, saved):
    """GELU's dy/dx on arrays (the formulas of ``GELU``), from the forward's saved array.

    saved: Phi(x) for approximate='none', (1 + tanh(K (x + C x^3))) / 2 for 'tanh'.
    """
    # buys: no second erf / tanh pass, and in-place passes over two arrays (about 10x faster than the ops);
    # tanh: 8 passes, not 11 (the factored form of _gelu_tanh_slope), see _gelu_tanh_fused
    xp = xp_of(x)
    if approximate == "tanh":
        x = _array(x)
        slope, scratch = xp.empty_like(x), xp.empty_like(x)
        split_elementwise(_gelu_tanh_slope, x, saved, slope, scratch)
        return slope
    pdf = _array(x * x)                     # phi(x) = e^(-x^2/2) / sqrt(2 pi)
    pdf *= -0.5
    xp.exp(pdf, out=pdf)
    pdf *= _INV_SQRT_2PI
    pdf *= x
    pdf += saved                            # Phi(x) + x phi(x)
    return pdf


def gelu(x, approximate="none"):
    """x * Phi(x) elementwise (``approximate="tanh"`` for the tanh formula); same shape as x."""
    return GELU(approximate)(x)


class Softplus(Function):
    """y = (1/beta) log(1 + e^(beta x)), and y = x where beta x > threshold (PyTorch's rule).

    dx = gy * sigma(beta x)  (gy where beta x > threshold).  Shapes: any -> same.
    """

    def __init__(self, beta, threshold):
        self.beta, self.threshold = float(beta), float(threshold)

    def forward(self, x):
        xp = xp_of(x)
        z = x * self.beta if self.beta != 1.0 else x
        # log(1 + e^z) = max(z, 0) + log1p(e^-|z|): the exponent is never positive, so
        # e^... cannot overflow, and log1p keeps the small tail exact.
        y = _array(xp.abs(z))
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
    """log(1 + e^(beta x)) / beta elementwise (x where beta x > ``threshold``); same shape as x."""
    return Softplus(beta, threshold)(x)


class LogSigmoid(Function):
    """y = log sigma(x) = -softplus(-x);  dx = gy * sigma(-x).

    The log-likelihood of a Bernoulli logit (log p = log_sigmoid(logit)).
    """

    def forward(self, x):
        xp = xp_of(x)
        # log sigma(x) = min(x, 0) - log1p(e^-|x|): the exponent is never positive (no
        # overflow), and for x << 0 the answer is x - tiny instead of log(0) = -inf.
        t = _array(xp.abs(x))
        xp.negative(t, out=t)
        xp.exp(t, out=t)
        xp.log1p(t, out=t)
        y = xp.clip(x, -xp.inf, 0)
        y -= t
        return y

    def backward(self, gy):
        return gy * sigmoid(-self.inputs[0])


def log_sigmoid(x):
    """log sigma(x) = -softplus(-x) elementwise, stable for large |x|; same shape as x."""
    return LogSigmoid()(x)


logsigmoid = log_sigmoid  # PyTorch's spelling, F.logsigmoid


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
            return xp_of(a).where(self.cond, a, b)
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
    if np.isscalar(cond) or isinstance(cond, (list, tuple)):
        cond = xp_of(ref.data).asarray(cond)
    if cond.dtype != np.bool_:
        raise TypeError(f"where: condition must be boolean, got dtype {cond.dtype} "
                        "(compare first, e.g. where(x > 0, x, 0))")
    return Where(cond)(input, other)


class Clip(Function):
    """y = min(max(x, lo), hi);  dx = gy where lo <= x <= hi, else 0 (PyTorch's rule).

    Either bound may be None (no bound on that side).
    """

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def forward(self, x):
        xp = xp_of(x)
        if x.dtype.kind == "f":  # an infinite bound keeps NumPy on its fast two-sided loop
            return xp.clip(x, -xp.inf if self.lo is None else self.lo, xp.inf if self.hi is None else self.hi)
        return xp.clip(x, self.lo, self.hi)

    def backward(self, gy):
        x = self.inputs[0].data
        inside = (x >= self.lo) if self.lo is not None else None
        if self.hi is not None:
            inside = (x <= self.hi) if inside is None else inside & (x <= self.hi)
        return gy * _const(inside.astype(x.dtype))


def clip(x, min=None, max=None):  # noqa: A002 (PyTorch's names)
    """Clamp x into [min, max]; min and max are Python numbers or None."""
    for name, bound in (("min", min), ("max", max)):
        if bound is not None and not isinstance(bound, (int, float, np.number)):
            raise TypeError(f"clip: {name} must be a Python number or None, got {type(bound).__name__} "
                            "(for a tensor bound use maximum / minimum)")
    if min is None and max is None:
        raise ValueError("clip: at least one of min and max must be given")
    return Clip(min, max)(x)


clamp = clip  # PyTorch's other name


def _first_wins(a, b):
    """1 where a > b, 0 where a < b and 1/2 on ties: (sign(a - b) + 1) / 2, in a's dtype."""
    xp = xp_of(a)
    w = _array(a - b)
    xp.sign(w, out=w)
    w += 1
    w *= 0.5
    return w


class Maximum(Function):
    """y = max(a, b) elementwise (broadcasting);  da = gy [a > b],  db = gy [b > a].

    On a tie each input gets half of gy (PyTorch does the same).
    """

    def forward(self, a, b):
        return xp_of(a).maximum(a, b)

    def backward(self, gy):
        a, b = self.inputs
        w = _first_wins(a.data, b.data)
        return (gy * _const(w) if a.requires_grad else None,
                gy * _const(1 - w) if b.requires_grad else None)


class Minimum(Function):
    """y = min(a, b) elementwise (broadcasting);  da = gy [a < b],  db = gy [b < a].

    On a tie each input gets half of gy.
    """

    def forward(self, a, b):
        return xp_of(a).minimum(a, b)

    def backward(self, gy):
        a, b = self.inputs
        w = _first_wins(b.data, a.data)  # 1 where a is the smaller
        return (gy * _const(w) if a.requires_grad else None,
                gy * _const(1 - w) if b.requires_grad else None)


def maximum(a, b):
    """The larger of a and b elementwise (ties split the gradient); broadcast shape."""
    return Maximum()(a, b)


def minimum(a, b):
    """The smaller of a and b elementwise (ties split the gradient); broadcast shape."""
    return Minimum()(a, b)


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
    """Sum over ``dim`` (int, tuple, or None for all dims); reduced dims kept as 1 when ``keepdim``."""
    return Sum(dim, keepdim)(x)


def mean(x, dim=None, keepdim=False):
    """Mean over ``dim`` (int, tuple, or None for all dims); reduced dims kept as 1 when ``keepdim``."""
    return Mean(dim, keepdim)(x)


def _reduced_shape(shape, axes):
    """``shape`` with the reduced axes removed (keepdim=False)."""
    return tuple(n for i, n in enumerate(shape) if i not in axes)


class Var(Function):
    """y = sum (x - mean x)^2 / (n - 1) over ``dim`` (divide by n when unbiased=False).

    dx = gy * 2 (x - mean x) / (n - 1).  Shapes: x (...) -> y with ``dim`` reduced.
    """

    def __init__(self, dim, keepdim, unbiased):
        self.dim, self.keepdim, self.unbiased = dim, keepdim, unbiased

    def forward(self, x):
        self.axes = _axes(self.dim, x.ndim)
        self.x_shape = x.shape
        n = int(np.prod([x.shape[a] for a in self.axes])) if self.axes else 1
        self.denom = n - 1 if self.unbiased else n
        if self.denom <= 0:
            raise ValueError(f"var: {n} element(s) over dim {self.dim} of a tensor of shape {x.shape}; "
                             "the unbiased variance needs at least 2 (or pass unbiased=False)")
        # two passes, mean first: the one-pass E[x^2] - E[x]^2 cancels catastrophically
        # when the mean is large compared with the spread.
        d = x - x.mean(axis=self.axes, keepdims=True)
        d *= d
        return d.sum(axis=self.axes, keepdims=self.keepdim) / self.denom

    def backward(self, gy):
        x = self.inputs[0]
        if not self.keepdim:
            gy = gy.reshape(_keepdim_shape(self.x_shape, self.axes))
        return gy * ((x - mean(x, self.axes, keepdim=True)) * (2.0 / self.denom))


def var(x, dim=None, keepdim=False, unbiased=True):
    """Variance over ``dim`` (divides by n - 1 when ``unbiased``); reduced dims kept as 1 when ``keepdim``."""
    return Var(dim, keepdim, unbiased)(x)


class Max(Function):
    """y = max of x over ``dim`` (all dims when None), values only.

    dx = gy at the position of the maximum, 0 elsewhere.  When several entries tie
    for the maximum they share gy equally (like PyTorch's ``amax``; ``torch.max``
    with a dim gives it all to one index instead).
    """

    name = "max"

    def __init__(self, dim, keepdim):
        self.dim, self.keepdim = dim, keepdim

    def _reduce(self, x):
        return x.max(axis=self.axes, keepdims=True)

    def forward(self, x):
        self.axes = _axes(self.dim, x.ndim)
        self.x_shape = x.shape
        if x.size == 0:
            raise ValueError(f"{self.name}: cannot reduce a tensor with no elements (shape {x.shape})")
        y = self._reduce(x)
        return y if self.keepdim else y.reshape(_reduced_shape(x.shape, self.axes))

    def backward(self, gy):
        x = self.inputs[0].data
        keep = _keepdim_shape(self.x_shape, self.axes)
        hit = (x == self.output().data.reshape(keep)).astype(x.dtype)
        hit /= hit.sum(axis=self.axes, keepdims=True)  # ties share the gradient equally
        if not self.keepdim:
            gy = gy.reshape(keep)
        return gy * _const(hit)


class Min(Max):
    """y = min of x over ``dim``, values only; dx = gy at the minimum (ties share it)."""

    name = "min"

    def _reduce(self, x):
        return x.min(axis=self.axes, keepdims=True)


def max(x, dim=None, keepdim=False):  # noqa: A001 (PyTorch's name)
    """The largest value over ``dim`` (values only; use Tensor.argmax for positions)."""
    return Max(dim, keepdim)(x)


def min(x, dim=None, keepdim=False):  # noqa: A001 (PyTorch's name)
    """The smallest value over ``dim`` (values only)."""
    return Min(dim, keepdim)(x)


class LogSumExp(Function):
    """y = log sum_i e^(x_i) over ``dim``;  dx = gy * softmax(x) = gy * e^(x - m) / sum e^(x - m), m = max x.

    The forward is ``backend.logsumexp`` (the max subtracted, so nothing overflows).
    Shapes: x (...) -> y with ``dim`` removed (kept as 1 with keepdim).
    """

    def __init__(self, dim, keepdim):
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        self.axes = _axes(self.dim, x.ndim)
        self.x_shape = x.shape
        y = backend.logsumexp(x, axis=self.axes, keepdims=True)
        return y if self.keepdim else y.reshape(_reduced_shape(x.shape, self.axes))

    def backward(self, gy):
        x = self.inputs[0]
        if not self.keepdim:
            gy = gy.reshape(_keepdim_shape(self.x_shape, self.axes))
        if x.data.size == 0:
            return gy * x  # nothing to differentiate: an empty gradient of the right shape
        # dx = softmax(x) computed from x - max(x), not e^(x - y): for huge x, y = max + log n
        # rounds back to max and e^(x - y) reads 1 per entry instead of 1/n.  The shift is a
        # constant (softmax does not depend on it), so the graph stays differentiable.
        xp = xp_of(x.data)
        shift = x.data.max(axis=self.axes, keepdims=True)
        shift = xp.where(xp.isfinite(shift), shift, 0)  # an all -inf row: no shift, e = 0
        e = exp(x - Tensor(shift))
        total = sum(e, self.axes, keepdim=True)
        # an all -inf row has no mass: its gradient is 0, not 0/0
        total = where(total.data > 0, total, 1.0)
        return gy * (e / total)


def logsumexp(x, dim=None, keepdim=False):
    """log sum exp over ``dim`` (all dims when None), computed with the max subtracted."""
    return LogSumExp(dim, keepdim)(x)


def _softmax_axis(dim, ndim):
    """The single axis of a softmax (a 0-d tensor has none: its softmax is 1)."""
    if dim is None or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"softmax/log_softmax: dim must be an int, got {dim!r}")
    return _axes(dim, ndim)


class Softmax(Function):
    """y_i = e^(x_i) / sum_j e^(x_j) along ``dim``;  dx = y * (gy - sum(gy * y)).

    Shapes: any -> same.
    """

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        xp = xp_of(x)
        self.axes = _softmax_axis(self.dim, x.ndim)
        y = _array(x - x.max(axis=self.axes, keepdims=True))  # exponents <= 0: no overflow
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
        xp = xp_of(x)
        self.axes = _softmax_axis(self.dim, x.ndim)
        y = x - x.max(axis=self.axes, keepdims=True)  # shift by the max: exponents <= 0
        lse = xp.log(xp.exp(y).sum(axis=self.axes, keepdims=True))
        y -= lse
        return y

    def backward(self, gy):
        y = self.output()
        return gy - exp(y) * sum(gy, self.axes, keepdim=True)


def softmax(x, dim=-1):
    """exp(x) / sum exp(x) along ``dim`` (max subtracted first); same shape as x."""
    return Softmax(dim)(x)


def log_softmax(x, dim=-1):
    """x - logsumexp(x) along ``dim``; same shape as x."""
    return LogSoftmax(dim)(x)


# ----------------------------------------------------------------------------
# dropout
# ----------------------------------------------------------------------------

class Dropout(Function):
    """y = x * m / (1 - p), m_i ~ Bernoulli(1 - p) (inverted dropout, Srivastava et al. 2014).

    ``scaled_mask`` = m / (1 - p) is drawn by the wrapper and is a constant here:
    dx = gy * m / (1 - p).  Shapes: any -> same.
    """

    def __init__(self, scaled_mask):
        self.scaled_mask = scaled_mask

    def forward(self, x):
        return x * self.scaled_mask

    def backward(self, gy):
        return gy * _const(self.scaled_mask)


def dropout(x, p=0.5, training=True, generator=None):
    """Zero each entry with probability p and scale the rest by 1/(1-p), so E[y] = x.

    ``training=False`` returns x unchanged.  The mask comes from ``generator``
    (default: the default generator of x's device), never from global state.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not isinstance(x, Tensor) or x.dtype.kind != "f":
        raise TypeError(f"dropout: expected a floating Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if not training or p == 0.0:
        return x
    xp = xp_of(x.data)
    if p == 1.0:
        return Dropout(xp.zeros(x.shape, dtype=x.dtype))(x)
    gen = generator if generator is not None else backend.default_generator(x.device)
    u = gen.uniform(x.shape, dtype=x.dtype, device=x.device)
    mask = (u >= p).astype(x.dtype)  # kept with probability 1 - p
    mask *= 1.0 / (1.0 - p)          # inverted scaling: evaluation needs no rescaling
    return Dropout(mask)(x)

"""Normalisation layers as ops: ``batch_norm``, ``group_norm``, ``layer_norm``.

All three compute the same thing over different axes:

    xhat = (x - mean) / sqrt(var + eps),      y = weight * xhat + bias

with mean and (biased) var taken over the axes that the norm "pools":

    batch_norm  (N, C, *)  per channel, over the batch and every position
                           (Ioffe & Szegedy 2015; the DCGAN of notes §3.3)
    group_norm  (N, C, *)  per sample and group of C/G channels (Wu & He 2018;
                           the diffusion UNet of notes §5.6)
    layer_norm  (*, D...)  per sample, over the trailing ``normalized_shape``
                           (Ba, Kiros & Hinton 2016; transformer blocks)

So one ``Function``, ``Normalize``, does the work for all three: each wrapper
views ``x`` so that the pooled entries lie along some axes (no copy), calls it,
and views the result back.  ``Normalize`` is *fused*: the forward computes mean,
rstd = 1/sqrt(var + eps) and xhat on arrays in a few passes, and the backward is
the closed form of the chain rule through all of it (see ``Normalize``), instead
of a dozen recorded elementary ops.  The affine part (weight, bias) is fused in
too: it costs no more than a separate broadcast multiply and add, and it lets the
backward scale the gradient once by the small product rstd * weight.

Batch norm in eval mode uses the running statistics, which are constants, so it
is just an affine map written with ordinary ops.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Function, Tensor, is_grad_enabled, no_grad
from .. import backend
from .math import elementwise_threads, mean, split_halves, sqrt
from .parallel import split_batch, sum_parts
from .shape import reshape

__all__ = ["batch_norm", "group_norm", "layer_norm"]


class Normalize(Function):
    """y = weight * xhat + bias,  xhat = (x - mean) * rstd,  rstd = 1/sqrt(var + eps).

    mean and the biased var are taken over ``axes`` (kept as size-1 dims);
    ``weight`` and ``bias`` (optional, ``has_weight``/``has_bias`` say which are
    passed) broadcast against x.  Inputs: x, [weight], [bias].

    Backward, with means over ``axes``:

        dx = g - mean(g) - xhat * mean(g * xhat),   g = rstd * weight * gy
        dweight = gy * xhat,   dbias = gy      (the engine sums them to their shapes)

    Second derivatives are exact with respect to x, weight and bias: when the
    backward itself is being recorded (``create_graph=True``), xhat and rstd are
    recomputed from the input tensor with minigen ops, so the formula above is
    differentiated through them; otherwise the arrays saved by the forward are
    used as constants (the fast path).
    """

    def __init__(self, axes, eps, has_weight, has_bias):
        self.axes, self.eps = tuple(axes), eps
        self.has_weight, self.has_bias = has_weight, has_bias

    def forward(self, x, *params):
        xp = backend.xp_of(x)
        weight = params[0] if self.has_weight else None
        bias = params[-1] if self.has_bias else None
        if not self.recording and (weight is None or _coefficient_size(x.shape, self.axes, weight) < x.size):
            # buys: nothing will be differentiated and rstd * weight is small: no xhat array and one
            # full pass fewer (group norm under no_grad on W6's (256, 32, 28, 28): 7.8 -> 5.1 ms)
            xhat, y = None, xp.empty(x.shape, xp.result_type(x, *params))
        else:
            xhat = xp.empty_like(x)
            y = xhat if weight is None and bias is None else xp.empty(x.shape, xp.result_type(x, *params))
        if _layout(x.shape, self.axes, *params) == "batch":    # statistics over the batch
            stats = [_normalize_into(x, self.axes, self.eps, weight, bias, xhat, y, flat=_batch_rows(x.shape),
                                     each=_in_halves)]
        else:
            stats = _over_batch(lambda a, b: _normalize_into(x[a:b], self.axes, self.eps, weight, bias,
                                                             None if xhat is None else xhat[a:b], y[a:b]),
                                x, self.axes)
        self.mean, self.var, self.rstd = (xp.concatenate(s) if len(stats) > 1 else s[0] for s in zip(*stats))
        self.xhat = xhat
        return y

    def _xhat_rstd(self):
        """xhat and rstd as tensors: recorded from x under create_graph, else constants."""
        if not is_grad_enabled():
            return Tensor(self.xhat), Tensor(self.rstd)
        x = self.inputs[0]
        xc = x - mean(x, self.axes, keepdim=True)
        rstd = 1.0 / sqrt(mean(xc * xc, self.axes, keepdim=True) + self.eps)
        return xc * rstd, rstd

    def backward(self, gy):
        if not is_grad_enabled():
            return self._backward_arrays(gy.data)
        xhat, rstd = self._xhat_rstd()
        weight = self.inputs[1] if self.has_weight else None
        gx = gw = gb = None
        if self.inputs[0].requires_grad:
            # g = rstd * weight * gy.  rstd is constant along the pooled axes, so it can go
            # inside the means; when rstd * weight is small (batch and group norm) it is
            # formed first, saving one pass over the full-size gradient.
            if weight is None:
                g = gy * rstd
            elif _broadcast_size(rstd, weight) < gy.size:
                g = gy * (rstd * weight)
            else:
                g = gy * weight * rstd
            gx = g - _pooled_mean(g, self.axes) - xhat * _pooled_mean(g, self.axes, xhat)
        if weight is not None and weight.requires_grad:
            gw = gy * xhat
        if self.has_bias and self.inputs[-1].requires_grad:
            gb = gy
        return (gx,) + ((gw,) if self.has_weight else ()) + ((gb,) if self.has_bias else ())

    # buys: the formula above on arrays in place (3 full passes for gx, none for dweight and
    # dbias, which come out summed by BLAS dots): W3's step ~650 -> ~630 ms (benchmarks/README.md)
    def _backward_arrays(self, gy):
        """The plain backward (not recorded): the same gradients on arrays, wrapped as constants."""
        x = self.inputs[0]
        weight = self.inputs[1] if self.has_weight else None
        bias = self.inputs[-1] if self.has_bias else None
        need = (x.requires_grad, weight is not None and weight.requires_grad,
                bias is not None and bias.requires_grad)
        wdata = None if weight is None else weight.data
        xhat, rstd, axes = self.xhat, self.rstd, self.axes

        xp = backend.xp_of(gy)
        gx = xp.empty(gy.shape, xp.result_type(gy, rstd, *([wdata] if wdata is not None else []))) \
            if need[0] else None

        w_shape = None if weight is None else weight.shape
        b_shape = None if bias is None else bias.shape
        layout = _layout(gy.shape, axes, weight, bias)
        if layout == "batch":
            gw, gb = _batch_normalize_backward(gy, xhat, rstd, wdata, need, w_shape, b_shape, gx)
        else:
            group = layout == "group"

            def run(a, b):
                if group:
                    return _group_normalize_backward(gy[a:b], xhat[a:b], rstd[a:b], wdata, need,
                                                     None if gx is None else gx[a:b])
                return _normalize_backward(gy[a:b], xhat[a:b], rstd[a:b], wdata, axes, need, w_shape, b_shape,
                                           None if gx is None else gx[a:b])
            parts = _over_batch(run, gy, axes)
            gw, gb = (sum_parts(list(p)) for p in zip(*parts))      # the parameters' partial sums
        out = (None if gx is None else Tensor(gx),)
        out += (None if gw is None else Tensor(gw),) if self.has_weight else ()
        out += (None if gb is None else Tensor(gb),) if self.has_bias else ()
        return out


def _layout(shape, axes, *params):
    """Which special layout x of ``shape``, pooled over ``axes``, has with its parameters (arrays,
    Tensors or None): "batch" for batch norm's (N, C, L) over (0, 2) with (C, 1) parameters, "group"
    for group norm's (N, G, C/G, L) over (2, 3) with (G, C/G, 1) ones, None for any other."""
    shapes = {tuple(p.shape) for p in params if p is not None}
    if len(shape) == 3 and tuple(axes) == (0, 2) and shapes <= {(shape[1], 1)}:
        return "batch"
    if len(shape) == 4 and tuple(axes) == (2, 3) and shapes <= {(shape[1], shape[2], 1)}:
        return "group"
    return None


def _coefficient_size(shape, axes, weight):
    """Entries of rstd * weight: rstd has ``shape`` with the pooled ``axes`` set to 1."""
    stats_shape = tuple(1 if i in axes else n for i, n in enumerate(shape))
    return math.prod(np.broadcast_shapes(stats_shape, weight.shape))


def _over_batch(run, a, axes):
    """[run(lo, hi) for batch ranges of a]: one range per thread (``split_batch``) when the
    statistics are per sample (axis 0 not pooled) and a is a NumPy array, else [run(0, N)]."""
    if type(a) is np.ndarray and 0 not in axes and a.ndim > 1:
        return split_batch(run, a.shape[0], a.size)
    return [run(0, a.shape[0])]


BATCH_NORM_SPLIT_MIN = 1 << 19   # entries: below, batch norm's passes ran slower in halves (cache moves between cores)


def _in_halves(run, a):
    """run(lo, hi) over a's first axis: in two halves on two threads (``split_halves``) when a is a
    NumPy float array of at least BATCH_NORM_SPLIT_MIN entries and two threads are allowed, else once."""
    if (type(a) is np.ndarray and a.dtype.kind == "f" and a.size >= BATCH_NORM_SPLIT_MIN and a.shape[0] >= 2
            and elementwise_threads() >= 2):
        split_halves(run, a.shape[0])
    else:
        run(0, a.shape[0])


def _same(a):
    return a


def _whole(run, a):
    run(0, a.shape[0])


def _normalize_into(x, axes, eps, weight, bias, xhat, y, flat=_same, each=_whole):
    """xhat = (x - mean) * rstd and y = weight * xhat + bias into the given arrays; returns
    (mean, var, rstd).  y may be xhat itself (no weight, no bias).  With xhat None (nothing
    to keep for a backward), y = (x - mean) * (rstd * weight) + bias, built in y.

    The passes after the mean see every array through ``flat`` and run through ``each(run, a)``
    (run(lo, hi) on rows lo:hi of a's first axis): as they are and at once for group and layer
    norm, as contiguous rows (``_batch_rows``) in two halves on two threads (``_in_halves``) for
    batch norm, whose statistics pool over the batch so that it cannot be split as a whole."""
    xp = backend.xp_of(x)
    mean = _pooled_mean(x, axes)
    centred = y if xhat is None else xhat
    xp.subtract(flat(x), flat(mean), out=flat(centred))
    # Two passes (subtract the mean, then average the squares): E[x^2] - E[x]^2
    # would cancel catastrophically when |mean| >> std.
    var = _pooled_mean(centred, axes, centred)
    rstd = 1 / xp.sqrt(var + x.dtype.type(eps))
    y2, b2 = flat(y), flat(bias)
    if xhat is None:
        coef = flat(rstd if weight is None else rstd * weight)
        each(lambda a, b: _affine_(y2[a:b], coef, b2), y2)
    else:
        xhat2, r2, w2 = flat(xhat), flat(rstd), flat(weight)
        each(lambda a, b: _scale_into(xhat2[a:b], r2, w2, b2, y2[a:b]), xhat2)
    return mean, var, rstd


def _affine_(y, coef, bias):
    y *= coef
    if bias is not None:
        y += bias


def _scale_into(xhat, rstd, weight, bias, y):
    """xhat *= rstd, then y = weight * xhat + bias (y may be xhat itself)."""
    xp = backend.xp_of(xhat)
    xhat *= rstd
    if weight is not None:
        xp.multiply(xhat, weight, out=y)
        if bias is not None:
            y += bias
    elif bias is not None:
        xp.add(xhat, bias, out=y)


def _rows(c, shape):
    """A per-channel coefficient ((C, 1) or (1, C, 1), or None) of x (N, C, L) as one full row
    (1, C*L), a copy of C*L entries."""
    if c is None:
        return None
    N, C, L = shape
    return backend.xp_of(c).broadcast_to(c.reshape(C, 1), (C, L)).reshape(1, C * L)


# buys: NumPy's passes over contiguous rows of C*L entries instead of runs of L beside a broadcast
# coefficient (1.3-1.5x faster per pass; batch norm (64, 64, 14, 14) forward: benchmarks/README.md)
def _batch_rows(shape):
    """``flat`` for batch norm's x of ``shape`` (N, C, L): x-sized arrays viewed as (N, C*L), per-channel
    coefficients as full rows (``_rows``)."""
    N = shape[0]

    def flat(a):
        if a is None or a.shape != shape:
            return _rows(a, shape)
        return a.reshape(N, -1)
    return flat


def _normalize_backward(gy, xhat, rstd, weight, axes, need, w_shape, b_shape, gx):
    """Normalize's backward on arrays for one batch range: gx written into ``gx`` (when need[0]),
    returns (dweight, dbias), None where not needed.

    gx = g - mean(g) - xhat * mean(g * xhat) with g = rstd * weight * gy, built in place
    (3 full passes); dweight and dbias are sums over the broadcast axes, as dot products."""
    xp = backend.xp_of(gy)
    gw = gb = None
    if need[0]:
        g = xp.multiply(gy, rstd if weight is None else rstd * weight, out=gx)
        m1, m2 = _pooled_mean(g, axes), _pooled_mean(g, axes, xhat)
        t = xhat * m2
        t += m1
        g -= t
    if need[1]:
        gw = _sum_over_broadcast(gy, xhat, w_shape)
    if need[2]:
        gb = _sum_over_broadcast(gy, None, b_shape)
    return gw, gb


# buys: two reductions instead of four (group norm backward on (32, 8, 4, 784), one thread:
# 2.28 -> 1.67 ms; benchmarks/README.md)
def _group_normalize_backward(gy, xhat, rstd, weight, need, gx):
    """_normalize_backward for group norm: gy, xhat (n, G, C/G, L) pooled over axes (2, 3), the
    weight (G, C/G, 1) or None.

    Both means of the backward are weighted sums of two per-channel sums over L,
    S1[n, c] = sum_l gy and S2[n, c] = sum_l gy * xhat (K = C/G * L entries pooled):

        mean(g) = rstd * sum_{c in group} w_c S1[n, c] / K,   mean(g xhat) = rstd * sum_{c in group} w_c S2[n, c] / K

    and dbias, dweight are S1, S2 summed over n: one BLAS product and one batch of dots give all four."""
    xp = backend.xp_of(gy)
    n, G, Cg, L = gy.shape
    rows_gy = gy.reshape(n * G * Cg, L)
    s1 = (rows_gy @ xp.ones(L, dtype=gy.dtype)).reshape(n, G, Cg)
    s2 = (rows_gy.reshape(-1, 1, L) @ xhat.reshape(-1, L, 1)).reshape(n, G, Cg)
    if need[0]:
        w = 1 if weight is None else weight.reshape(G, Cg)
        scale = rstd.reshape(n, G) / gy.dtype.type(Cg * L)
        m1 = (scale * (s1 * w).sum(2)).reshape(n, G, 1, 1)
        m2 = (scale * (s2 * w).sum(2)).reshape(n, G, 1, 1)
        g = xp.multiply(gy, rstd if weight is None else rstd * weight, out=gx)
        t = xhat * m2
        t += m1
        g -= t
    gw = s2.sum(0).reshape(G, Cg, 1) if need[1] else None
    gb = s1.sum(0).reshape(G, Cg, 1) if need[2] else None
    return gw, gb


# buys: two reductions instead of four, and the full-size passes over contiguous rows on two
# threads (batch norm (64, 64, 14, 14) backward: benchmarks/README.md)
def _batch_normalize_backward(gy, xhat, rstd, weight, need, w_shape, b_shape, gx):
    """Normalize's backward for batch norm: gy, xhat (N, C, L) pooled over axes (0, 2), the
    weight constant along them.

    With c = rstd * weight constant there, mean(g) = c mean(gy) and mean(g xhat) = c mean(gy xhat):
    the two means come from gy and are dbias and dweight as well (times the count), and

        gx = (gy - mean(gy)) * c - xhat * (c * mean(gy xhat))

    in passes over (N, C*L) rows with the coefficients as full rows (``_rows``), two halves on
    two threads (``_in_halves``)."""
    xp = backend.xp_of(gy)
    N, C, L = shape = gy.shape
    m_gy = _pooled_mean(gy, (0, 2)) if need[0] or need[2] else None
    m_gyx = _pooled_mean(gy, (0, 2), xhat) if need[0] or need[1] else None
    if need[0]:
        c = rstd if weight is None else rstd * weight
        m_row, c_row, k_row = _rows(m_gy, shape), _rows(c, shape), _rows(c * m_gyx, shape)
        gy2, xhat2, gx2 = gy.reshape(N, C * L), xhat.reshape(N, C * L), gx.reshape(N, C * L)

        def run(a, b):
            g = xp.subtract(gy2[a:b], m_row, out=gx2[a:b])
            g *= c_row
            g -= xp.multiply(xhat2[a:b], k_row)
        _in_halves(run, gy2)
    count = gy.dtype.type(N * L)
    gw = (m_gyx * count).reshape(w_shape) if need[1] else None
    gb = (m_gy * count).reshape(b_shape) if need[2] else None
    return gw, gb


def _sum_over_broadcast(a, b, shape):
    """sum(a * b) (or sum(a)) reduced to ``shape``, a shape that broadcasts against a's.

    The reduced axes of the norms' parameters are axis 0 plus trailing axes (group and batch
    norm) or leading axes (layer norm); _pooled_mean handles the first as dot products."""
    nd = a.ndim
    full = (1,) * (nd - len(shape)) + tuple(shape)
    axes = tuple(i for i in range(nd) if full[i] == 1 and a.shape[i] != 1)
    if not axes:
        return (a * b if b is not None else a).reshape(shape)
    count = 1
    for i in axes:
        count *= a.shape[i]
    if len(shape) < nd and axes == tuple(range(nd - len(shape))):   # layer norm: sum over leading rows
        a2 = a.reshape(count, -1)
        if b is None:
            return a2.sum(0).reshape(shape)
        return _rowwise_dot_sum(a2, b.reshape(count, -1)).reshape(shape)
    return (_pooled_mean(a, axes, b) * a.dtype.type(count)).reshape(shape)


def _rowwise_dot_sum(a2, b2):
    """sum over rows of a2 * b2 (both (R, D)), in blocks of rows so no (R, D) temporary is made."""
    xp = backend.xp_of(a2)
    out = xp.zeros(a2.shape[1], dtype=a2.dtype)
    step = max(1, (1 << 16) // max(1, a2.shape[1]))
    for r in range(0, a2.shape[0], step):
        out += (a2[r:r + step] * b2[r:r + step]).sum(0)
    return out


_MIN_DOT = 16   # rows shorter than this: mean(a * b) through the product (batch norm 1d: K = 1)


def _pooled_mean(a, axes, b=None):
    """mean(a * b) (or mean(a)) over ``axes``, kept as size-1 dims, for arrays and tensors alike.

    The norms pool over trailing axes (layer and group norm) or over axis 0 plus
    trailing axes (batch norm).  Sums over trailing axes are done as products with
    a column of ones and over axis 0 with a row of ones, and mean(a * b) over
    trailing axes as a batched dot product: one BLAS call each, several times
    faster than NumPy's reductions, and no full-size temporary for a * b.
    Other axes fall back to ``mean``.
    """
    nd, shape = a.ndim, a.shape
    is_tensor = isinstance(a, Tensor)

    def trailing(ax):
        return bool(ax) and ax == tuple(range(nd - len(ax), nd))

    if trailing(axes):
        lead = 0
    elif axes and axes[0] == 0 and trailing(axes[1:]):
        lead = 1
    else:
        a = a * b if b is not None else a
        return mean(a, axes, keepdim=True) if is_tensor else a.mean(axis=axes, keepdims=True)
    trail = axes[lead:]
    keep = tuple(1 if i in axes else n for i, n in enumerate(shape))
    K = int(np.prod(shape[nd - len(trail):]))
    R = a.size // K                            # rows, each summed (or dotted) over K entries
    xp = backend.xp_of(a.data if is_tensor else a)

    def const(array):
        return Tensor(array) if is_tensor else array

    if b is not None and K < _MIN_DOT:         # short rows: one product pass beats many tiny dots
        a, b = a * b, None
    if b is not None:                          # per-row dot products, no full-size a * b
        s = (a.reshape((R, 1, K)) @ b.reshape((R, K, 1))).reshape((R,))
        s = s * (1.0 / K) if is_tensor else s / a.dtype.type(K)
    elif K > 1:
        s = (a.reshape((R, K)) @ const(xp.full((K, 1), 1.0 / K, dtype=a.dtype))).reshape((R,))
    else:
        s = a.reshape((R,))
    if lead:
        N = shape[0]
        s = const(xp.full((1, N), 1.0 / N, dtype=a.dtype)) @ s.reshape((N, -1))
    return s.reshape(keep)


def _broadcast_size(a, b):
    return int(np.prod(np.broadcast_shapes(a.shape, b.shape)))


def _normalize(x, axes, weight, bias, eps):
    params = [p for p in (weight, bias) if p is not None]
    return Normalize(axes, eps, weight is not None, bias is not None)(x, *params)


# ----------------------------------------------------------------------------
# the three norms
# ----------------------------------------------------------------------------

def _check_param(op, name, p, shape, x):
    """Refuse a weight/bias/running statistic whose shape does not fit x."""
    if p is None:
        return
    if not isinstance(p, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor or None, got {type(p).__name__}")
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(p.shape)} but the input of shape {tuple(x.shape)} "
                         f"needs shape {tuple(shape)}")


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation: y = weight * (x - mean_c) / sqrt(var_c + eps) + bias.

    x (N, C), (N, C, L) or (N, C, H, W); running_mean, running_var, weight, bias (C,).
    training=True: mean_c and the biased var_c come from the batch (over N and all
    positions), and the running statistics, when given, are updated in place,
        running_mean <- (1 - momentum) running_mean + momentum mean_c
        running_var  <- (1 - momentum) running_var  + momentum var_c * n / (n - 1)
    (the unbiased variance over the n = N * positions entries, as PyTorch).
    training=False: mean_c, var_c are the running statistics, so y is an affine map of x.
    Ioffe & Szegedy 2015; notes §3.3 (DCGAN).
    """
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected an input of shape (N, C, ...), got shape {tuple(x.shape)}")
    C = x.shape[1]
    for name, p in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        _check_param("batch_norm", name, p, (C,), x)
    stat_shape = (C,) + (1,) * (x.ndim - 2)  # broadcasts against (N, C, ...)

    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: training=False normalises with the running statistics, "
                             "but running_mean or running_var is None")
        _same_device("batch_norm", x, running_mean, running_var)
        xp = backend.xp_of(x.data)
        rstd = 1 / xp.sqrt(running_var.data.reshape(stat_shape).astype(x.dtype) + x.dtype.type(eps))
        scale = Tensor(rstd)
        shift = Tensor(-running_mean.data.reshape(stat_shape).astype(x.dtype) * rstd)
        if weight is not None:
            scale = scale * reshape(weight, stat_shape)
            shift = shift * reshape(weight, stat_shape)
        if bias is not None:
            shift = shift + reshape(bias, stat_shape)
        return x * scale + shift

    N = x.shape[0]
    n = x.size // C  # entries per channel
    if n < 2:
        raise ValueError(f"batch_norm: training needs more than one value per channel to compute a "
                         f"variance, got input of shape {tuple(x.shape)}")
    xv = reshape(x, (N, C, n // N))  # pool over axes 0 and 2
    fn = Normalize((0, 2), eps, weight is not None, bias is not None)
    y = fn(xv, *[reshape(p, (C, 1)) for p in (weight, bias) if p is not None])
    if running_mean is not None or running_var is not None:
        _same_device("batch_norm", x, *[r for r in (running_mean, running_var) if r is not None])
        with no_grad():
            if running_mean is not None:
                _ema_(running_mean, fn.mean.reshape(C), momentum)
            if running_var is not None:
                _ema_(running_var, fn.var.reshape(C) * (n / (n - 1)), momentum)
    return reshape(y, x.shape)


def _ema_(stat, value, momentum):
    """stat <- (1 - momentum) stat + momentum value, in place on stat's array."""
    data = stat.data
    data *= data.dtype.type(1 - momentum)
    data += (data.dtype.type(momentum) * value).astype(data.dtype, copy=False)


def _same_device(op, x, *stats):
    for s in stats:
        if s.device != x.device:
            raise RuntimeError(f"{op}: the input is on {x.device} but a running statistic is on "
                               f"{s.device}; move them to one device")


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Group normalisation: per sample, normalise each group of C/G channels over its channels and positions.

    y = weight_c * (x - mean_ng) / sqrt(var_ng + eps) + bias_c  for channel c in group g.
    x (N, C, *) with C divisible by num_groups = G; weight, bias (C,).
    Wu & He 2018; the UNet of notes §5.6 uses GroupNorm(8).
    """
    if x.ndim < 2:
        raise ValueError(f"group_norm: expected an input of shape (N, C, ...), got shape {tuple(x.shape)}")
    N, C = x.shape[:2]
    if not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm: num_groups={num_groups} does not divide the {C} channels "
                         f"of the input of shape {tuple(x.shape)}")
    _check_param("group_norm", "weight", weight, (C,), x)
    _check_param("group_norm", "bias", bias, (C,), x)
    G = int(num_groups)
    xv = reshape(x, (N, G, C // G, -1))  # (N, G, C/G, positions): pool over axes 2 and 3
    params = [reshape(p, (G, C // G, 1)) for p in (weight, bias) if p is not None]
    y = Normalize((2, 3), eps, weight is not None, bias is not None)(xv, *params)
    return reshape(y, x.shape)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalisation over the trailing dims ``normalized_shape``.

    y = weight * (x - mean) / sqrt(var + eps) + bias, mean and var over the last
    len(normalized_shape) dims.  x (*, *normalized_shape); weight, bias normalized_shape.
    Ba, Kiros & Hinton 2016 (pre-LN transformer blocks, DiT).
    """
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) \
        else tuple(int(n) for n in normalized_shape)
    k = len(shape)
    if k == 0 or k > x.ndim or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"layer_norm: normalized_shape {shape} does not match the trailing dims of "
                         f"the input of shape {tuple(x.shape)}")
    _check_param("layer_norm", "weight", weight, shape, x)
    _check_param("layer_norm", "bias", bias, shape, x)
    axes = tuple(range(x.ndim - k, x.ndim))
    return _normalize(x, axes, weight, bias, eps)

"""Loss functions, with PyTorch's names, arguments and reductions.

Regression:      mse_loss, l1_loss, gaussian_nll_loss
Classification:  binary_cross_entropy_with_logits, binary_cross_entropy,
                 cross_entropy, nll_loss

Every loss computes one value per element (or per position, for the class
losses) and then reduces with ``reduction``: 'mean' averages over all of them,
'sum' adds them, 'none' returns them as they are.

Where the notes use them: the VAE's reconstruction term (notes §2.5: binary
cross-entropy from logits for binary pixels, Gaussian NLL or MSE for real-valued
ones), the GAN discriminator and generator losses (§3, §3.2: binary
cross-entropy from logits on real/fake labels), and the diffusion objective
(§5.3-5.4: mean squared error between the predicted and the true noise).

Classification losses take *logits* where they can: log sigma(x) and
log softmax(x) computed from logits never take the log of a rounded-off 0.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Function, Tensor, is_grad_enabled
from .. import backend
from ..backend import xp_of
from . import math as _m
from .shape import getitem, reshape

__all__ = [
    "mse_loss", "l1_loss", "gaussian_nll_loss",
    "binary_cross_entropy_with_logits", "binary_cross_entropy",
    "cross_entropy", "nll_loss",
]

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------
# checking and converting arguments
# ----------------------------------------------------------------------------

def _check_input(input, reduction, loss):
    if not isinstance(input, Tensor):
        raise TypeError(f"{loss}: input must be a Tensor, got {type(input).__name__}")
    if input.dtype.kind != "f":
        raise TypeError(f"{loss}: input must be floating point, got dtype {input.dtype}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{loss}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _as_float(value, like: Tensor) -> Tensor:
    """A Tensor stays as it is; an array, list or number becomes a constant in like's dtype and device."""
    if isinstance(value, Tensor):
        return value
    array = value if hasattr(value, "dtype") and hasattr(value, "shape") else np.asarray(value)
    return Tensor(backend.to_device(array, like.device).astype(like.dtype, copy=False))


def _same_shape(input, target, loss):
    if input.shape != target.shape:
        raise ValueError(f"{loss}: input shape {input.shape} and target shape {target.shape} differ; "
                         "they must match exactly (reshape one of them first)")


def _broadcasts_onto(t, input, what, loss):
    """Check that ``t`` (a weight) broadcasts onto the input's shape without growing it."""
    try:
        ok = np.broadcast_shapes(t.shape, input.shape) == input.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{loss}: {what} of shape {t.shape} does not broadcast to the input shape {input.shape}")


def _reduce(loss, reduction):
    if reduction == "mean":
        return _m.mean(loss)
    if reduction == "sum":
        return _m.sum(loss)
    return loss


# ----------------------------------------------------------------------------
# regression
# ----------------------------------------------------------------------------

def mse_loss(input, target, reduction="mean"):  # noqa: A002 (PyTorch's names)
    """l = (x - t)^2 per element.  Shapes: input and target alike.

    The diffusion objective |eps - eps_theta(x_t, t)|^2 (notes §5.4).
    """
    _check_input(input, reduction, "mse_loss")
    target = _as_float(target, input)
    _same_shape(input, target, "mse_loss")
    d = input - target
    return _reduce(d * d, reduction)


def l1_loss(input, target, reduction="mean"):  # noqa: A002
    """l = |x - t| per element.  Shapes: input and target alike."""
    _check_input(input, reduction, "l1_loss")
    target = _as_float(target, input)
    _same_shape(input, target, "l1_loss")
    return _reduce(_m.abs(input - target), reduction)


def gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean"):  # noqa: A002
    """l = 0.5 (log v + (x - t)^2 / v),  v = max(var, eps);  plus 0.5 log(2 pi) when ``full``.

    The negative log-density of t under N(x, var), the Gaussian decoder of a VAE
    (notes §2.4-2.5).  Shapes: input, target (..., D); var the same shape, or
    with one dim of size 1, or without the last dim (one variance shared by it),
    or a Python float.
    As in PyTorch, the clamp at ``eps`` changes the value only: the gradient with
    respect to var passes through it as if it were not there.
    """
    name = "gaussian_nll_loss"
    _check_input(input, reduction, name)
    target = _as_float(target, input)
    _same_shape(input, target, name)
    if isinstance(var, (int, float, np.number)):
        var = Tensor(xp_of(input.data).full(input.shape, var, dtype=input.dtype))
    var = _as_float(var, input)
    if backend.is_host(var.data) and bool((var.data < 0).any()):   # free on the host; no device read
        raise ValueError(f"{name}: var has negative entries")
    if var.shape != input.shape:
        if var.shape == input.shape[:-1]:
            var = reshape(var, var.shape + (1,))  # one variance for the whole last dim
        else:
            differ = [i for i, (a, b) in enumerate(zip(input.shape, var.shape)) if a != b]
            if var.ndim != input.ndim or len(differ) != 1 or var.shape[differ[0]] != 1:
                raise ValueError(f"{name}: var of shape {var.shape} fits neither the input shape "
                                 f"{input.shape} nor it with one dim of size 1 or the last dim dropped")
    v = var.data
    # adding the constant (max(v, eps) - v) clamps the value but leaves d/dvar untouched
    var = var + Tensor(xp_of(v).maximum(v, eps) - v)
    d = input - target
    loss = 0.5 * (_m.log(var) + d * d / var)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce(loss, reduction)


# ----------------------------------------------------------------------------
# binary classification
# ----------------------------------------------------------------------------

class BinaryCrossEntropyWithLogits(Function):
    """l = -[t log sigma(x) + (1 - t) log(1 - sigma(x))] = max(x, 0) - x t + log(1 + e^-|x|).

    With a positive-class weight p:  l = (1 - t) x + (1 + (p - 1) t) log(1 + e^-x).
    Gradients:  dx = gy (sigma(x) - t)            [with p: gy ((1 + (p - 1) t) sigma(x) - p t)]
                dt = -gy x                        [with p: gy ((p - 1) log(1 + e^-x) - x)]
                dp = gy t log(1 + e^-x)
    Shapes: x, t alike; p broadcasts onto them (e.g. (C,) for (N, C)).  One op instead
    of a chain of ten: the GAN and VAE losses run it on every step (notes §2.5, §3).
    """

    def forward(self, x, t, p=None):
        xp = xp_of(x)
        e = xp.abs(x)
        xp.negative(e, out=e)
        xp.exp(e, out=e)  # e^-|x| lies in (0, 1]: exp cannot overflow, whatever the sign of x
        self.e = e
        if p is None:
            loss = xp.log1p(e)  # log1p keeps log(1 + tiny) exact where |x| is large
            loss += xp.clip(x, 0, xp.inf)  # log(1 + e^x) = max(x, 0) + log1p(e^-|x|)
            loss -= x * t
            return loss
        softplus_neg = xp.log1p(e)
        softplus_neg += xp.clip(-x, 0, xp.inf)  # log(1 + e^-x) = max(-x, 0) + log1p(e^-|x|)
        return (1 - t) * x + (1 + (p - 1) * t) * softplus_neg

    def _sigmoid(self):
        """sigma(x) from the saved e = e^-|x|:  1 / (1 + e) for x >= 0,  e / (1 + e) below."""
        x, e = self.inputs[0].data, self.e
        return xp_of(e).where(x >= 0, 1, e) / (1 + e)

    def backward(self, gy):
        x, t = self.inputs[0], self.inputs[1]
        p = self.inputs[2] if len(self.inputs) > 2 else None
        gx = gt = gp = None
        if x.requires_grad:
            # Under create_graph sigma(x) must be an op of x so it can be differentiated
            # again; otherwise the forward's e^-|x| gives it for three array passes.
            s = _m.sigmoid(x) if is_grad_enabled() else Tensor(self._sigmoid())
            gx = gy * (s - t) if p is None else gy * ((1.0 + (p - 1.0) * t) * s - p * t)
        if t.requires_grad or (p is not None and p.requires_grad):
            softplus_neg = _m.softplus(-x)
            if t.requires_grad:
                gt = -(gy * x) if p is None else gy * ((p - 1.0) * softplus_neg - x)
            if p is not None and p.requires_grad:
                gp = gy * t * softplus_neg
        return (gx, gt) if p is None else (gx, gt, gp)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",  # noqa: A002
                                     pos_weight=None):
    """Binary cross-entropy of targets t in [0, 1] given logits x (sigma(x) = P(t = 1)).

    Shapes: input and target alike; ``weight`` (per element) broadcasts onto them,
    ``pos_weight`` (weight of the positive term, per class) broadcasts along the
    last dim.  See BinaryCrossEntropyWithLogits for the equation.
    """
    name = "binary_cross_entropy_with_logits"
    _check_input(input, reduction, name)
    target = _as_float(target, input)
    _same_shape(input, target, name)
    args = (input, target)
    if pos_weight is not None:
        pos_weight = _as_float(pos_weight, input)
        _broadcasts_onto(pos_weight, input, "pos_weight", name)
        args += (pos_weight,)
    loss = BinaryCrossEntropyWithLogits()(*args)
    if weight is not None:
        weight = _as_float(weight, input)
        _broadcasts_onto(weight, input, "weight", name)
        loss = loss * weight
    return _reduce(loss, reduction)


_LOG_FLOOR = -100.0  # PyTorch clamps each log at -100, so p = 0 costs 100, not inf


def _clamped_log(x):
    """max(log x, -100) as minigen ops, never evaluating log(0) (so no inf * 0 = nan in a gradient)."""
    keep = x.data > math.exp(_LOG_FLOOR)
    return _m.where(keep, _m.log(_m.where(keep, x, 1.0)), _LOG_FLOOR)


class BinaryCrossEntropy(Function):
    """l = -[t log p + (1 - t) log(1 - p)] on probabilities p, each log clamped at -100.

    dp = gy (p - t) / max(p (1 - p), 1e-12)     (PyTorch's guard at p = 0 and p = 1)
    dt = gy (log(1 - p) - log p)                (clamped logs)
    Shapes: p, t alike.  Prefer binary_cross_entropy_with_logits: a sigmoid that
    rounds to exactly 0 or 1 here loses the gradient that logits keep.
    """

    def forward(self, p, t):
        xp = xp_of(p)
        with np.errstate(divide="ignore"):  # log(0) = -inf, clamped on the next line
            log_p = xp.maximum(xp.log(p), _LOG_FLOOR)
            log_1mp = xp.maximum(xp.log1p(-p), _LOG_FLOOR)
        return -(t * log_p + (1 - t) * log_1mp)

    def backward(self, gy):
        p, t = self.inputs
        gp = gt = None
        if p.requires_grad:
            gp = gy * (p - t) / _m.clip(p * (1.0 - p), min=1e-12)
        if t.requires_grad:
            gt = gy * (_clamped_log(1.0 - p) - _clamped_log(p))
        return gp, gt


def binary_cross_entropy(input, target, weight=None, reduction="mean"):  # noqa: A002
    """Binary cross-entropy of targets t given probabilities p = input in [0, 1].

    Shapes: input and target alike; ``weight`` broadcasts onto them.
    """
    name = "binary_cross_entropy"
    _check_input(input, reduction, name)
    target = _as_float(target, input)
    _same_shape(input, target, name)
    p = input.data
    if backend.is_host(p) and bool(((p < 0) | (p > 1)).any()):     # free on the host; no device read
        raise ValueError(f"{name}: input must hold probabilities in [0, 1] (found values from "
                         f"{float(p.min()):.4g} to {float(p.max()):.4g}); for logits use "
                         "binary_cross_entropy_with_logits")
    loss = BinaryCrossEntropy()(input, target)
    if weight is not None:
        weight = _as_float(weight, input)
        _broadcasts_onto(weight, input, "weight", name)
        loss = loss * weight
    return _reduce(loss, reduction)


# ----------------------------------------------------------------------------
# multi-class classification
# ----------------------------------------------------------------------------

def _class_dim(input, loss):
    if input.ndim == 0:
        raise ValueError(f"{loss}: input needs a class dim: (C,), (N, C) or (N, C, d1, ...), got a scalar")
    return 0 if input.ndim == 1 else 1


def _class_targets(input, target, loss):
    """Integer class targets as an array on input's device, checked for shape and range."""
    t = target.data if isinstance(target, Tensor) else target
    t = backend.on_device(t if backend.is_array(t) else np.asarray(t), input.device)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{loss}: target must hold integer class indices, got dtype {t.dtype}")
    want = () if input.ndim == 1 else input.shape[:1] + input.shape[2:]
    if t.shape != want:
        raise ValueError(f"{loss}: class-index target of shape {t.shape} does not fit input of shape "
                         f"{input.shape}; expected target shape {want} (the input without its class dim)")
    C = input.shape[_class_dim(input, loss)]
    if t.size and backend.is_host(t):   # free on the host; device targets were checked where they were made
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= C:
            raise IndexError(f"{loss}: class index {lo if lo < 0 else hi} is out of range for "
                             f"{C} classes (valid: 0 to {C - 1})")
    return t


def _class_weight(weight, input, C, loss):
    """A per-class weight as a constant array of shape (C,) (PyTorch gives it no gradient)."""
    if weight is None:
        return None
    w = weight.data if isinstance(weight, Tensor) else weight
    w = backend.to_device(w if hasattr(w, "dtype") else np.asarray(w), input.device).astype(input.dtype,
                                                                                            copy=False)
    if w.shape != (C,):
        raise ValueError(f"{loss}: weight must have shape ({C},), one entry per class, got {w.shape}")
    return w


def _pick(logp, t):
    """logp[n, t[n, d...], d...] for every position: the log-probability of each target class.

    Shapes: logp (N, C, d1, ...) and t (N, d1, ...) -> (N, d1, ...); logp (C,), t () -> ().
    """
    if logp.ndim == 1:
        return getitem(logp, t)
    xp = xp_of(t)
    index = [xp.arange(n).reshape([n if a == axis else 1 for a in range(t.ndim)])
             for axis, n in enumerate(t.shape)]  # an index grid over every position
    index.insert(1, t)  # ... and the target class in the class slot
    return getitem(logp, tuple(index))


def _nll(logp, t, w, reduction):
    """-w[t] logp[t] per position, reduced; 'mean' divides by the sum of w[t] (PyTorch's rule)."""
    if w is None:
        return _reduce(-_pick(logp, t), reduction)
    w_t = xp_of(w).asarray(w[t])  # (asarray: a 0-d t picks a NumPy scalar)
    loss = -(_pick(logp, t) * Tensor(w_t))
    if reduction == "mean":
        return _m.sum(loss) / Tensor(xp_of(w_t).asarray(w_t.sum()))
    return _reduce(loss, reduction)


def nll_loss(input, target, weight=None, reduction="mean"):  # noqa: A002
    """l = -w[t] log p[t] per position, from log-probabilities (e.g. log_softmax output).

    Shapes: input (N, C) or (N, C, d1, ...) or (C,); target integer (N,) or (N, d1, ...) or ();
    weight (C,).  'mean' divides by the summed weights of the targets.
    """
    name = "nll_loss"
    _check_input(input, reduction, name)
    _class_dim(input, name)
    t = _class_targets(input, target, name)
    C = input.shape[0 if input.ndim == 1 else 1]
    return _nll(input, t, _class_weight(weight, input, C, name), reduction)


def cross_entropy(input, target, weight=None, reduction="mean", label_smoothing=0.0):  # noqa: A002
    """l = -sum_c q_c log softmax(x)_c per position, q the target distribution.

    Targets are class indices (q one-hot: l = -log softmax(x)[t]) or class
    probabilities of the input's shape.  Label smoothing mixes q with the uniform
    distribution: q' = (1 - a) q + a / C.  ``weight`` (C,) scales each class's
    term; with index targets 'mean' divides by the summed weights of the targets.
    Shapes: input (N, C) or (N, C, d1, ...) or (C,); index target (N,) / (N, d1, ...) / ().
    The logits go through log_softmax, which subtracts the max before exponentiating.
    """
    name = "cross_entropy"
    _check_input(input, reduction, name)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must lie in [0, 1], got {label_smoothing}")
    cdim = _class_dim(input, name)
    C = input.shape[cdim]
    w = _class_weight(weight, input, C, name)
    w_b = None if w is None else Tensor(w.reshape((C,) + (1,) * (input.ndim - cdim - 1)))  # broadcasts on cdim
    logp = _m.log_softmax(input, cdim)

    kind = target.dtype.kind if hasattr(target, "dtype") else np.asarray(target).dtype.kind
    if kind == "f":  # class probabilities
        target = _as_float(target, input)
        _same_shape(input, target, name)
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + label_smoothing / C
        term = logp * target if w_b is None else logp * target * w_b
        return _reduce(-_m.sum(term, cdim), reduction)
    if kind not in "iu":
        raise TypeError(f"{name}: target must hold class indices (integers) or class probabilities "
                        f"(floats), got dtype kind {kind!r}")

    t = _class_targets(input, target, name)
    loss = _nll(logp, t, w, reduction)
    if not label_smoothing:
        return loss
    # the uniform part of q': -sum_c w_c log p_c per position, reduced like the nll part
    smooth = -_m.sum(logp if w_b is None else logp * w_b, cdim)
    if reduction == "mean":
        smooth = _m.sum(smooth) / (Tensor(xp_of(w).asarray(w[t].sum())) if w is not None else float(t.size))
    else:
        smooth = _reduce(smooth, reduction)
    return (1.0 - label_smoothing) * loss + (label_smoothing / C) * smooth

"""Scaled dot-product attention (Vaswani et al. 2017, "Attention is all you need").

    attention(Q, K, V) = softmax(Q K^T * scale + mask) V,      scale = 1/sqrt(E) by default

Each of the L queries takes a weighted average of the S values; the weights are
a softmax over how well the query matches each key.  Transformer blocks (the DiT
of notes §5.6) run it per head on (B, heads, tokens, head_dim) tensors; the
UNet's attention block runs it over the pixels of a feature map.

``scaled_dot_product_attention`` follows PyTorch's function of the same name:
boolean masks say which keys take part (True = attend), float masks are added to
the scores, ``is_causal`` lets query i see keys 0..i only.  The whole thing is one
fused ``Function``, so a forward allocates little more than the score matrix
and the output, and the backward is the closed form below instead of a chain of recorded ops.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Function, Tensor, is_grad_enabled
from .. import backend
from .linalg import matmul
from .math import exp, sum
from .parallel import split_batch
from .shape import transpose

__all__ = ["scaled_dot_product_attention"]


def _mT(x):
    """Swap the last two dims."""
    return transpose(x, -1, -2)


def _row_sums(a):
    """Sums over the last dim (kept as size 1) of an array or tensor, as a product
    with a column of ones: one BLAS call, several times faster than a NumPy
    reduction over short rows."""
    array = a.data if isinstance(a, Tensor) else a
    ones = backend.xp_of(array).ones((a.shape[-1], 1), dtype=a.dtype)
    return a @ (Tensor(ones) if isinstance(a, Tensor) else ones)


def _softmax_scores_into(p, q, k, scale, bias):
    """p = softmax(q k^T * scale + bias) along the keys, written into p; returns the mask of
    rows with no key left (their weights are 0)."""
    xp = backend.xp_of(p)
    # NumPy's batched matmul is slow when its right operand is a transposed view;
    # a contiguous copy of K^T (the smaller matrix) costs less than the slowdown.
    kt = xp.ascontiguousarray(k.swapaxes(-1, -2))
    if np.broadcast_shapes(q.shape[:-2], k.shape[:-2]) == p.shape[:-2]:
        s = xp.matmul(q, kt, out=p)                                      # (..., L, S)
    else:                   # the value's or the bias's leading dims are larger: broadcast into p
        p[...] = q @ kt
        s = p
    s *= s.dtype.type(scale)
    if bias is not None:
        s += bias
    # Stable softmax.  Shifting each row by its max makes every exponent <= 0, so
    # e^s cannot overflow.  The row max is the slowest step, and is only needed
    # when scores are large: if all of them lie in [-T, T], T = log(max_float / S) / 2,
    # no e^s overflows, no row sum exceeds max_float and none underflows to 0.
    # Masked rows (-inf) always take the shifted path, where a row masked out
    # entirely (max -inf) is shifted by 0 instead of giving -inf - (-inf) = nan.
    T = 0.5 * (math.log(float(xp.finfo(s.dtype).max)) - math.log(max(s.shape[-1], 1)))
    # the shortcut reads two numbers: free on the host, a stall on the GPU (which always shifts)
    if s.size and not (backend.is_host(s) and s.max() <= T and s.min() >= -T):
        m = s.max(axis=-1, keepdims=True)
        s -= xp.where(xp.isfinite(m), m, 0)
    xp.exp(s, out=s)
    total = _row_sums(s)
    empty = total == 0  # rows with no key left
    s /= xp.where(empty, 1, total)
    return empty


# buys: the small per-head products and the softmax on two cores, each with a one-thread BLAS
# (W5's attention (64, 4, 49, 32): forward 2.0 -> 1.4 ms, fwd+bwd 4.7 -> 3.1 ms)
def _over_heads(run, lead, *arrays):
    """run(cut) with cut the index of a range of the first leading dim, over ranges split over
    threads (``split_batch``) when every array is a NumPy array with that same first dim
    (nothing broadcast along it); otherwise run(...) once, over everything."""
    present = [a for a in arrays if a is not None]
    if lead and all(type(a) is np.ndarray and a.ndim == len(lead) + 2 and a.shape[0] == lead[0]
                    for a in present):
        split_batch(lambda a, b: run((slice(a, b),)), lead[0], max(a.size for a in present))
    else:
        run(Ellipsis)


class ScaledDotProductAttention(Function):
    """y = dropout(P) V,   P = softmax(S) along the keys,   S = Q K^T * scale + bias.

    Shapes: q (..., L, E), k (..., S, E), v (..., S, Ev), optional additive bias
    broadcastable to (..., L, S) (a float mask; -inf removes a key)  ->  y (..., L, Ev).
    A query whose keys are all removed gets weights 0 and output 0 (as PyTorch).

    Backward, with D the dropout keep mask scaled by 1/(1-p) (1 without dropout):

        dV = (P*D)^T dY,   dP = (dY V^T) * D,   dS = P * (dP - sum_features(dY * Y)),
        dQ = dS K * scale,   dK = dS^T Q * scale,   dbias = dS.

    Second derivatives are exact: under ``create_graph=True`` P is recomputed
    from q, k (and the bias) with minigen ops, so the formula above is recorded
    and can be differentiated; otherwise the P saved by the forward is used as a
    constant.  The dropout mask is a constant either way.
    """

    def __init__(self, scale, keep):
        self.scale = scale
        self.keep = keep  # scaled dropout keep mask (array) or None

    def forward(self, q, k, v, bias=None):
        xp = backend.xp_of(q)
        lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2],
                                   () if bias is None else bias.shape[:-2])
        L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
        dtype = xp.result_type(q, k, v)
        self.p = xp.empty(lead + (L, S), dtype=dtype)
        self.empty = xp.empty(lead + (L, 1), dtype=bool)
        y = xp.empty(lead + (L, Ev), dtype=dtype)

        def run(cut):
            self.empty[cut] = _softmax_scores_into(self.p[cut], q[cut], k[cut], self.scale,
                                                   None if bias is None else bias[cut])
            pd = self.p[cut] if self.keep is None else self.p[cut] * self.keep[cut]
            xp.matmul(pd, v[cut], out=y[cut])
        _over_heads(run, lead, q, k, v, bias)
        return y

    def _probs(self):
        """P as a tensor: recorded from q, k, bias under create_graph, else the saved array."""
        if not is_grad_enabled():
            return Tensor(self.p)
        q, k = self.inputs[0], self.inputs[1]
        s = matmul(q, _mT(k)) * self.scale
        if len(self.inputs) > 3:
            s = s + self.inputs[3]
        # The shift is a constant (P does not depend on it), so derivatives are unaffected.
        xp = backend.xp_of(self.p)
        m = s.data.max(axis=-1, keepdims=True)
        e = exp(s - Tensor(xp.where(xp.isfinite(m), m, 0)))
        return e / (sum(e, -1, keepdim=True) + Tensor(self.empty.astype(self.p.dtype)))

    def backward(self, gy):
        if not is_grad_enabled():
            return self._backward_arrays(gy.data)
        q, k, v = self.inputs[:3]
        p = self._probs()
        keep = Tensor(self.keep) if self.keep is not None else None
        pd = p * keep if keep is not None else p
        gq = gk = gv = gbias = None
        if v.requires_grad:
            gv = matmul(_mT(pd), gy)
        bias_grad = len(self.inputs) > 3 and self.inputs[3].requires_grad
        if q.requires_grad or k.requires_grad or bias_grad:
            gp = matmul(gy, _mT(v))
            if keep is not None:
                gp = gp * keep
            # sum_keys(dP * P) = sum_features(dY * Y), since Y = (P*D) V: a reduction
            # over Ev instead of S with no (L, S) product (Dao et al. 2022, FlashAttention).
            gs = p * (gp - _row_sums(gy * self.output()))
            if q.requires_grad:
                gq = matmul(gs, k) * self.scale
            if k.requires_grad:
                gk = matmul(_mT(gs), q) * self.scale
            if bias_grad:
                gbias = gs
        return (gq, gk, gv) + ((gbias,) if len(self.inputs) > 3 else ())

    # buys: no recorded ops (transposes, products, products by scalars), dS scaled once in place:
    # W5's attention fwd+bwd (64, 4, 49, 32) 5.2 -> 4.7 ms on one thread; W5's step 1.5-4 ms less again
    # with the heads split over two threads (``_over_heads``)
    def _backward_arrays(self, gy):
        """The plain backward (not recorded): the formulas above on arrays, wrapped as constants."""
        q, k, v = (t.data for t in self.inputs[:3])
        bias = self.inputs[3].data if len(self.inputs) > 3 else None
        need = [t.requires_grad for t in self.inputs] + [False]
        xp = backend.xp_of(gy)
        y = self.output().data
        lead = self.p.shape[:-2]
        # each gradient in the full (broadcast) batch shape; the engine sums it to its input's shape
        gq, gk, gv = (xp.empty(lead + t.shape[-2:], dtype=self.p.dtype) if want else None
                      for t, want in zip((q, k, v), need))
        gbias = xp.empty(self.p.shape, dtype=self.p.dtype) if need[3] else None

        def run(cut):
            p, g = self.p[cut], gy[cut]
            pd = p if self.keep is None else p * self.keep[cut]
            if gv is not None:
                xp.matmul(pd.swapaxes(-1, -2), g, out=gv[cut])
            if gq is None and gk is None and gbias is None:
                return
            gs = g @ xp.ascontiguousarray(v[cut].swapaxes(-1, -2))         # dP (..., L, S)
            if self.keep is not None:
                gs *= self.keep[cut]
            gs -= _row_sums(g * y[cut])                                      # dP - sum_features(dY * Y)
            gs *= p                                                          # dS
            if gbias is not None:
                gbias[cut] = gs
            gs *= gs.dtype.type(self.scale)
            if gq is not None:
                xp.matmul(gs, k[cut], out=gq[cut])
            if gk is not None:
                xp.matmul(gs.swapaxes(-1, -2), q[cut], out=gk[cut])
        _over_heads(run, lead, q, k, v, bias)
        grads = tuple(None if g is None else Tensor(g) for g in (gq, gk, gv, gbias))
        return grads[:3] + (grads[3:] if len(self.inputs) > 3 else ())


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, generator=None):
    """softmax(query key^T * scale + mask) value, with PyTorch's arguments.

    query (..., L, E), key (..., S, E), value (..., S, Ev) -> (..., L, Ev); the
    leading dims broadcast.  attn_mask broadcastable to (..., L, S): boolean (True
    = the key takes part) or float (added to the scores; may require grad).
    is_causal: query i attends to keys 0..i (top-left aligned, as PyTorch).
    scale: default 1/sqrt(E).  dropout_p: dropout on the attention weights, drawn
    from ``generator`` (default: the device's default generator).
    """
    op = "scaled_dot_product_attention"
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ValueError(f"{op}: {name} needs at least 2 dims (..., tokens, features), "
                             f"got shape {t.shape}")
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise ValueError(f"{op}: query {query.shape}, key {key.shape} and value {value.shape} do not fit: "
                         f"query and key need the same last dim (E), key and value the same "
                         f"number of tokens (S)")
    try:
        batch = np.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except ValueError:
        raise ValueError(f"{op}: the leading dims of query {query.shape}, key {key.shape} and value "
                         f"{value.shape} do not broadcast") from None
    L, S, E = query.shape[-2], key.shape[-2], query.shape[-1]
    score_shape = tuple(batch) + (L, S)
    xp = backend.xp_of(query.data)
    dtype = query.dtype

    bias = None
    if is_causal:
        if attn_mask is not None:
            raise ValueError(f"{op}: pass either attn_mask or is_causal=True, not both")
        allowed = xp.tril(xp.ones((L, S), dtype=bool))
        bias = Tensor(xp.where(allowed, dtype.type(0), dtype.type(-np.inf)))
    elif attn_mask is not None:
        mask = attn_mask if isinstance(attn_mask, Tensor) else Tensor(xp.asarray(attn_mask))
        if mask.device != query.device:
            raise RuntimeError(f"{op}: attn_mask is on {mask.device} but query is on {query.device}")
        try:
            fits = np.broadcast_shapes(mask.shape, score_shape) == score_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{op}: attn_mask of shape {mask.shape} does not broadcast to the "
                             f"scores' shape {score_shape} (..., L, S)")
        if mask.dtype == np.bool_:
            bias = Tensor(xp.where(mask.data, dtype.type(0), dtype.type(-np.inf)))
        elif mask.dtype.kind == "f":
            bias = mask  # added to the scores, differentiable
        else:
            raise TypeError(f"{op}: attn_mask must be boolean or floating, got dtype {mask.dtype}")

    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1), got {dropout_p}")
    keep = None
    if dropout_p > 0.0:
        gen = generator if generator is not None else backend.default_generator(query.device)
        keep = gen.bernoulli(1.0 - dropout_p, score_shape, dtype=dtype, device=query.device)
        keep *= dtype.type(1.0 / (1.0 - dropout_p))

    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    fn = ScaledDotProductAttention(scale, keep)
    return fn(query, key, value) if bias is None else fn(query, key, value, bias)

"""Matrix products: ``matmul`` (batched, broadcasting) and ``linear``.

For y = a @ b the gradients are  da = gy @ b^T  and  db = a^T @ gy  (transposes of
the last two dims).  When a batched ``a`` meets a plain matrix ``b`` (a layer
applied to (B, T, D) tokens), ``db`` is computed as one large matrix product over
the flattened batch instead of a stack of products that the engine would then
have to sum: same numbers, one BLAS call.
"""
from __future__ import annotations

from .. import backend
import numpy as np

from ..autograd import Function, Tensor, check_floating, is_grad_enabled
from .shape import reshape, transpose

__all__ = ["matmul", "linear"]


def _mT(x):
    """Swap the last two dims of a tensor."""
    return transpose(x, -1, -2)


class MatMul(Function):
    """y = a @ b, with NumPy's rules for 1-D operands and batch broadcasting.

    Shapes: a (..., M, K), b (..., K, N) -> y (..., M, N).
    """

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: operands must have at least one dimension; use mul for scalars")
        ka = a.shape[-1]
        kb = b.shape[-2] if b.ndim > 1 else b.shape[0]
        if ka != kb:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match "
                             f"(inner dimensions {ka} and {kb})")
        if a.ndim > 2 or b.ndim > 2:
            try:
                np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            except ValueError:
                raise ValueError(f"matmul: the batch dimensions of shapes {a.shape} and {b.shape} "
                                 f"({a.shape[:-2]} and {b.shape[:-2]}) do not broadcast") from None
        if b.ndim > 2 and b.strides[-2] == b.itemsize:
            # a transposed view as right operand makes batched BLAS slow: copy it once
            b = backend.xp_of(b).ascontiguousarray(b)
        return a @ b

    def backward(self, gy):
        a, b = self.inputs
        # Treat 1-D operands as matrices so one rule covers every case.
        a2 = reshape(a, (1,) + a.shape) if a.ndim == 1 else a
        b2 = reshape(b, b.shape + (1,)) if b.ndim == 1 else b
        gy2 = gy
        if a.ndim == 1:
            gy2 = reshape(gy2, gy2.shape[:-1] + (1,) + gy2.shape[-1:]) if b.ndim > 1 else reshape(gy2, (1,))
        if b.ndim == 1:
            gy2 = reshape(gy2, gy2.shape + (1,))
        if a.ndim == 1 and b.ndim == 1:
            gy2 = reshape(gy, (1, 1))

        ga = gb = None
        if a.requires_grad:
            ga = gy2 @ _mT(b2)
            if a.ndim == 1:
                ga = reshape(ga, ga.shape[:-2] + ga.shape[-1:])
        if b.requires_grad:
            if b2.ndim == 2 and a2.ndim > 2:  # a shared matrix: one big product
                k, m = a2.shape[-1], gy2.shape[-1]
                gb = _mT(reshape(a2, (-1, k))) @ reshape(gy2, (-1, m))
            else:
                gb = _mT(a2) @ gy2
            if b.ndim == 1:
                gb = reshape(gb, gb.shape[:-1])
        return ga, gb


def matmul(a, b):
    """a @ b; a float operand with an integer or bool one is refused (no silent float64)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor) and (a.dtype.kind == "f") != (b.dtype.kind == "f"):
        check_floating("matmul", a=a, b=b)
    return MatMul()(a, b)


def sum_rows(a):
    """The sum of the rows of a 2-D array, (R, K) -> (K,), as the product ones(R) @ a.

    One BLAS matrix-vector product: NumPy's reduction over axis 0 took about twice as long
    on the bias gradients of W5's linear layers (0.83 -> 0.43 ms for the four)."""
    return backend.xp_of(a).ones(a.shape[0], dtype=a.dtype) @ a


class Linear(Function):
    """y = x W^T + b, the fully connected layer.

    Shapes: x (..., in), W (out, in), b (out,) -> y (..., out).
    Gradients: dx = gy W,  dW = gy^T x (over all leading dims),  db = sum gy.
    """

    def forward(self, x, W, b=None):
        if W.ndim != 2 or x.ndim == 0:
            raise ValueError(f"linear: expected a 2-D weight (out_features, in_features) and an input with "
                             f"at least one dimension, got weight shape {W.shape} and input shape {x.shape}")
        if x.shape[-1] != W.shape[1]:
            raise ValueError(f"linear: input has {x.shape[-1]} features (shape {x.shape}) but the "
                             f"weight expects {W.shape[1]} (weight shape {W.shape})")
        if b is not None and b.shape != (W.shape[0],):
            raise ValueError(f"linear: bias must have shape ({W.shape[0]},), one value per output feature of "
                             f"the weight {W.shape}, got bias shape {b.shape}")
        # fold leading dims into one: (B, T, in) @ (in, out) as one matrix product, not B small ones
        y = (x.reshape(-1, x.shape[-1]) @ W.T).reshape(x.shape[:-1] + (W.shape[0],))
        if b is not None:
            y += b
        return y

    def backward(self, gy):
        if not is_grad_enabled():
            return self._backward_arrays(gy.data)
        # recorded (create_graph=True): the same products in ops, so they can be differentiated again
        x, W = self.inputs[0], self.inputs[1]
        gx = reshape(reshape(gy, (-1, gy.shape[-1])) @ W, x.shape) if x.requires_grad else None
        gW = None
        if W.requires_grad:
            x2 = reshape(x, (-1, x.shape[-1]))
            gy2 = reshape(gy, (-1, gy.shape[-1]))
            gW = _mT(gy2) @ x2
        if len(self.inputs) == 2:
            return gx, gW
        gb = None
        if self.inputs[2].requires_grad:
            gb = reshape(gy, (-1, gy.shape[-1])).sum(0)
        return gx, gW, gb

    def _backward_arrays(self, gy):
        """The plain backward: the products above on arrays, wrapped as constants."""
        # buys: no reshape / transpose / matmul / sum ops (nine per layer): about 0.4 ms of a W1 step (2%, one thread)
        x, W = self.inputs[0], self.inputs[1]
        g2 = gy.reshape(-1, gy.shape[-1])                       # (rows, out)
        gx = Tensor((g2 @ W.data).reshape(x.shape)) if x.requires_grad else None
        gW = Tensor(g2.T @ x.data.reshape(-1, x.shape[-1])) if W.requires_grad else None
        if len(self.inputs) == 2:
            return gx, gW
        gb = Tensor(sum_rows(g2)) if self.inputs[2].requires_grad else None
        return gx, gW, gb


def linear(x, weight, bias=None):
    """``x @ weight.T + bias``; weight is (out_features, in_features) as in PyTorch."""
    check_floating("linear", input=x, weight=weight, bias=bias)
    if bias is None:
        return Linear()(x, weight)
    return Linear()(x, weight, bias)

"""Ops that move values around without arithmetic: reshape, transpose, indexing,
concat / stack / split, padding, embedding lookups and one-hot rows.

Every op here is linear in its input, so its backward is another shape op (its
adjoint), and the adjoint's backward is the op again; that pairing is what makes
all of them differentiable twice:

    reshape       <->  reshape back          permute      <->  inverse permute
    broadcast_to  <->  sum_to                getitem      <->  scatter-add into zeros
    concat        <->  split                 pad          <->  crop (constant) / fold (reflect, replicate)

``stack``, ``chunk`` and ``embedding`` are built from these.  ``one_hot`` (labels
-> rows of the identity) is the odd one out: labels are data, so it has no backward.
"""
from __future__ import annotations

import numpy as np

from ..autograd import Function, Tensor
from .. import backend
from ..backend import xp_of

__all__ = [
    "reshape", "flatten", "unsqueeze", "squeeze", "transpose", "permute",
    "broadcast_to", "sum_to", "getitem", "astype", "to_device",
    "concat", "cat", "stack", "split", "chunk", "pad", "embedding", "one_hot",
]


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
    """x with a new ``shape`` holding the same number of elements (one entry may be -1)."""
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
    """x with its axes reordered by ``axes`` (e.g. (0, 2, 3, 1) for NCHW -> NHWC)."""
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
            return xp_of(x).broadcast_to(x, self.shape)
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
        y, k = x, 0
        while k < x.ndim and k in axes:
            k += 1
        if k:  # a leading run of reduced axes: one sum over a merged axis 0 adds contiguous slabs (fast)
            y = y.reshape((-1,) + y.shape[k:]).sum(axis=0)
            y = y.reshape((1,) * k + y.shape)
        rest = tuple(a for a in axes if a >= k)
        if rest:
            y = y.sum(axis=rest, keepdims=True)
        if lead:
            y = y.reshape(self.shape)
        if y.shape != self.shape:
            raise ValueError(f"sum_to: shape {x.shape} does not broadcast from {self.shape}")
        return y

    def backward(self, gy):
        return broadcast_to(gy, self.x_shape)


def broadcast_to(x, shape):
    """x repeated along broadcast dims to ``shape`` (NumPy broadcasting rules)."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return BroadcastTo(shape)(x)


def sum_to(x, shape):
    """x summed down to ``shape`` (the adjoint of broadcast_to); a no-op when the shapes agree."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return SumTo(shape)(x)


# ----------------------------------------------------------------------------
# indexing
# ----------------------------------------------------------------------------

def _index_arrays(index, device):
    """Make an index ready for NumPy/CuPy indexing on ``device``.

    Tensors inside the index become their arrays, lists become integer (or
    boolean) arrays, and every array is moved to the indexed tensor's device.
    Ints, slices (negative steps too), None and Ellipsis pass through.
    """
    def one(i):
        if isinstance(i, Tensor):
            i = i.data
        elif isinstance(i, list):
            i = np.asarray(i)
            if i.size == 0:
                i = i.astype(np.intp)  # [] would otherwise be a float array
        if backend.is_array(i):
            i = backend.to_device(i, device)
        return i

    if isinstance(index, tuple):
        return tuple(one(i) for i in index)
    return one(index)


def _is_basic(index):
    """True for indices made only of ints, slices, None and Ellipsis (views, no repeats)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)


class GetItem(Function):
    """y = x[index], with NumPy's indexing rules.

    The index may hold ints, slices (any step, negative too), None, Ellipsis,
    integer arrays (repeats allowed) and boolean masks, alone or in a tuple.
    dx = zeros of x's shape with gy added at ``index`` (see GetItemGrad).
    """

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
        xp = xp_of(gy)
        gx = xp.zeros(self.x_shape, dtype=gy.dtype)
        if _is_basic(self.index):
            gx[self.index] = gy  # basic indices never repeat an element
        else:
            xp.add.at(gx, self.index, gy)  # (CuPy has ufunc.at since v12)
        return gx

    def backward(self, ggx):
        return getitem(ggx, self.index)


def getitem(x, index):
    """``x[index]``; indices may be Tensors, arrays or lists (e.g. ``x[labels]``, ``x[mask]``)."""
    return GetItem(_index_arrays(index, x.device))(x)


# ----------------------------------------------------------------------------
# joining and splitting (each the other's adjoint)
# ----------------------------------------------------------------------------

def _norm_dim(dim, ndim, op):
    """``dim`` as a non-negative axis of an ndim-dimensional tensor, or a clear error."""
    if not isinstance(dim, (int, np.integer)) or not -ndim <= dim < ndim:
        raise IndexError(f"{op}: dim {dim} is out of range for tensors with {ndim} dimensions")
    return int(dim) % ndim


class Concat(Function):
    """y = [x_1, x_2, ...] joined along ``dim``;  dx_i = the matching slice of gy.

    Shapes: x_i equal except along ``dim``, where y has the sum of their sizes.
    """

    def __init__(self, dim):
        self.dim = dim

    def forward(self, *xs):
        self.sizes = [x.shape[self.dim] for x in xs]
        return _concat(xs, self.dim)

    def backward(self, gy):
        return split(gy, self.sizes, self.dim)


def _concat(xs, dim):
    """concatenate(xs, axis=dim); a large NumPy result joined along a later axis is built in two halves
    of the first axis on two threads (as ``math._split_binary``; the same entries either way)."""
    from .math import halves_worthwhile, split_halves
    axis = dim % xs[0].ndim
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    if axis == 0 or not halves_worthwhile(shape, xs):
        return xp_of(xs[0]).concatenate(xs, axis=dim)
    out = np.empty(shape, dtype=xs[0].dtype)
    split_halves(lambda lo, hi: np.concatenate([x[lo:hi] for x in xs], axis=axis, out=out[lo:hi]), shape[0])
    return out


class Split(Function):
    """(y_1, y_2, ...) = consecutive pieces of x along ``dim`` with the given sizes.

    dx = concat of the piece gradients, with zeros for pieces that got none.
    """

    def __init__(self, sizes, dim):
        self.sizes, self.dim = list(sizes), dim

    def forward(self, x):
        self.x_shape = x.shape
        cuts = np.cumsum(self.sizes)[:-1].tolist()
        return tuple(xp_of(x).split(x, cuts, axis=self.dim))

    def backward(self, *gys):
        known = next(g for g in gys if g is not None)
        xp = xp_of(known.data)
        pieces = []
        for g, n in zip(gys, self.sizes):
            if g is None:  # this piece did not reach the loss: its gradient is zero
                shape = self.x_shape[:self.dim] + (n,) + self.x_shape[self.dim + 1:]
                g = Tensor(xp.zeros(shape, dtype=known.dtype))
            pieces.append(g)
        return concat(pieces, self.dim)


def _check_tensor_list(tensors, op):
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{op}: expected a non-empty list of tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: element {i} is a {type(t).__name__}, not a Tensor")
    return tensors


def concat(tensors, dim=0):
    """Join tensors along an existing dim: shapes (.., a, ..), (.., b, ..) -> (.., a+b, ..)."""
    tensors = _check_tensor_list(tensors, "concat")
    ndim = tensors[0].ndim
    if ndim == 0:
        raise ValueError("concat: zero-dimensional tensors cannot be joined; use stack")
    d = _norm_dim(dim, ndim, "concat")
    first = tensors[0].shape
    for t in tensors[1:]:
        if t.ndim != ndim or t.shape[:d] + t.shape[d + 1:] != first[:d] + first[d + 1:]:
            raise ValueError(f"concat: shapes {first} and {t.shape} do not match outside dim {dim}")
    return Concat(d)(*tensors)


cat = concat  # PyTorch's other name


def stack(tensors, dim=0):
    """Join equal-shaped tensors along a new dim: k tensors of (A, B) -> (k, A, B) for dim=0."""
    tensors = _check_tensor_list(tensors, "stack")
    first = tensors[0].shape
    for t in tensors[1:]:
        if t.shape != first:
            raise ValueError(f"stack: all tensors need the same shape, got {first} and {t.shape} "
                             f"(stacking along dim {dim})")
    ndim = len(first) + 1
    d = _norm_dim(dim, ndim, "stack")
    return Concat(d)(*[reshape(t, first[:d] + (1,) + first[d:]) for t in tensors])


def split(x, split_size_or_sections, dim=0):
    """Cut x along ``dim`` into pieces; returns a tuple of tensors.

    An int gives pieces of that size (the last may be smaller), a list gives the
    size of each piece (they must add up to ``x.shape[dim]``).
    """
    d = _norm_dim(dim, x.ndim, "split")
    n = x.shape[d]
    if isinstance(split_size_or_sections, (int, np.integer)):
        size = int(split_size_or_sections)
        if size <= 0:
            raise ValueError(f"split: split size must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else [])
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if sum(sizes) != n or any(s < 0 for s in sizes):
            raise ValueError(f"split: sections {sizes} do not add up to the size {n} of dim {dim} "
                             f"(tensor of shape {x.shape})")
    return Split(sizes or [0], d)(x)


def chunk(x, chunks, dim=0):
    """Cut x into ``chunks`` pieces of size ceil(n / chunks) along ``dim`` (PyTorch may give fewer)."""
    if chunks <= 0:
        raise ValueError(f"chunk: number of chunks must be positive, got {chunks}")
    n = x.shape[_norm_dim(dim, x.ndim, "chunk")]
    return split(x, max(-(-n // chunks), 1), dim)


# ----------------------------------------------------------------------------
# padding
# ----------------------------------------------------------------------------

_PAD_MODES = ("constant", "reflect", "replicate")


def _along(axis, s):
    """An index that applies slice ``s`` to ``axis`` only."""
    return (slice(None),) * axis + (s,)


class Pad(Function):
    """y = x with borders added to its last dims (PyTorch's ``F.pad``).

    ``pad = (left_last, right_last, left_2nd_last, right_2nd_last, ...)``, so
    (1, 1, 2, 2) on (N, C, H, W) gives (N, C, H+4, W+2).
      constant:  the border holds ``value``; negative widths crop instead.
      reflect:   mirror without repeating the edge  (a b c | b a) ; widths < size.
      replicate: repeat the edge value               (a b c | c c).
    dx: constant mode crops gy back (a pad with the negated widths); reflect and
    replicate fold the border gradients back onto the entries they copied (PadGrad).
    """

    def __init__(self, widths, mode, value):
        self.widths, self.mode, self.value = widths, mode, value  # widths: [(l, r)] per axis

    def forward(self, x):
        xp = xp_of(x)
        if self.mode == "constant":
            crop = tuple(slice(max(-l, 0), n - max(-r, 0)) for (l, r), n in zip(self.widths, x.shape))
            x = x[crop]
            out_shape = tuple(n + max(l, 0) + max(r, 0) for (l, r), n in zip(self.widths, x.shape))
            y = xp.full(out_shape, self.value, dtype=x.dtype)
            y[tuple(slice(max(l, 0), max(l, 0) + n) for (l, _), n in zip(self.widths, x.shape))] = x
            return y
        return xp.pad(x, self.widths, mode="reflect" if self.mode == "reflect" else "edge")

    def backward(self, gy):
        if self.mode == "constant":
            return Pad([(-l, -r) for l, r in self.widths], "constant", 0.0)(gy)
        return PadGrad(self.widths, self.mode)(gy)


class PadGrad(Function):
    """The adjoint of reflect/replicate padding: add each border entry back onto its source.

    Along one axis of size n padded by (l, r): the interior gy[l:l+n] maps one to
    one; reflect adds the mirrored borders onto entries 1..l and n-1-r..n-2,
    replicate adds the summed borders onto the edge entries 0 and n-1.
    Its own backward is the padding again.
    """

    def __init__(self, widths, mode):
        self.widths, self.mode = widths, mode

    def forward(self, gy):
        g = gy
        for axis, (l, r) in enumerate(self.widths):
            if l == 0 and r == 0:
                continue
            n = g.shape[axis] - l - r
            core = g[_along(axis, slice(l, l + n))].copy()
            if self.mode == "reflect":
                left = g[_along(axis, slice(l - 1, None, -1) if l else slice(0, 0))]  # mirrored
                right = g[_along(axis, slice(l + n + r - 1, l + n - 1, -1))]
                core[_along(axis, slice(1, l + 1))] += left
                core[_along(axis, slice(n - 1 - r, n - 1))] += right
            else:  # replicate: every border entry copied the edge entry
                core[_along(axis, slice(0, 1))] += g[_along(axis, slice(0, l))].sum(axis=axis, keepdims=True)
                core[_along(axis, slice(n - 1, n))] += g[_along(axis, slice(l + n, None))].sum(axis=axis,
                                                                                               keepdims=True)
            g = core
        return g

    def backward(self, ggx):
        return Pad(self.widths, self.mode, 0.0)(ggx)


def pad(x, pad, mode="constant", value=0.0):  # noqa: A002 (PyTorch's names)
    """Pad the last ``len(pad) // 2`` dims of x; ``pad`` lists (left, right) from the last dim back."""
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: the pad tuple {pad} must have an even length of at most 2 * {x.ndim} "
                         f"(tensor of shape {x.shape})")
    if mode not in _PAD_MODES:
        raise ValueError(f"pad: unknown mode {mode!r}; minigen pads with {_PAD_MODES}")
    k = len(pad) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(pad[2 * i], pad[2 * i + 1]) for i in reversed(range(k))]
    for axis, ((l, r), n) in enumerate(zip(widths, x.shape)):
        if mode == "constant" and n + l + r < 0:
            raise ValueError(f"pad: widths ({l}, {r}) would crop dim {axis} of size {n} below zero")
        if mode != "constant" and (l < 0 or r < 0):
            raise ValueError(f"pad: negative widths crop, which only mode='constant' does; got {pad}")
        if mode == "reflect" and (l >= n or r >= n):
            raise ValueError(f"pad: reflect widths ({l}, {r}) must be smaller than the size {n} of "
                             f"dim {axis} (tensor of shape {x.shape})")
        if mode == "replicate" and (l or r) and n == 0:
            raise ValueError(f"pad: cannot replicate the edge of the empty dim {axis}")
    if all(w == (0, 0) for w in widths):
        return x
    return Pad(widths, mode, value)(x)


# ----------------------------------------------------------------------------
# embedding lookup and one-hot rows
# ----------------------------------------------------------------------------

def embedding(indices, weight):
    """y = weight[indices]: one row of the (V, D) table per index.

    Shapes: indices (any shape, integers in [0, V)), weight (V, D) -> (*indices.shape, D).
    The gradient scatter-adds gy's rows into a zero (V, D) table, so a row picked
    twice gets both gradients (getitem's backward).
    """
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        shape = weight.shape if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"embedding: weight must be a 2-D (num_embeddings, dim) Tensor, got {shape}")
    idx = indices.data if isinstance(indices, Tensor) else indices
    idx = backend.on_device(idx if backend.is_array(idx) else np.asarray(idx), weight.device)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    V = weight.shape[0]
    # checked where it is free (host indices): on the GPU it would stall every call on a device read
    if idx.size and backend.is_host(idx) and (int(idx.min()) < 0 or int(idx.max()) >= V):
        raise IndexError(f"embedding: index out of range: indices span [{int(idx.min())}, {int(idx.max())}] "
                         f"but the table has {V} rows")
    return GetItem(idx)(weight)


def one_hot(labels, num_classes, dtype=None):
    """y[b, k] = 1 if labels[b] == k else 0: class labels as rows of the identity.

    Shapes: labels (B,) integers in [0, num_classes) (a Tensor, a NumPy/CuPy array
    or a list) -> a constant Tensor (B, num_classes) of ``dtype`` (default: the
    default float dtype) on the labels' device (lists: the default device).  It
    carries no gradient: labels are data.  The conditional VAE and GAN concatenate
    it to their inputs (notes §4 (conditional LVMs), §4.1 (conditional GANs)).
    """
    idx = labels.data if isinstance(labels, Tensor) else labels
    if not backend.is_array(idx):
        idx = backend.to_device(np.asarray(idx), backend.get_default_device())
    if idx.dtype.kind not in "iu":
        raise ValueError(f"one_hot: labels must be integers, got dtype {idx.dtype}")
    if idx.ndim != 1:
        raise ValueError(f"one_hot: labels must be 1-D (B,), got shape {tuple(idx.shape)}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be a positive int, got {num_classes!r}")
    # checked where it is free (host labels): on the GPU it would stall every call on a device read
    if idx.size and backend.is_host(idx) and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {num_classes}), "
                         f"got values in [{int(idx.min())}, {int(idx.max())}]")
    xp = xp_of(idx)
    rows = idx[:, None] == xp.arange(int(num_classes))                 # (B, num_classes) booleans
    return Tensor(rows.astype(np.dtype(dtype or backend.get_default_dtype())))


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
    """x converted to floating ``dtype``, same shape; the gradient is converted back."""
    if x.dtype == np.dtype(dtype):
        return x
    return AsType(dtype)(x)


def to_device(x, device):
    """x copied to ``device`` ("cpu" or "gpu"), same shape; the gradient is copied back."""
    if x.device == backend.check_device(device):
        return x
    return ToDevice(device)(x)

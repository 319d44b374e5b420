"""Convolutions, pooling and resampling of NCHW images.

How a convolution becomes one matrix product (im2col)
-----------------------------------------------------
A 2-D convolution (PyTorch's, i.e. a cross-correlation) computes

    y[n, f, oh, ow] = b[f] + sum_{c, i, j} W[f, c, i, j] * xpad[n, c, oh*s + i*d, ow*s + j*d]

For every output pixel (n, oh, ow) the values it reads, c x kh x kw of them,
form one row of a "column matrix" cols (P, K) with P = N*OH*OW and
K = C*kh*kw.  The convolution is then ONE matrix product  Y = cols @ Wm,
with Wm the weight laid out as (K, F).  No copying loop is needed to build
cols: a strided *view* of the zero-padded input (``as_strided``) already has
shape (N, OH, OW, kh, kw, C), and reshaping it to (P, K) is a single copy.

Layout choices (they decide the speed):
* The padded input is stored channels-last (N, Hp, Wp, C), so in the window
  view the innermost run (kw taps x C channels) is contiguous memory.
* The product gives channels-last rows (P, F); one transpose makes NCHW.
* When the weight will need a gradient, the forward keeps cols for it (the
  weight gradient is cols^T @ gy): one copy less per step, at the price of
  holding kh*kw times the input's memory until the backward runs.

The three linear maps of a convolution
--------------------------------------
conv2d is linear in x and linear in W.  Its three "faces" are:
    forward          x, W  -> y      conv2d            (im2col + matmul)
    input gradient   gy, W -> gx     conv_transpose2d  (matmul + col2im)
    weight gradient  x, gy -> gW     Conv2dWeightGrad  (im2col + matmul)
col2im is the adjoint of im2col: each of the kh*kw taps adds its slab of
gradient columns back into the padded image.  conv_transpose2d *is* the input
gradient of conv2d (that is why DCGAN calls it "fractionally strided
convolution", notes §3.3), and the backward of each face is written with the
other two, so every face can be differentiated again (R1 and WGAN-GP
penalties on convolutional critics need that).

Groups split the channels into G independent convolutions; they appear as a
leading group axis in a batched matmul.

Fast CPU kernels
----------------
The kernels above are the reference: the formulas as written, the ones to read.
On NumPy arrays with groups=1 the three faces run fast kernels instead (same
sums, another order of additions; tests/test_conv_fast.py holds them to the
reference; ``FAST_KERNELS = False`` switches them off):
* the batch is cut into chunks; each chunk is padded channels-last and its
  columns copied into one reused, cache-sized buffer, then multiplied straight
  into its slice of the NCHW output.  No full column matrix exists, so the
  forward keeps nothing for the weight gradient, which rebuilds the columns
  chunk by chunk (W3's peak memory falls from ~1.4 GB to ~0.5 GB);
* the input gradient of a stride-1 convolution is a gather, not a scatter:
  conv2d of the padded gy with the flipped kernel, in/out channels swapped;
* a 1x1 convolution (stride 1, no padding) is one product per image, no im2col;
* with few input channels (C <= SMALL_CHANNELS: image layers) the forward and the weight
  gradient multiply by a "taps" matrix per image, (C*kh*kw, OH*OW), built from kh*kw strided
  slices of the padded NCHW image: the forward's product lands in NCHW directly; the same
  kernel gives the stride-1 input gradient of a layer with few output channels (its gather);
* with few output channels (a last layer, stride 1) one product per image computes every tap's
  plane at once from the padded image, and the planes are added at their shifts;
* the batch is split over threads (``parallel.split_batch``: two on a two-core
  machine), each running its own range's chunks with a one-thread BLAS, so the
  copies and transposes between the products use both cores too.
CuPy arrays and grouped convolutions run the reference kernels.

Also here: avg_pool2d and max_pool2d (strided window views), and interpolate
(nearest / bilinear), whose backward is the adjoint resampling (nearest x2
upsampling's adjoint sums each 2x2 block of the gradient).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..autograd import Function, Tensor, check_floating, is_grad_enabled
from .. import backend
from ..backend import xp_of
from .linalg import sum_rows
from .parallel import split_batch, sum_parts
from .shape import GetItemGrad, reshape

__all__ = ["conv2d", "conv_transpose2d", "avg_pool2d", "max_pool2d", "interpolate"]


# ----------------------------------------------------------------------------
# argument handling
# ----------------------------------------------------------------------------

def _pair(value, name, op):
    """An int or a pair of ints as a pair (a, b)."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")


def _out_size(size, k, s, p, d):
    """Output length of a convolution: floor((H + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class _Geometry:
    """stride, padding, dilation (each a pair) and groups of one convolution."""

    __slots__ = ("stride", "padding", "dilation", "groups")

    def __init__(self, stride, padding, dilation, groups):
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    @property
    def pads(self):
        """The padding as (top, bottom, left, right), the form the chunked kernels take."""
        (ph, pw) = self.padding
        return ph, ph, pw, pw


def _check_geometry(op, stride, padding, dilation, groups):
    if min(stride) < 1:
        raise ValueError(f"{op}: stride must be >= 1, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {padding}")
    if min(dilation) < 1:
        raise ValueError(f"{op}: dilation must be >= 1, got {dilation}")
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")


def _check_4d(op, name, t):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.ndim != 4:
        layout = "(N, C, H, W)" if name == "input" else "4-D"
        raise ValueError(f"{op}: expected a 4-D {name} {layout}, got shape {t.shape}")


# ----------------------------------------------------------------------------
# the array kernels: im2col, col2im and the three faces of a convolution
# ----------------------------------------------------------------------------
# Shapes used below:  x (N, C, H, W)   weight (F, C/G, kh, kw)   y (N, F, OH, OW)
# with G groups, Cg = C/G, Fg = F/G, P = N*OH*OW, K = kh*kw*Cg.

def _im2col(x, kh, kw, geo, out_hw):
    """Column matrix of x: (P, G, K), row p = the window of output pixel p.

    Built as a strided view (N, OH, OW, G, kh, kw, Cg) of the channels-last,
    zero-padded input, then copied once into a contiguous array.
    """
    xp = xp_of(x)
    N, C, H, W = x.shape
    (sh, sw), (ph, pw), (dh, dw), G = geo.stride, geo.padding, geo.dilation, geo.groups
    OH, OW = out_hw
    padded = xp.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=x.dtype)
    padded[:, ph:ph + H, pw:pw + W, :] = x.transpose(0, 2, 3, 1)
    s_n, s_h, s_w, s_c = padded.strides
    Cg = C // G
    windows = xp.lib.stride_tricks.as_strided(
        padded, shape=(N, OH, OW, G, kh, kw, Cg),
        strides=(s_n, sh * s_h, sw * s_w, Cg * s_c, dh * s_h, dw * s_w, s_c))
    return windows.reshape(N * OH * OW, G, kh * kw * Cg)  # the one copy


def _col2im(cols, x_shape, kh, kw, geo, out_hw):
    """The adjoint of im2col: add every tap's gradient back into the image.

    cols (kh*kw, G, P, Cg) holds, for each kernel tap (i, j), the gradient of
    the input pixels that tap read.  Returns an array of ``x_shape`` (NCHW).
    """
    xp = xp_of(cols)
    N, C, H, W = x_shape
    (sh, sw), (ph, pw), (dh, dw), G = geo.stride, geo.padding, geo.dilation, geo.groups
    OH, OW = out_hw
    Cg = C // G
    padded = xp.zeros((N, H + 2 * ph, W + 2 * pw, G, Cg), dtype=cols.dtype)
    for t in range(kh * kw):  # a loop over the taps only; each add covers all pixels at once
        i, j = divmod(t, kw)
        tap = cols[t].reshape(G, N, OH, OW, Cg).transpose(1, 2, 3, 0, 4)
        padded[:, i * dh:i * dh + sh * (OH - 1) + 1:sh, j * dw:j * dw + sw * (OW - 1) + 1:sw] += tap
    inner = padded[:, ph:ph + H, pw:pw + W]  # (N, H, W, G, Cg); the padding's gradient is dropped
    return xp.ascontiguousarray(inner.transpose(0, 3, 4, 1, 2)).reshape(N, C, H, W)


def _weight_as_columns(w, G):
    """(F, Cg, kh, kw) -> (G, K, Fg), rows ordered (kh, kw, Cg) like the columns of im2col."""
    F, Cg, kh, kw = w.shape
    return w.reshape(G, F // G, Cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(G, kh * kw * Cg, F // G)


def _grad_as_rows(gy, G):
    """(N, F, OH, OW) -> (G, P, Fg): one row of output gradients per output pixel."""
    xp = xp_of(gy)
    N, F, OH, OW = gy.shape
    rows = xp.ascontiguousarray(gy.reshape(N, G, F // G, OH, OW).transpose(1, 0, 3, 4, 2))
    return rows.reshape(G, N * OH * OW, F // G)


def _conv_forward(x, w, b, geo, out_hw):
    """y = cols @ Wm (+ b), returned NCHW with spatial size ``out_hw``, and the cols."""
    xp = xp_of(x)
    N = x.shape[0]
    F, _, kh, kw = w.shape
    G = geo.groups
    OH, OW = out_hw
    cols = _im2col(x, kh, kw, geo, out_hw)                                 # (P, G, K)
    y = xp.matmul(cols.transpose(1, 0, 2), _weight_as_columns(w, G))      # (G, P, Fg)
    if b is not None:
        y += b.reshape(G, 1, F // G)
    y = y.reshape(G, N, OH, OW, F // G).transpose(1, 0, 4, 2, 3)          # (N, G, Fg, OH, OW)
    return xp.ascontiguousarray(y).reshape(N, F, OH, OW), cols


def _conv_input_grad(gy, w, geo, x_shape, rows=None):
    """gx = col2im(gy_rows @ Wm^T): conv2d's input gradient, i.e. conv_transpose2d.

    ``rows`` is _grad_as_rows(gy) when the caller has it already.
    """
    xp = xp_of(gy)
    F, Cg, kh, kw = w.shape
    G = geo.groups
    taps = w.reshape(G, F // G, Cg, kh, kw).transpose(3, 4, 0, 1, 2).reshape(kh * kw, G, F // G, Cg)
    # one product per tap (a batched matmul), so each tap's columns are contiguous for col2im
    rows = _grad_as_rows(gy, G) if rows is None else rows                 # (G, P, Fg)
    cols = xp.matmul(rows[None], taps)                                     # (kh*kw, G, P, Cg)
    return _col2im(cols, x_shape, kh, kw, geo, gy.shape[2:])


def _conv_weight_grad(x, gy, geo, w_shape, cols=None, rows=None):
    """gW = cols^T @ gy_rows: the correlation of the input with the output gradient.

    ``cols`` (im2col of x) and ``rows`` (gy as rows) are used when the caller has them.
    """
    xp = xp_of(x)
    F, Cg, kh, kw = w_shape
    G = geo.groups
    cols = _im2col(x, kh, kw, geo, gy.shape[2:]) if cols is None else cols  # (P, G, K)
    rows = _grad_as_rows(gy, G) if rows is None else rows                  # (G, P, Fg)
    gw = xp.matmul(cols.transpose(1, 2, 0), rows)                          # (G, K, Fg)
    gw = gw.reshape(G, kh, kw, Cg, F // G).transpose(0, 4, 3, 1, 2)        # (G, Fg, Cg, kh, kw)
    return xp.ascontiguousarray(gw).reshape(F, Cg, kh, kw)


# ----------------------------------------------------------------------------
# fast CPU kernels (NumPy only): the same three faces, chunked over the batch
# ----------------------------------------------------------------------------
# The reference kernels above build the whole column matrix (kh*kw times the
# input, written to and read back from main memory) and pay for transposes around
# every product.  The kernels below build the columns of a few images at a time
# in one reused, cache-sized buffer (see the module docstring).

FAST_KERNELS = True      # False: every convolution runs the reference kernels above
CHUNK_BYTES = 16 << 20        # column buffer on one thread (4 and 16 MiB: best on W3/W4 at 2 BLAS threads; 64 MiB worse)
SPLIT_CHUNK_BYTES = 1 << 20   # per thread when the batch is split (0.5-1 MiB best on W3; 16 MiB 11% slower)
fast_calls = {"forward": 0, "input_grad": 0, "weight_grad": 0, "conv1x1": 0, "small_channels": 0, "few_outputs": 0}   # how often each fast kernel ran


def _use_fast(geo, *arrays):
    return FAST_KERNELS and geo.groups == 1 and all(type(a) is np.ndarray for a in arrays)


def _chunk_bytes(split):
    """The column buffer's size: smaller when the batch is split over threads (the tests shrink both)."""
    return min(CHUNK_BYTES, SPLIT_CHUNK_BYTES) if split else CHUNK_BYTES


def _cropped(x, pads):
    """(the part of x (NCHW) inside the padding ``pads`` = (top, bottom, left, right), where it starts in
    the padded image): a negative pad crops x on that side."""
    H, W = x.shape[2:]
    top, bottom, left, right = pads
    src = x[:, :, max(0, -top):H - max(0, -bottom), max(0, -left):W - max(0, -right)]
    return src, (max(0, top), max(0, left))


def _chunks(x, pads, kh, kw, stride, dilation, out_hw, chunk_bytes=None):
    """Yield (n0, n, cols): cols (n, OH*OW, K) are the im2col rows of images n0..n0+n-1 of x.

    x is NCHW; ``pads`` = (top, bottom, left, right) zero padding (negative: crop).  Each
    chunk is padded channels-last and copied into its columns, K ordered (kh, kw, C),
    in two buffers reused by every chunk: a chunk's cols are valid until the next one.
    """
    N, C, H, W = x.shape
    top, bottom, left, right = pads
    OH, OW = out_hw
    Q, K = OH * OW, kh * kw * C
    step = max(1, min(N, (chunk_bytes or CHUNK_BYTES) // (Q * K * x.itemsize)))
    padded = np.zeros((step, H + top + bottom, W + left + right, C), dtype=x.dtype)  # border stays 0
    src, (r, c) = _cropped(x, pads)
    inner = padded[:, r:r + src.shape[2], c:c + src.shape[3], :]
    s_n, s_h, s_w, s_c = padded.strides
    windows = np.lib.stride_tricks.as_strided(
        padded, shape=(step, OH, OW, kh, kw, C),
        strides=(s_n, stride[0] * s_h, stride[1] * s_w, dilation[0] * s_h, dilation[1] * s_w, s_c))
    buf = np.empty(step * Q * K, dtype=x.dtype)
    for n0 in range(0, N, step):
        n = min(step, N - n0)
        inner[:n] = src[n0:n0 + n].transpose(0, 2, 3, 1)
        cols = buf[:n * Q * K].reshape(n, OH, OW, kh, kw, C)
        np.copyto(cols, windows[:n])
        yield n0, n, cols.reshape(n, Q, K)


def _conv_nhwc_into(x, pads, wm, kh, kw, stride, dilation, out_hw):
    """y (N, F, OH, OW) = conv of x (NCHW, zero padded by ``pads``) with wm (F, K), K ordered (kh, kw, C).

    The batch is split over ``split_batch``'s threads; each range runs its own chunks."""
    N = x.shape[0]
    F = wm.shape[0]
    Q = out_hw[0] * out_hw[1]
    y = np.empty((N, F, Q), dtype=np.result_type(x, wm))

    def run(a, b):
        rows = None
        for n0, n, cols in _chunks(x[a:b], pads, kh, kw, stride, dilation, out_hw, _chunk_bytes(b - a < N)):
            if rows is None:
                rows = np.empty((n * Q, F), dtype=y.dtype)      # one product per chunk, channels-last rows
            np.matmul(cols.reshape(n * Q, -1), wm.T, out=rows[:n * Q])
            y[a + n0:a + n0 + n] = rows[:n * Q].reshape(n, Q, F).transpose(0, 2, 1)   # a cache-sized transpose
    split_batch(run, N, N * Q * wm.shape[1])
    return y.reshape((N, F) + tuple(out_hw))


# buys: no full cols in memory, transposes in cache (0.5-0.75x the time of _conv_forward, 1 thread)
def _conv_forward_chunked(x, w, b, geo, out_hw):
    """_conv_forward (groups 1, NumPy), im2col chunk by chunk; returns y only."""
    F, C, kh, kw = w.shape
    wm = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(F, kh * kw * C)   # (F, K) rows (kh, kw, C)
    y = _conv_nhwc_into(x, geo.pads, wm, kh, kw, geo.stride, geo.dilation, out_hw)
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    fast_calls["forward"] += 1
    return y


# buys: one GEMM per chunk, no kh*kw GEMMs and scatter-add col2im (0.3-0.8x of _conv_input_grad, 1 thread)
def _conv_input_grad_gather(gy, w, geo, x_shape):
    """_conv_input_grad for stride 1 (groups 1, NumPy) as a gather: conv2d of the padded gy
    with the flipped kernel, in and out channels swapped.

    gx[h] = sum_i gy[h + p - i d] W[i] = sum_i' gpad[h + i' d] W[kh-1-i'] with gpad = gy shifted
    down by top = d (kh-1) - p (a negative shift crops gy).
    """
    N, C, H, W = x_shape
    F, _, kh, kw = w.shape
    wm = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 2, 3, 0)).reshape(C, kh * kw * F)
    gx = _conv_nhwc_into(gy, _gather_pads(gy, w, geo, x_shape), wm, kh, kw, (1, 1), geo.dilation, (H, W))
    fast_calls["input_grad"] += 1
    return gx


def _gather_pads(gy, w, geo, x_shape):
    """(top, bottom, left, right): the zero padding of gy (negative: crop) that the gather reads."""
    H, W = x_shape[2:]
    kh, kw = w.shape[2:]
    (dh, dw), (ph, pw) = geo.dilation, geo.padding
    OH, OW = gy.shape[2:]
    top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    return (top, H + dh * (kh - 1) - top - OH, left, W + dw * (kw - 1) - left - OW)


# buys: col2im in cache, no (kh*kw, P, C) tap tensor (W3's stride-2 convs: same at 1 thread, ~3x at 2 on a busy CPU)
def _conv_input_grad_chunked(gy, w, geo, x_shape):
    """_conv_input_grad (groups 1, NumPy, any stride), one chunk of images at a time:
    the chunk's gradient columns gy_rows @ Wm^T, then col2im into a reused padded buffer."""
    N, C, H, W = x_shape
    F, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    OH, OW = gy.shape[2:]
    Q, K = OH * OW, kh * kw * C
    wm = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(F, K)        # (F, K) columns (kh, kw, C)
    Hp = max(H + 2 * ph, dh * (kh - 1) + sh * (OH - 1) + 1)
    Wp = max(W + 2 * pw, dw * (kw - 1) + sw * (OW - 1) + 1)
    dtype = np.result_type(gy, w)
    gx = np.empty((N, C, H, W), dtype=dtype)

    def run(a, b):
        step = max(1, min(b - a, _chunk_bytes(b - a < N) // (Q * K * gy.itemsize)))
        padded = np.empty((step, Hp, Wp, C), dtype=dtype)
        cols = np.empty((step * Q, K), dtype=dtype)
        for n0 in range(a, b, step):
            n = min(step, b - n0)
            rows = gy[n0:n0 + n].reshape(n, F, Q).transpose(0, 2, 1).reshape(n * Q, F)   # a small copy
            taps = np.matmul(rows, wm, out=cols[:n * Q]).reshape(n, OH, OW, kh, kw, C)
            p = padded[:n]
            p[...] = 0
            for i in range(kh):
                for j in range(kw):
                    hs, ws = slice(i * dh, i * dh + sh * (OH - 1) + 1, sh), slice(j * dw, j * dw + sw * (OW - 1) + 1, sw)
                    p[:, hs, ws] += taps[:, :, :, i, j]
            gx[n0:n0 + n] = p[:, ph:ph + H, pw:pw + W].transpose(0, 3, 1, 2)
    split_batch(run, N, N * Q * K)
    fast_calls["input_grad"] += 1
    return gx


# buys: no cols kept from the forward: W3 peak RSS 1.4 GB -> 0.5 GB (0.5-0.9x the time of _conv_weight_grad)
def _conv_weight_grad_chunked(x, gy, geo, w_shape):
    """_conv_weight_grad (groups 1, NumPy): gW (F, K) += gy_chunk (F, n*OH*OW) @ cols_chunk."""
    F, C, kh, kw = w_shape
    N = x.shape[0]
    Q = gy.shape[2] * gy.shape[3]
    gyq = gy.reshape(N, F, Q)

    def run(a, b):     # this range's share of gW
        gw = np.zeros((F, kh * kw * C), dtype=np.result_type(x, gy))
        for n0, n, cols in _chunks(x[a:b], geo.pads, kh, kw, geo.stride, geo.dilation, gy.shape[2:],
                                   _chunk_bytes(b - a < N)):
            g = gyq[a + n0:a + n0 + n].transpose(1, 0, 2).reshape(F, n * Q)    # a small copy (one chunk of gy)
            gw += g @ cols.reshape(n * Q, -1)
        return gw
    gw = sum_parts(split_batch(run, N, N * Q * kh * kw * C))
    fast_calls["weight_grad"] += 1
    return np.ascontiguousarray(gw.reshape(F, kh, kw, C).transpose(0, 3, 1, 2))


# buys: a 1x1 convolution is one product per image, straight between NCHW arrays: no im2col,
# no transposes ((256, 96, 28, 28) -> 32 forward 19.1 -> 8.6 ms: benchmarks/README.md)
def _per_image(x):
    """(N, C, H, W) -> (N, C, H*W), a view."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _conv1x1_forward(x, w, b):
    """y[n] (F, H*W) = W (F, C) @ x[n] (C, H*W): conv2d with a 1x1 kernel, stride 1, no padding."""
    wm = w.reshape(w.shape[0], -1)
    y = np.empty((x.shape[0], wm.shape[0]) + x.shape[2:], dtype=np.result_type(x, w))
    xs, ys = _per_image(x), _per_image(y)
    split_batch(lambda a, b_: np.matmul(wm, xs[a:b_], out=ys[a:b_]), x.shape[0], x.size)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    fast_calls["conv1x1"] += 1
    return y


def _conv1x1_input_grad(gy, w):
    """gx[n] (C, H*W) = W^T (C, F) @ gy[n] (F, H*W)."""
    wt = w.reshape(w.shape[0], -1).T
    gx = np.empty((gy.shape[0], wt.shape[0]) + gy.shape[2:], dtype=np.result_type(gy, w))
    gys, gxs = _per_image(gy), _per_image(gx)
    split_batch(lambda a, b: np.matmul(wt, gys[a:b], out=gxs[a:b]), gy.shape[0], gy.size)
    fast_calls["conv1x1"] += 1
    return gx


def _conv1x1_weight_grad(x, gy):
    """gW (F, C) = sum_n gy[n] (F, H*W) @ x[n]^T (H*W, C), summed per batch range, then over them."""
    xs, gys = _per_image(x), _per_image(gy)
    gw = sum_parts(split_batch(lambda a, b: np.matmul(gys[a:b], xs[a:b].transpose(0, 2, 1)).sum(0),
                               x.shape[0], x.size))
    fast_calls["conv1x1"] += 1
    return gw.reshape(gy.shape[1], x.shape[1], 1, 1)


def _is_1x1(w_shape, geo, hw_a, hw_b):
    """A 1x1 kernel, stride 1, no padding, and both images of the same size: a plain product."""
    return (tuple(w_shape[2:]) == (1, 1) and geo.stride == (1, 1) and geo.padding == (0, 0)
            and tuple(hw_a) == tuple(hw_b))


# buys: for few input channels (image layers, C = 1, 3, 4) the products W (F, C*kh*kw) @ taps
# (C*kh*kw, OH*OW) land in NCHW directly: no im2col copy of kw*C-entry runs, no transpose of the
# output (W2's first layer forward 1.05 -> 0.42 ms, W3's stem 1.72 -> 0.57 ms: benchmarks/README.md)
SMALL_CHANNELS = 4   # input channels up to this take the small-channel kernels
MACS_PER_WORK = 128  # they tell split_batch their work as multiply-adds / 128: its threshold (2^18) is then
                     # 2^25 multiply-adds (W3's stem, 1.4e7, took 0.57 ms on one thread, 0.82 ms split)


def _small_split(run, N, macs):
    """split_batch for the small-channel kernels: ``macs`` multiply-adds over N images."""
    return split_batch(run, N, macs // MACS_PER_WORK)


def _taps(x, pads, kh, kw, stride, dilation, out_hw, chunk_bytes):
    """Yield (n0, n, taps): taps (n, C*kh*kw, OH*OW) for images n0..n0+n-1 of x (NCHW) zero padded
    by ``pads`` = (top, bottom, left, right) (negative: crop), the rows ordered (c, i, j) like
    w.reshape(F, -1); row (c, i, j) is the strided slice of the padded image that tap (i, j) of
    channel c reads.  Buffers are reused: a chunk's taps are valid until the next one."""
    N, C, H, W = x.shape
    top, bottom, left, right = pads
    (sh, sw), (dh, dw) = stride, dilation
    OH, OW = out_hw
    step = max(1, min(N, chunk_bytes // (C * kh * kw * OH * OW * x.itemsize)))
    padded = np.zeros((step, C, H + top + bottom, W + left + right), dtype=x.dtype)   # the border stays 0
    src, (r, c) = _cropped(x, pads)
    taps = np.empty((step, C, kh, kw, OH, OW), dtype=x.dtype)
    for n0 in range(0, N, step):
        n = min(step, N - n0)
        padded[:n, :, r:r + src.shape[2], c:c + src.shape[3]] = src[n0:n0 + n]
        for i in range(kh):
            for j in range(kw):
                taps[:n, :, i, j] = padded[:n, :, i * dh:i * dh + sh * (OH - 1) + 1:sh,
                                           j * dw:j * dw + sw * (OW - 1) + 1:sw]
        yield n0, n, taps[:n].reshape(n, C * kh * kw, OH * OW)


def _conv_nchw_small_into(x, pads, wm, kh, kw, stride, dilation, out_hw):
    """y (N, F, OH, OW) = conv of x (NCHW, few channels, zero padded by ``pads``) with wm (F, C*kh*kw),
    columns ordered (c, i, j): y[n] = wm @ taps[n], one product per image."""
    N = x.shape[0]
    F = wm.shape[0]
    Q = out_hw[0] * out_hw[1]
    y = np.empty((N, F, Q), dtype=np.result_type(x, wm))

    def run(a, b):
        for n0, n, taps in _taps(x[a:b], pads, kh, kw, stride, dilation, out_hw, _chunk_bytes(b - a < N)):
            np.matmul(wm, taps, out=y[a + n0:a + n0 + n])
    _small_split(run, N, N * Q * wm.shape[1] * F)
    return y.reshape((N, F) + tuple(out_hw))


def _conv_forward_small(x, w, b, geo, out_hw):
    """_conv_forward (groups 1, NumPy, C <= SMALL_CHANNELS): y[n] (F, OH*OW) = W (F, K) @ taps[n]."""
    F, C, kh, kw = w.shape
    y = _conv_nchw_small_into(x, geo.pads, w.reshape(F, C * kh * kw), kh, kw, geo.stride, geo.dilation, out_hw)
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    fast_calls["small_channels"] += 1
    return y


def _conv_input_grad_small(gy, w, geo, x_shape):
    """_conv_input_grad for stride 1 and few output channels of the convolution (F <= SMALL_CHANNELS):
    the gather of ``_conv_input_grad_gather`` (conv of the padded gy with the flipped kernel, in and
    out channels swapped) with gy's F channels as the small-channel kernel's input."""
    N, C, H, W = x_shape
    F, _, kh, kw = w.shape
    wm = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(C, F * kh * kw)
    fast_calls["small_channels"] += 1
    return _conv_nchw_small_into(gy, _gather_pads(gy, w, geo, x_shape), wm, kh, kw, (1, 1), geo.dilation, (H, W))


def _conv_weight_grad_small(x, gy, geo, w_shape):
    """_conv_weight_grad (groups 1, NumPy, C <= SMALL_CHANNELS): gW (F, K) = sum_n gy[n] (F, OH*OW) @ taps[n]^T."""
    N = x.shape[0]
    F, C, kh, kw = w_shape
    Q = gy.shape[2] * gy.shape[3]
    gyq = gy.reshape(N, F, Q)

    def run(a, b):     # this range's share of gW
        gw = np.zeros((F, C * kh * kw), dtype=np.result_type(x, gy))
        for n0, n, taps in _taps(x[a:b], geo.pads, kh, kw, geo.stride, geo.dilation, gy.shape[2:],
                                  _chunk_bytes(b - a < N)):
            gw += np.matmul(gyq[a + n0:a + n0 + n], taps.transpose(0, 2, 1)).sum(0)
        return gw
    gw = sum_parts(_small_split(run, N, N * Q * C * kh * kw * F))
    fast_calls["small_channels"] += 1
    return gw.reshape(w_shape)


# buys: for few output channels (a network's last layer, F <= SMALL_CHANNELS) one product per
# image reads the padded image once for all kh*kw taps, Z = W_taps (kh*kw*F, C) @ xpad (C, Hp*Wp),
# and the taps' planes are added at their shifts: no im2col of kh*kw times the input for F = 1
# (W6's last layer (256, 32, 28, 28) -> 1: forward 14.5 -> 5.0 ms: benchmarks/README.md)
def _few_buffers(x, geo, rows, a, b):
    """For images a..b of x: (step, padded, (Hp, Wp)): images per chunk, so that the chunk's padded
    images and its ``rows`` planes (kh*kw*F of them) fit the column buffer, and a zero-padded buffer."""
    N, C, H, W = x.shape
    (ph, pw) = geo.padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    step = max(1, min(b - a, _chunk_bytes(b - a < N) // ((C + rows) * Hp * Wp * x.itemsize)))
    return step, np.zeros((step, C, Hp, Wp), dtype=x.dtype), (Hp, Wp)        # the border stays 0


def _conv_forward_few(x, w, b, geo, out_hw):
    """_conv_forward (groups 1, NumPy, stride 1, F <= SMALL_CHANNELS):
    y[n, f] = sum_{i,j} Z[n, (i, j, f)] shifted by (i d, j d),  Z[n] = W_taps @ xpad[n] (C, Hp*Wp)."""
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    (ph, pw), (dh, dw) = geo.padding, geo.dilation
    OH, OW = out_hw
    wt = np.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw * F, C)   # rows (i, j, f)
    y = np.empty((N, F, OH, OW), dtype=np.result_type(x, w))

    def run(a, b_):
        step, padded, (Hp, Wp) = _few_buffers(x, geo, kh * kw * F, a, b_)
        z = np.empty((step, kh * kw * F, Hp * Wp), dtype=y.dtype)
        for n0 in range(a, b_, step):
            n = min(step, b_ - n0)
            padded[:n, :, ph:ph + H, pw:pw + W] = x[n0:n0 + n]
            np.matmul(wt, padded[:n].reshape(n, C, Hp * Wp), out=z[:n])
            planes = z[:n].reshape(n, kh, kw, F, Hp, Wp)
            out = y[n0:n0 + n]
            out[...] = planes[:, 0, 0, :, :OH, :OW]
            for i in range(kh):
                for j in range(kw):
                    if i or j:
                        out += planes[:, i, j, :, i * dh:i * dh + OH, j * dw:j * dw + OW]
    split_batch(run, N, x.size)
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    fast_calls["few_outputs"] += 1
    return y


def _conv_weight_grad_few(x, gy, geo, w_shape):
    """_conv_weight_grad (groups 1, NumPy, stride 1, F <= SMALL_CHANNELS), the adjoint of the above:
    gy placed at each tap's shift in a zero plane, gZ[n] (kh*kw*F, Hp*Wp), and gW_taps = sum_n gZ[n] @ xpad[n]^T."""
    N, C, H, W = x.shape
    F, _, kh, kw = w_shape
    (ph, pw), (dh, dw) = geo.padding, geo.dilation
    OH, OW = gy.shape[2:]

    def run(a, b):     # this range's share of gW
        step, padded, (Hp, Wp) = _few_buffers(x, geo, kh * kw * F, a, b)
        gz = np.zeros((step, kh, kw, F, Hp, Wp), dtype=gy.dtype)              # zero outside each shift
        gw = np.zeros((kh * kw * F, C), dtype=np.result_type(x, gy))
        for n0 in range(a, b, step):
            n = min(step, b - n0)
            padded[:n, :, ph:ph + H, pw:pw + W] = x[n0:n0 + n]
            for i in range(kh):
                for j in range(kw):
                    gz[:n, i, j, :, i * dh:i * dh + OH, j * dw:j * dw + OW] = gy[n0:n0 + n]
            gw += np.matmul(gz[:n].reshape(n, kh * kw * F, Hp * Wp),
                            padded[:n].reshape(n, C, Hp * Wp).transpose(0, 2, 1)).sum(0)
        return gw
    gw = sum_parts(split_batch(run, N, x.size))
    fast_calls["few_outputs"] += 1
    return np.ascontiguousarray(gw.reshape(kh, kw, F, C).transpose(2, 3, 0, 1))


# dispatch: the fast kernel where it applies, the reference kernel otherwise

def _forward(x, w, b, geo, out_hw):
    """(y, cols): cols is None when the fast kernel ran (the weight gradient rebuilds them)."""
    if _use_fast(geo, x, w):
        if _is_1x1(w.shape, geo, x.shape[2:], out_hw):
            return _conv1x1_forward(x, w, b), None
        if w.shape[1] <= SMALL_CHANNELS:
            return _conv_forward_small(x, w, b, geo, out_hw), None
        if w.shape[0] <= SMALL_CHANNELS and geo.stride == (1, 1):
            return _conv_forward_few(x, w, b, geo, out_hw), None
        return _conv_forward_chunked(x, w, b, geo, out_hw), None
    return _conv_forward(x, w, b, geo, out_hw)


def _input_grad(gy, w, geo, x_shape, rows=None):
    if _use_fast(geo, gy, w) and geo.stride == (1, 1):
        if _is_1x1(w.shape, geo, gy.shape[2:], x_shape[2:]):
            return _conv1x1_input_grad(gy, w)
        if w.shape[0] <= SMALL_CHANNELS:
            return _conv_input_grad_small(gy, w, geo, x_shape)
        return _conv_input_grad_gather(gy, w, geo, x_shape)
    if _use_fast(geo, gy, w):
        return _conv_input_grad_chunked(gy, w, geo, x_shape)
    return _conv_input_grad(gy, w, geo, x_shape, rows)


def _weight_grad(x, gy, geo, w_shape, cols=None, rows=None):
    if cols is None and _use_fast(geo, x, gy):
        if _is_1x1(w_shape, geo, x.shape[2:], gy.shape[2:]):
            return _conv1x1_weight_grad(x, gy)
        if w_shape[1] <= SMALL_CHANNELS:
            return _conv_weight_grad_small(x, gy, geo, w_shape)
        if w_shape[0] <= SMALL_CHANNELS and geo.stride == (1, 1):
            return _conv_weight_grad_few(x, gy, geo, w_shape)
        return _conv_weight_grad_chunked(x, gy, geo, w_shape)
    return _conv_weight_grad(x, gy, geo, w_shape, cols, rows)


def _bias_grad(gy):
    """gb = sum of gy (N, F, OH, OW) over (N, OH, OW)."""
    if is_grad_enabled() or not gy.data.flags.c_contiguous:
        return gy.sum((0, 2, 3))
    # buys: two BLAS matrix-vector products, not NumPy's reduction over three axes
    # ((64, 64, 28, 28): 0.65 -> 0.26 ms)
    N, F = gy.shape[:2]
    g = gy.data.reshape(N * F, -1)
    per_image = g @ backend.xp_of(g).ones(g.shape[1], dtype=g.dtype)      # (N*F,): sums over (OH, OW)
    return Tensor(sum_rows(per_image.reshape(N, F)))


# ----------------------------------------------------------------------------
# the three Functions
# ----------------------------------------------------------------------------

class Conv2d(Function):
    """y = conv2d(x, W) + b:  y[n,f,oh,ow] = b[f] + sum_{c,i,j} W[f,c,i,j] xpad[n, g*Cg+c, oh*s+i*d, ow*s+j*d].

    Shapes: x (N, C, H, W), W (F, C/G, kh, kw), b (F,) -> y (N, F, OH, OW) with
    OH = floor((H + 2p - d(kh-1) - 1)/s) + 1 (``out_hw`` may ask for fewer rows).
    Gradients: gx = conv_transpose2d(gy, W), gW = Conv2dWeightGrad(x, gy),
    gb = sum of gy over (N, OH, OW).
    With ``keep_cols`` the reference forward keeps its column matrix for the weight
    gradient: kh*kw times the input's memory until backward, one im2col copy less
    (the fast kernels keep nothing and rebuild the columns chunk by chunk).
    """

    def __init__(self, geo, out_hw, keep_cols=False):
        self.geo, self.out_hw, self.keep_cols = geo, tuple(out_hw), keep_cols

    def forward(self, x, w, b=None):
        y, cols = _forward(x, w, b, self.geo, self.out_hw)
        self.cols = cols if self.keep_cols else None
        return y

    def backward(self, gy):
        x, w = self.inputs[0], self.inputs[1]
        # both gradients read gy laid out as rows: make that copy once
        rows = (_grad_as_rows(gy.data, self.geo.groups)
                if x.requires_grad and w.requires_grad and not _use_fast(self.geo, gy.data) else None)
        gx = ConvTranspose2d(self.geo, x.shape[2:], x_rows=rows)(gy, w) if x.requires_grad else None
        gw = (Conv2dWeightGrad(self.geo, w.shape, cols=self.cols, gy_rows=rows)(x, gy)
              if w.requires_grad else None)
        if len(self.inputs) == 2:
            return gx, gw
        gb = _bias_grad(gy) if self.inputs[2].requires_grad else None
        return gx, gw, gb


class ConvTranspose2d(Function):
    """y = conv_transpose2d(x, W) + b, the adjoint of conv2d in its input:  <y, z> = <x, conv2d(z, W)>.

    Shapes: x (N, Cin, H, W), W (Cin, Cout/G, kh, kw), b (Cout,) -> y (N, Cout, Ho, Wo),
    Ho = (H-1)s - 2p + d(kh-1) + output_padding + 1 (passed in as ``out_hw``).
    Gradients: gx = conv2d(gy, W), gW = Conv2dWeightGrad(gy, x) (roles of input and
    output gradient swapped), gb = sum of gy over (N, Ho, Wo).
    ``x_rows``: x already laid out as rows (conv2d's backward shares them).
    """

    def __init__(self, geo, out_hw, x_rows=None):
        self.geo, self.out_hw, self.x_rows = geo, tuple(out_hw), x_rows

    def forward(self, x, w, b=None):
        N = x.shape[0]
        y = _input_grad(x, w, self.geo, (N, w.shape[1] * self.geo.groups) + self.out_hw, self.x_rows)
        self.x_rows = None  # not needed any more
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        return y

    def backward(self, gy):
        x, w = self.inputs[0], self.inputs[1]
        gx = Conv2d(self.geo, x.shape[2:])(gy, w) if x.requires_grad else None
        gw = Conv2dWeightGrad(self.geo, w.shape)(gy, x) if w.requires_grad else None
        if len(self.inputs) == 2:
            return gx, gw
        gb = _bias_grad(gy) if self.inputs[2].requires_grad else None
        return gx, gw, gb


class Conv2dWeightGrad(Function):
    """gW = dL/dW of conv2d:  gW[f,c,i,j] = sum_{n,oh,ow} gy[n,f,oh,ow] xpad[n, g*Cg+c, oh*s+i*d, ow*s+j*d].

    Shapes: x (N, C, H, W), gy (N, F, OH, OW) -> gW ``w_shape`` = (F, C/G, kh, kw).
    gW is bilinear in (x, gy) with <ggW, gW> = <gy, conv2d(x, ggW)>, so its
    gradients are  d/dx = conv_transpose2d(gy, ggW)  and  d/dgy = conv2d(x, ggW).
    ``cols`` (im2col of x) and ``gy_rows``: arrays the caller already has, if any.
    """

    def __init__(self, geo, w_shape, cols=None, gy_rows=None):
        self.geo, self.w_shape, self.cols, self.gy_rows = geo, tuple(w_shape), cols, gy_rows

    def forward(self, x, gy):
        gw = _weight_grad(x, gy, self.geo, self.w_shape, self.cols, self.gy_rows)
        self.cols = self.gy_rows = None  # not needed any more
        return gw

    def backward(self, ggw):
        x, gy = self.inputs
        gx = ConvTranspose2d(self.geo, x.shape[2:])(gy, ggw) if x.requires_grad else None
        ggy = Conv2d(self.geo, gy.shape[2:])(x, ggw) if gy.requires_grad else None
        return gx, ggy


# ----------------------------------------------------------------------------
# the public convolutions
# ----------------------------------------------------------------------------

def _check_bias(op, bias, n_out):
    if bias is not None and (not isinstance(bias, Tensor) or bias.shape != (n_out,)):
        shape = bias.shape if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"{op}: bias must be a Tensor of shape ({n_out},) (one per output channel), got {shape}")


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation) of NCHW images, as ``torch.nn.functional.conv2d``.

    y[n,f,oh,ow] = b[f] + sum_{c,i,j} W[f,c,i,j] xpad[n, c, oh*s + i*d, ow*s + j*d]
    Shapes: x (N, C, H, W), weight (F, C/groups, kh, kw), bias (F,) or None
    -> y (N, F, OH, OW), OH = floor((H + 2p - d(kh-1) - 1)/s) + 1.
    ``stride``, ``padding`` and ``dilation`` are ints or (h, w) pairs.
    """
    op = "conv2d"
    _check_4d(op, "input", x)
    _check_4d(op, "weight", weight)
    check_floating(op, input=x, weight=weight, bias=bias)
    stride, padding, dilation = (_pair(stride, "stride", op), _pair(padding, "padding", op),
                                 _pair(dilation, "dilation", op))
    _check_geometry(op, stride, padding, dilation, groups)
    N, C, H, W = x.shape
    F, Cg, kh, kw = weight.shape
    if C % groups or F % groups:
        raise ValueError(f"{op}: groups={groups} must divide both the input channels ({C}, input shape "
                         f"{x.shape}) and the output channels ({F}, weight shape {weight.shape})")
    if C != Cg * groups:
        raise ValueError(f"{op}: input has {C} channels (shape {x.shape}) but the weight (shape {weight.shape}) "
                         f"with groups={groups} expects {Cg * groups}")
    _check_bias(op, bias, F)
    OH, OW = (_out_size(H, kh, stride[0], padding[0], dilation[0]),
              _out_size(W, kw, stride[1], padding[1], dilation[1]))
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: the input's spatial size {H}x{W} (padded {H + 2 * padding[0]}x"
                         f"{W + 2 * padding[1]}) is smaller than the kernel {kh}x{kw} (dilated "
                         f"{dilation[0] * (kh - 1) + 1}x{dilation[1] * (kw - 1) + 1}); input shape {x.shape}")
    # keep the columns for the weight gradient only when one will be asked for
    keep_cols = is_grad_enabled() and weight.requires_grad
    fn = Conv2d(_Geometry(stride, padding, dilation, int(groups)), (OH, OW), keep_cols)
    return fn(x, weight) if bias is None else fn(x, weight, bias)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed convolution of NCHW images, as ``torch.nn.functional.conv_transpose2d``.

    y = the gradient of conv2d with respect to its input, applied to x:
    <conv_transpose2d(x, W), z> = <x, conv2d(z, W)> for every z of y's shape.
    Shapes: x (N, Cin, H, W), weight (Cin, Cout/groups, kh, kw), bias (Cout,) or None
    -> y (N, Cout, Ho, Wo), Ho = (H-1)s - 2p + d(kh-1) + output_padding + 1.
    ``output_padding`` (< stride or < dilation) picks among the output sizes that
    a strided conv2d maps to the same H.
    """
    op = "conv_transpose2d"
    _check_4d(op, "input", x)
    _check_4d(op, "weight", weight)
    check_floating(op, input=x, weight=weight, bias=bias)
    stride, padding, dilation = (_pair(stride, "stride", op), _pair(padding, "padding", op),
                                 _pair(dilation, "dilation", op))
    output_padding = _pair(output_padding, "output_padding", op)
    _check_geometry(op, stride, padding, dilation, groups)
    for a in range(2):
        if not 0 <= output_padding[a] < max(stride[a], dilation[a]):
            raise ValueError(f"{op}: output_padding {output_padding} must be >= 0 and smaller than "
                             f"either stride {stride} or dilation {dilation}")
    N, Cin, H, W = x.shape
    wc, Cog, kh, kw = weight.shape
    if wc % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels ({wc}, weight shape "
                         f"{weight.shape})")
    if Cin != wc:
        raise ValueError(f"{op}: input has {Cin} channels (shape {x.shape}) but the weight (shape "
                         f"{weight.shape}) expects {wc}")
    _check_bias(op, bias, Cog * groups)
    Ho = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + output_padding[0] + 1
    Wo = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + output_padding[1] + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: the output size {Ho}x{Wo} is not positive (input shape {x.shape}, kernel "
                         f"{kh}x{kw}, padding {padding}): the padding is too large for this input")
    fn = ConvTranspose2d(_Geometry(stride, padding, dilation, int(groups)), (Ho, Wo))
    return fn(x, weight) if bias is None else fn(x, weight, bias)


# ----------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------

def _pool_args(op, x, kernel_size, stride, padding):
    """Validated (kernel, stride, padding, out size) pairs of a pooling call."""
    _check_4d(op, "input", x)
    kernel = _pair(kernel_size, "kernel_size", op)
    stride = kernel if stride is None else _pair(stride, "stride", op)
    padding = _pair(padding, "padding", op)
    if min(kernel) < 1 or min(stride) < 1:
        raise ValueError(f"{op}: kernel_size {kernel} and stride {stride} must be >= 1")
    if min(padding) < 0 or padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding {padding} must be between 0 and half the kernel size {kernel}")
    H, W = x.shape[2:]
    out = (_out_size(H, kernel[0], stride[0], padding[0], 1), _out_size(W, kernel[1], stride[1], padding[1], 1))
    if min(out) < 1:
        raise ValueError(f"{op}: the input's spatial size {H}x{W} (padded {H + 2 * padding[0]}x"
                         f"{W + 2 * padding[1]}) is smaller than the kernel {kernel[0]}x{kernel[1]}; "
                         f"input shape {x.shape}")
    return kernel, stride, padding, out


def _windows(x, kernel, stride, padding, out_hw, fill):
    """Strided view (N, C, OH, OW, kh, kw) of x padded with ``fill``."""
    xp = xp_of(x)
    N, C, H, W = x.shape
    (ph, pw), (sh, sw) = padding, stride
    if ph or pw:
        padded = xp.full((N, C, H + 2 * ph, W + 2 * pw), fill, dtype=x.dtype)
        padded[:, :, ph:ph + H, pw:pw + W] = x
    else:
        padded = x
    s_n, s_c, s_h, s_w = padded.strides
    return xp.lib.stride_tricks.as_strided(
        padded, shape=(N, C) + tuple(out_hw) + tuple(kernel),
        strides=(s_n, s_c, sh * s_h, sw * s_w, s_h, s_w))


class AvgPool2d(Function):
    """y[n,c,oh,ow] = (1/(kh*kw)) sum_{i,j} xpad[n, c, oh*s+i, ow*s+j]  (zero padding counted).

    Shapes: x (N, C, H, W) -> y (N, C, OH, OW).  Gradient: AvgPool2dAdjoint(gy).
    """

    def __init__(self, kernel, stride, padding, out_hw):
        self.args = (kernel, stride, padding, out_hw)

    def forward(self, x):
        kernel = self.args[0]
        y = _windows(x, *self.args, fill=0).sum(axis=(4, 5))
        y *= 1.0 / (kernel[0] * kernel[1])
        return y

    def backward(self, gy):
        return AvgPool2dAdjoint(self.args, self.inputs[0].shape)(gy)


class AvgPool2dAdjoint(Function):
    """gx = each gy/(kh*kw) added back onto the window it averaged (col2im with a constant kernel).

    Shapes: gy (N, C, OH, OW) -> gx ``x_shape``.  Its own gradient is avg_pool2d.
    """

    def __init__(self, args, x_shape):
        self.args, self.x_shape = args, tuple(x_shape)

    def forward(self, gy):
        xp = xp_of(gy)
        (kh, kw), (sh, sw), (ph, pw), (OH, OW) = self.args
        N, C, H, W = self.x_shape
        share = gy * (1.0 / (kh * kw))
        gx = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)
        for i in range(kh):  # a loop over the kernel taps; each add covers every window
            for j in range(kw):
                gx[:, :, i:i + sh * (OH - 1) + 1:sh, j:j + sw * (OW - 1) + 1:sw] += share
        return xp.ascontiguousarray(gx[:, :, ph:ph + H, pw:pw + W])

    def backward(self, ggx):
        return AvgPool2d(*self.args)(ggx)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over kh x kw windows, as ``torch.nn.functional.avg_pool2d`` (count_include_pad=True).

    y[n,c,oh,ow] = mean_{i,j} xpad[n, c, oh*s + i, ow*s + j], zero padding counted in the mean.
    Shapes: x (N, C, H, W) -> (N, C, OH, OW), OH = floor((H + 2p - kh)/s) + 1; stride defaults
    to kernel_size, padding must be at most half the kernel.
    """
    kernel, stride, padding, out = _pool_args("avg_pool2d", x, kernel_size, stride, padding)
    return AvgPool2d(kernel, stride, padding, out)(x)


class MaxPool2d(Function):
    """y[n,c,oh,ow] = max_{i,j} xpad[n, c, oh*s+i, ow*s+j]  (padding is -inf, never chosen).

    Shapes: x (N, C, H, W) -> y (N, C, OH, OW).  The gradient goes to the arg-max
    of each window (the first one on ties), added where windows overlap.
    """

    def __init__(self, kernel, stride, padding, out_hw):
        self.args = (kernel, stride, padding, out_hw)

    def forward(self, x):
        xp = xp_of(x)
        (kh, kw), (sh, sw), (ph, pw), (OH, OW) = self.args
        N, C, H, W = x.shape
        win = _windows(x, *self.args, fill=-np.inf).reshape(N, C, OH, OW, kh * kw)
        tap = win.argmax(axis=-1)
        # flat index into x of each window's maximum (the padding never wins: p <= k/2)
        rows = xp.arange(OH).reshape(OH, 1) * sh - ph + tap // kw
        cols = xp.arange(OW) * sw - pw + tap % kw
        planes = xp.arange(N * C).reshape(N, C, 1, 1)
        self.index = (planes * H + rows) * W + cols
        return win.max(axis=-1)

    def backward(self, gy):
        x = self.inputs[0]
        # scatter-add into the flattened input; its gradient is the gather getitem(., index)
        return reshape(GetItemGrad(self.index, (x.size,))(gy), x.shape)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Maximum over kh x kw windows, as ``torch.nn.functional.max_pool2d``.

    y[n,c,oh,ow] = max_{i,j} x[n, c, oh*s + i - p, ow*s + j - p]
    Shapes: x (N, C, H, W) -> (N, C, OH, OW), OH = floor((H + 2p - kh)/s) + 1; stride defaults
    to kernel_size, padding must be at most half the kernel.
    """
    kernel, stride, padding, out = _pool_args("max_pool2d", x, kernel_size, stride, padding)
    return MaxPool2d(kernel, stride, padding, out)(x)


# ----------------------------------------------------------------------------
# interpolate: a linear map along H and one along W
# ----------------------------------------------------------------------------
# Each axis is resampled either by repeating every entry k times (nearest
# upsampling by an integer factor: fast, its adjoint sums blocks of k) or by a
# small (out, in) matrix A (any other size, and bilinear): y = A x along that
# axis, adjoint gx = A^T gy.

@functools.lru_cache(maxsize=256)   # one plan per size: its matrix can then stay on the device
def _nearest_axis(n_in, n_out, scale):
    """PyTorch's nearest rule: source index floor(dst * scale), clamped to the input.

    scale = in/out, or 1/scale_factor when one was given; like PyTorch, an output of
    exactly 1x or 2x the input always copies / doubles each entry.
    """
    if n_out in (n_in, 2 * n_in) or (scale is None and n_out % n_in == 0):
        return ("repeat", n_out // n_in)
    if scale is not None and float(scale).is_integer() and n_out == n_in * int(scale):
        return ("repeat", int(scale))
    if scale is None:
        src = np.arange(n_out) * n_in // n_out  # floor(dst * in/out), exactly in integers
    else:  # PyTorch multiplies by 1/scale_factor in float32
        step = np.float32(1.0 / scale)
        src = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * step).astype(np.int64), n_in - 1)
    A = np.zeros((n_out, n_in))
    A[np.arange(n_out), src] = 1.0
    A.flags.writeable = False          # cached and shared
    return ("matrix", A)


@functools.lru_cache(maxsize=256)   # one plan per size: its matrix can then stay on the device
def _bilinear_axis(n_in, n_out, scale, align_corners):
    """Weights of linear interpolation along one axis, PyTorch's source coordinates.

    align_corners=True:  src = dst (in-1)/(out-1)   (corner pixels line up)
    align_corners=False: src = (dst + 0.5) / scale - 0.5, clamped at 0  (pixel areas line up)
    An axis whose size does not change is copied, as PyTorch does, whatever the scale.
    """
    if n_out == n_in:
        return ("repeat", 1)
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        step = n_in / n_out if scale is None else 1.0 / scale
        src = np.maximum((dst + 0.5) * step - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    A = np.zeros((n_out, n_in))
    np.add.at(A, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(A, (np.arange(n_out), hi), frac)
    A.flags.writeable = False          # cached and shared
    return ("matrix", A)


_MATRICES = {}   # (id(host matrix), device, dtype) -> (host matrix, its copy there)


def _matrix_like(A, x):
    """The cached plan matrix A (host float64) in x's dtype on x's device, converted and copied once.

    Saves a host -> device copy of A on every call on the GPU (and the cast on the CPU).
    """
    key = (id(A), backend.device_of(x), x.dtype.str)
    entry = _MATRICES.get(key)
    if entry is None or entry[0] is not A:          # an id reused after the plan cache let A go
        if len(_MATRICES) > 1024:
            _MATRICES.clear()
        entry = _MATRICES[key] = (A, backend.to_device(A.astype(x.dtype), backend.device_of(x)))
    return entry[1]


def _apply_axis(x, plan, axis, adjoint):
    """Resample x (N, C, H, W) along ``axis`` (2 or 3) by ``plan``, or apply its adjoint."""
    xp = xp_of(x)
    kind, val = plan
    if kind == "repeat":
        if val == 1:
            return x
        if not adjoint:
            return xp.repeat(x, val, axis=axis)
        shape = x.shape[:axis] + (x.shape[axis] // val, val) + x.shape[axis + 1:]
        return x.reshape(shape).sum(axis=axis + 1)  # the adjoint of repeating: sum each block
    A = _matrix_like(val, x)
    A = A.T if adjoint else A  # y = A x along the axis; the adjoint applies A^T
    if axis == 3:
        return x @ A.T
    return xp.matmul(A, x)


def _block_sum_reference(x, vh, vw):
    """The sum of each vh x vw block of x (N, C, H, W): the adjoint of nearest upsampling."""
    N, C, H, W = x.shape
    return x.reshape(N, C, H // vh, vh, W // vw, vw).sum(axis=(3, 5))


# buys: strided slice adds with contiguous inner runs instead of one reduction over two strided
# axes (W3's 2x2 adjoint on (64, 64, 28, 28): 1.5 ms against 20.7 ms)
def _block_sum(x, vh, vw):
    """_block_sum_reference as vh - 1 adds of row slices, then vw - 1 adds of column slices."""
    t = x[:, :, 0::vh] + x[:, :, 1::vh] if vh > 1 else x
    for i in range(2, vh):
        t += x[:, :, i::vh]
    out = t[..., 0::vw] + t[..., 1::vw] if vw > 1 else t.copy()
    for j in range(2, vw):
        out += t[..., j::vw]
    return out


def _upsample_reference(x, vh, vw):
    """Nearest upsampling of x (N, C, H, W) by integer factors: each pixel becomes a vh x vw block."""
    N, C, H, W = x.shape
    big = xp_of(x).broadcast_to(x[:, :, :, None, :, None], (N, C, H, vh, W, vw))
    return big.reshape(N, C, H * vh, W * vw)     # one copy, whose innermost run is vw entries long


# buys: each entry repeated along W once, then whole rows copied; the batch split over threads
# ((256, 64, 14, 14) x2, W6's largest: 21.2 -> 12.7 ms on two threads, 25.5 -> 16.1 on one)
def _upsample(x, vh, vw):
    """_upsample_reference as np.repeat along W into each of the vh rows of every block."""
    if type(x) is not np.ndarray:
        return _upsample_reference(x, vh, vw)
    N, C, H, W = x.shape
    out = np.empty((N, C, H, vh, W * vw), dtype=x.dtype)

    def run(a, b):
        wide = np.repeat(x[a:b], vw, axis=3) if vw > 1 else x[a:b]      # (n, C, H, W*vw)
        for i in range(vh):
            out[a:b, :, :, i] = wide
    split_batch(run, N, out.size)
    return out.reshape(N, C, H * vh, W * vw)


def _resample(x, plans, adjoint):
    (kh, vh), (kw, vw) = plans
    if kh == kw == "repeat":  # nearest by integer factors: one block copy / one block sum
        if adjoint:
            return _block_sum(x, vh, vw)
        return _upsample(x, vh, vw)
    if adjoint:
        return _apply_axis(_apply_axis(x, plans[1], 3, True), plans[0], 2, True)
    return _apply_axis(_apply_axis(x, plans[0], 2, False), plans[1], 3, False)


class Interpolate(Function):
    """y = A_h x A_w^T per image: nearest or bilinear resampling along H and W.

    Shapes: x (N, C, H, W) -> y (N, C, OH, OW).  Gradient: InterpolateAdjoint(gy) = A_h^T gy A_w.
    """

    def __init__(self, plans):
        self.plans = plans

    def forward(self, x):
        return _resample(x, self.plans, adjoint=False)

    def backward(self, gy):
        return InterpolateAdjoint(self.plans)(gy)


class InterpolateAdjoint(Function):
    """gx = A_h^T gy A_w, the adjoint of interpolate (for nearest x2: the sum of each 2x2 block).

    Shapes: gy (N, C, OH, OW) -> gx (N, C, H, W).  Its own gradient is interpolate.
    """

    def __init__(self, plans):
        self.plans = plans

    def forward(self, gy):
        return _resample(gy, self.plans, adjoint=True)

    def backward(self, ggx):
        return Interpolate(self.plans)(ggx)


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Resize NCHW images, as ``torch.nn.functional.interpolate`` (modes 'nearest', 'bilinear').

    Output size: ``size`` (int or (OH, OW)), or floor(H * scale_factor).
    nearest:  y[.., oh, ow] = x[.., floor(oh * H/OH), floor(ow * W/OW)]  (1/scale_factor in
              place of H/OH when scale_factor is given, as PyTorch does);
    bilinear: linear in each axis between the two nearest source pixels, with source
              coordinate oh (H-1)/(OH-1) (align_corners=True) or (oh + 0.5) H/OH - 0.5 (False,
              the default).
    Shapes: x (N, C, H, W) -> (N, C, OH, OW).
    """
    op = "interpolate"
    _check_4d(op, "input", x)
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"{op}: mode must be 'nearest' or 'bilinear', got {mode!r}")
    if mode == "nearest" and align_corners is not None:
        raise ValueError(f"{op}: align_corners can only be set with mode='bilinear'")
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{op}: give exactly one of size and scale_factor")
    H, W = x.shape[2:]
    if size is not None:
        out = _pair(size, "size", op)
        scales = (None, None)
    else:
        if isinstance(scale_factor, (tuple, list)):
            scales = tuple(float(s) for s in scale_factor)
        else:
            scales = (float(scale_factor),) * 2
        if len(scales) != 2 or min(scales) <= 0:
            raise ValueError(f"{op}: scale_factor must be a positive number or pair, got {scale_factor!r}")
        out = (int(math.floor(H * scales[0])), int(math.floor(W * scales[1])))
    if min(out) < 1:
        raise ValueError(f"{op}: the output size {out[0]}x{out[1]} must be positive (input shape {x.shape})")
    if mode == "nearest":
        plans = (_nearest_axis(H, out[0], scales[0]), _nearest_axis(W, out[1], scales[1]))
    else:
        corners = bool(align_corners)
        plans = (_bilinear_axis(H, out[0], scales[0], corners), _bilinear_axis(W, out[1], scales[1], corners))
    return Interpolate(plans)(x)

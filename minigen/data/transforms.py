"""Array transforms for image data: scaling, binarization, padding, dequantization.

They work on NumPy arrays (CuPy arrays too: each uses the array module of its
input) and never on the global random state: the random ones take a
``minigen.Generator``.  Images are float arrays in [0, 1] unless said otherwise.

* ``to_unit_range``: uint8 x -> x / 255 in [0, 1]
* ``to_symmetric_range``: x in [0, 1] -> 2x - 1 in [-1, 1]; ``from_symmetric_range`` undoes it
* ``binarize_dynamic``: b ~ Bernoulli(x), a fresh draw every call
* ``binarize_static``: b = 1[x > threshold], or one fixed draw per seed
* ``pad_to``: zero-pad H and W to 32 (or any size)
* ``dequantize``: y = (255 x + u) / 256, u ~ U[0, 1); ``quantize`` undoes it: x = floor(256 y) / 255
"""
from __future__ import annotations

import numpy as np

from .. import backend

__all__ = ["random_shift", "random_hflip", "to_unit_range", "to_symmetric_range", "from_symmetric_range",
           "binarize_dynamic", "binarize_static", "pad_to", "dequantize", "quantize"]


def _float_dtype(x):
    return x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)


def to_unit_range(x):
    """8-bit pixels to [0, 1]: x / 255 (float32 for integer input; float input is divided as is)."""
    xp = backend.xp_of(x)
    dtype = _float_dtype(x)
    return x.astype(dtype) / xp.asarray(255.0, dtype=dtype)


def to_symmetric_range(x):
    """[0, 1] to [-1, 1]: y = 2x - 1 (the range of a tanh output layer)."""
    return 2 * x - 1


def from_symmetric_range(y):
    """[-1, 1] back to [0, 1]: x = (y + 1) / 2."""
    return (y + 1) / 2


def binarize_dynamic(x, generator):
    """Dynamic binarization: b ~ Bernoulli(x) elementwise, redrawn on every call.

    x: probabilities in [0, 1], any shape; returns 0/1 of x's dtype and device.
    Each epoch then sees a different binary image of every digit, which acts as
    a regulariser (Salakhutdinov & Murray 2008 binarize MNIST this way).
    """
    dtype = _float_dtype(x)
    u = generator.uniform(x.shape, dtype=np.float32, device=backend.device_of(x))   # drawn where x lives
    return (u < x).astype(dtype)


def binarize_static(x, threshold=0.5, seed=None):
    """Static binarization: the same binary image every time.

    seed None:  b = 1[x > threshold]  (deterministic thresholding);
    seed given: b = 1[u < x] with u ~ U[0, 1) drawn once from ``Generator(seed)``,
                so one fixed Bernoulli sample, identical on every call with that seed.
    """
    dtype = _float_dtype(x)
    if seed is None:
        return (x > threshold).astype(dtype)
    u = backend.Generator(seed, "cpu").uniform(x.shape, dtype=np.float32)
    return (backend.to_device(u, backend.device_of(x)) < x).astype(dtype)


def pad_to(x, size=32, value=0.0):
    """Pad the last two axes (H, W) with ``value`` up to ``size`` x ``size``, centred.

    (N, C, 28, 28) -> (N, C, 32, 32) with 2 pixels on each side, the size U-Nets
    that halve the resolution several times need.  An odd difference puts the
    extra pixel at the bottom/right.
    """
    xp = backend.xp_of(x)
    height, width = x.shape[-2:]
    if height > size or width > size:
        raise ValueError(f"pad_to: images are {height}x{width}, larger than the target {size}x{size}")
    top, left = (size - height) // 2, (size - width) // 2
    widths = [(0, 0)] * (x.ndim - 2) + [(top, size - height - top), (left, size - width - left)]
    return xp.pad(x, widths, mode="constant", constant_values=value)


def dequantize(x, generator):
    """Uniform dequantization of 8-bit data: y = (255 x + u) / 256, u ~ U[0, 1).

    x: images in [0, 1] holding 8-bit levels k / 255.  Each level k becomes the
    interval [k/256, (k+1)/256), so y has a density, and a continuous model's
    log-likelihood on y bounds the discrete model's (Theis et al. 2016).
    ``quantize(dequantize(x)) == x`` exactly.
    """
    dtype = _float_dtype(x)
    xp = backend.xp_of(x)
    levels = xp.round(x * 255)  # recover the integer level exactly despite float error in k / 255
    u = generator.uniform(x.shape, dtype=dtype, device=backend.device_of(x))   # drawn where x lives
    y = ((levels + u) / 256).astype(dtype)
    # k + u can round up to k + 1 in float32: keep y strictly below the next level's start (k + 1) / 256
    return xp.minimum(y, xp.nextafter(((levels + 1) / 256).astype(dtype), dtype.type(0)))


def quantize(y):
    """Back to 8-bit levels: x = floor(256 y) / 255 (clipped to [0, 255] / 255)."""
    xp = backend.xp_of(y)
    dtype = _float_dtype(y)
    return (xp.clip(xp.floor(y * 256), 0, 255) / 255).astype(dtype)


def random_shift(x, max_shift, generator):
    """Translate each image by (dy, dx), integers drawn uniformly in [-max_shift, max_shift].

    Pixels shifted in from outside are zero (the background of MNIST-like data).
    A standard augmentation for small digit sets: the classifier sees each digit
    at 25 positions (max_shift=2) instead of one.  x: (N, C, H, W).
    """
    xp = backend.xp_of(x)
    n, _, h, w = x.shape
    s = int(max_shift)
    shifts = backend.to_numpy(generator.integers(-s, s + 1, shape=(n, 2)))
    padded = xp.pad(x, [(0, 0), (0, 0), (s, s), (s, s)])
    out = xp.empty_like(x)
    for dy in range(-s, s + 1):  # one slice per distinct shift, not per image
        for dx in range(-s, s + 1):
            rows = np.nonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))[0]
            if rows.size:
                out[rows] = padded[rows, :, s - dy:s - dy + h, s - dx:s - dx + w]
    return out


def random_hflip(x, generator, p=0.5):
    """Mirror each image left-right with probability p (x: (N, C, H, W)).

    A label-preserving augmentation for clothes (a shirt mirrored is a shirt),
    not for digits (a mirrored 2 is no digit).
    """
    xp = backend.xp_of(x)
    flip = backend.to_numpy(generator.uniform((x.shape[0],))) < p
    out = xp.array(x, copy=True)
    rows = np.nonzero(flip)[0]
    if rows.size:
        out[rows] = x[rows][..., ::-1]
    return out

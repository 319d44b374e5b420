"""Two-dimensional toy distributions, for density pictures and mode counting.

Each sampler is ``name(n, generator, ...)`` and returns a float32 NumPy array of
shape (n, 2); with ``return_labels=True`` it returns ``(x, labels)`` as well,
where the labels say which part of the distribution a point came from (the mode
of the ring, the moon, the square of the board, or for the swiss roll its
position along the roll).  All randomness comes from the ``minigen.Generator``
passed in, so a seed fixes the samples.

* ``ring``: a mixture of 8 Gaussians on a circle (radius 2, std 0.02), the
  standard test of mode collapse in GANs (Metz et al. 2017, "Unrolled GANs");
  ``ring_centers`` and ``count_modes`` count the modes a sampler covers.
* ``moons``: two interleaving half circles.
* ``swiss_roll``: a 2-D spiral.
* ``checkerboard``: uniform on the 8 dark squares of a 4x4 board.
"""
from __future__ import annotations

import numpy as np

from .. import backend

__all__ = ["ring", "ring_centers", "count_modes", "moons", "swiss_roll", "checkerboard", "TOY_SETS", "sample_toy"]


def _np(array):
    return backend.to_numpy(array)


def _normal(generator, shape):
    return _np(generator.normal(shape, dtype=np.float32))


def _uniform(generator, shape):
    return _np(generator.uniform(shape, dtype=np.float32))


def _check(n):
    if int(n) != n or n < 0:
        raise ValueError(f"toy sets: n must be a non-negative integer, got {n!r}")
    return int(n)


def ring_centers(n_modes=8, radius=2.0) -> np.ndarray:
    """The modes' means: mu_k = radius * (cos 2 pi k / K, sin 2 pi k / K), float32 (K, 2)."""
    angle = 2.0 * np.pi * np.arange(n_modes) / n_modes
    return (radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)).astype(np.float32)


def ring(n, generator, n_modes=8, radius=2.0, std=0.02, return_labels=False):
    """Mixture of K Gaussians on a circle: k ~ U{0..K-1}, x = mu_k + std * eps, eps ~ N(0, I).

    Defaults: K = 8 modes, radius 2, std 0.02 (well separated: neighbouring
    modes are 2 * 2 * sin(pi/8) ~ 1.53 apart, about 75 std).  Labels: the mode k.
    """
    n = _check(n)
    k = _np(generator.integers(0, n_modes, shape=(n,)))
    x = ring_centers(n_modes, radius)[k] + np.float32(std) * _normal(generator, (n, 2))
    return (x, k) if return_labels else x


def count_modes(samples, centers=None, std=0.02, n_std=3.0, min_count=1):
    """How many modes a set of 2-D samples covers (Metz et al. 2017, section 3.1).

    A sample is "high quality" when it lies within ``n_std * std`` of its nearest
    centre; a mode is covered when at least ``min_count`` high-quality samples sit
    on it.  Returns ``{"modes": covered count, "high_quality": fraction of samples,
    "counts": high-quality samples per mode (K,)}``.
    """
    samples = np.asarray(backend.to_numpy(samples), dtype=np.float64)
    centers = ring_centers() if centers is None else np.asarray(centers, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != 2:
        raise ValueError(f"count_modes: samples must have shape (n, 2), got {samples.shape}")
    dist = np.linalg.norm(samples[:, None, :] - centers[None, :, :], axis=-1)  # (n, K)
    nearest = dist.argmin(axis=1)
    good = dist[np.arange(len(samples)), nearest] <= n_std * std
    counts = np.bincount(nearest[good], minlength=len(centers))
    return {"modes": int((counts >= min_count).sum()),
            "high_quality": float(good.mean()) if len(samples) else 0.0,
            "counts": counts}


def moons(n, generator, noise=0.1, return_labels=False):
    """Two interleaving half circles, centred near the origin.

    moon 0: (cos t, sin t);  moon 1: (1 - cos t, 1/2 - sin t);  t ~ U[0, pi),
    then shifted by (-1/2, -1/4) and perturbed by noise * N(0, I).  Labels: the moon.
    """
    n = _check(n)
    label = _np(generator.integers(0, 2, shape=(n,)))
    t = np.float32(np.pi) * _uniform(generator, (n,))
    upper = np.stack([np.cos(t), np.sin(t)], axis=1)
    lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    x = np.where(label[:, None] == 0, upper, lower) - np.array([0.5, 0.25], dtype=np.float32)
    x = (x + np.float32(noise) * _normal(generator, (n, 2))).astype(np.float32)
    return (x, label) if return_labels else x


def swiss_roll(n, generator, noise=0.05, return_labels=False):
    """A 2-D spiral: t = 1.5 pi (1 + 2u), u ~ U[0,1);  x = (t cos t, t sin t) / 5 + noise * N(0, I).

    The division by 5 keeps the roll inside about [-3, 3]^2.  Labels: the float
    position t along the roll (for colouring).
    """
    n = _check(n)
    t = np.float32(1.5 * np.pi) * (1.0 + 2.0 * _uniform(generator, (n,)))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / np.float32(5.0)
    x = (x + np.float32(noise) * _normal(generator, (n, 2))).astype(np.float32)
    return (x, t.astype(np.float32)) if return_labels else x


def checkerboard(n, generator, return_labels=False):
    """Uniform on the dark squares of a 4x4 board on [-2, 2]^2 (those with row + column even).

    row ~ U{0..3}, column = 2 j + (row mod 2) with j ~ U{0, 1};
    x = (-2 + column + u1, -2 + row + u2), u ~ U[0,1)^2.  Labels: the square, 4 * row + column.
    """
    n = _check(n)
    row = _np(generator.integers(0, 4, shape=(n,)))
    col = 2 * _np(generator.integers(0, 2, shape=(n,))) + row % 2
    u = _uniform(generator, (n, 2))
    x = (np.stack([col, row], axis=1) - 2 + u).astype(np.float32)
    return (x, 4 * row + col) if return_labels else x


TOY_SETS = {"ring": ring, "moons": moons, "swiss_roll": swiss_roll, "checkerboard": checkerboard}


def sample_toy(name, n, generator, **kwargs):
    """``sample_toy("ring", n, gen)``: the sampler of ``TOY_SETS`` by name."""
    if name not in TOY_SETS:
        raise ValueError(f"unknown toy set {name!r}; choose one of {', '.join(TOY_SETS)}")
    return TOY_SETS[name](n, generator, **kwargs)

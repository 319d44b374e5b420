"""Log-likelihood bookkeeping: nats, bits per dimension, importance-weighted bounds.

Units.  A model's negative log-likelihood in nats for one image of D pixels
becomes bits per dimension by  bpd = nll / (D ln 2).

Continuous densities on discrete data.  8-bit images take 256 values per pixel.
A density model p(y) on y in [0, 1]^D is turned into a probability of the 8-bit
image x by uniform dequantization, y = (x + u) / 256 with u ~ U[0, 1)^D: by
Jensen's inequality (Theis et al. 2016)

    log P(x) >= E_u[ log p(y) ] - D log 256,

so ``dequantized_bits_per_dim`` turns a density (in nats, on [0, 1]-scaled data)
into an upper bound on the discrete model's bits/dim.  For data scaled to
[-1, 1] one bin is 2/256 wide, hence the ``scale`` argument.  This puts PPCA,
GMMs, VAEs and diffusion models in one table.

``logmeanexp`` gives importance-weighted bounds (Burda et al. 2016):
L_k = E[ log (1/k) sum_i p(x, z_i) / q(z_i | x) ].
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend

__all__ = ["LN2", "bits_per_dim", "nats_from_bits_per_dim", "dequantized_bits_per_dim", "logmeanexp"]

LN2 = math.log(2.0)


def bits_per_dim(nll_nats, num_dims):
    """Negative log-likelihood in nats (per example) -> bits per dimension."""
    if num_dims <= 0:
        raise ValueError(f"bits_per_dim: num_dims must be positive, got {num_dims}")
    return np.asarray(nll_nats, dtype=np.float64) / (num_dims * LN2)


def nats_from_bits_per_dim(bpd, num_dims):
    """Bits per dimension -> negative log-likelihood in nats per example."""
    return np.asarray(bpd, dtype=np.float64) * num_dims * LN2


def dequantized_bits_per_dim(log_density_nats, num_dims, bins=256, scale=1.0):
    """Bits/dim of the 8-bit data from a continuous log-density on dequantized data.

    ``log_density_nats``: log p(y) per example, where y lies in an interval of
    width ``scale`` (1 for [0, 1] data, 2 for [-1, 1]) split into ``bins`` bins.
    Returns  -(log p(y) + D log(scale / bins)) / (D ln 2).
    """
    log_p = np.asarray(log_density_nats, dtype=np.float64)
    log_prob_discrete = log_p + num_dims * math.log(scale / bins)
    return -log_prob_discrete / (num_dims * LN2)


def logmeanexp(a, axis=None, keepdims=False):
    """log( (1/n) sum_i exp(a_i) ) = logsumexp(a) - log n along ``axis`` (None: all axes), in float64.

    ``backend.logsumexp`` subtracts the max, so k importance weights e^(a_i) of any
    size never overflow; an all -inf slice gives -inf.  a: a host array or list.
    """
    a = np.asarray(a, dtype=np.float64)
    axes = range(a.ndim) if axis is None else (axis,) if isinstance(axis, (int, np.integer)) else axis
    n = math.prod(a.shape[ax] for ax in axes)
    out = np.asarray(backend.logsumexp(a, axis=axis, keepdims=keepdims))
    out -= math.log(n)
    return out

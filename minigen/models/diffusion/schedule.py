"""Noise schedules of a diffusion model and the coefficients derived from them.

Notes §5.1.  The forward process adds Gaussian noise in T small steps,

    q(x_t | x_{t-1}) = N( sqrt(1 - beta_t) x_{t-1},  beta_t I ),      t = 1 .. T,

so with alpha_t = 1 - beta_t and alpha_bar_t = prod_{s <= t} alpha_s every
marginal has a closed form (composing Gaussians, Ho et al. 2020 eq. 4):

    q(x_t | x_0) = N( sqrt(alpha_bar_t) x_0,  (1 - alpha_bar_t) I ).

The schedule beta_1 .. beta_T is fixed, not learned.  Three are offered:

* ``linear``  (Ho et al. 2020): beta rises linearly from 1e-4 to 0.02 at T = 1000;
  for another T both end points are scaled by 1000 / T so that the total amount
  of noise, and alpha_bar_T, stay about the same.
* ``cosine``  (Nichol & Dhariwal 2021): alpha_bar(u) = cos^2( (u + s) / (1 + s) * pi/2 )
  at u = t / T, normalised by its value at u = 0, with s = 0.008; it destroys
  information more slowly at the start than the linear schedule.
* ``sigmoid`` (Jabri et al. 2022): alpha_bar(u) follows a rescaled, flipped
  sigmoid between start = -3 and end = 3 (temperature tau = 1).

The last two define alpha_bar and get beta_t = 1 - alpha_bar_t / alpha_bar_{t-1};
every schedule clips beta at 0.999 so that no step destroys the signal
completely (alpha_bar_T = 0 would make 1 / sqrt(alpha_bar) infinite).

Indexing.  Arrays here are indexed by t = 0 .. T-1 in code; entry t belongs to
the paper's step t + 1.  ``alphas_cumprod[t]`` is alpha_bar of the sample the
denoiser sees with timestep t, and ``alphas_cumprod_prev[t]`` is that of the
step it moves to (1 for t = 0: the clean image).

``DiffusionSchedule`` computes every coefficient the diffusion needs once, in
float64 on the host, under its paper name (the posterior ones are notes §5.2):

    posterior q(x_{t-1} | x_t, x_0) = N( coef1_t x_0 + coef2_t x_t,  beta~_t I ),
    coef1_t = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t),
    coef2_t = (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t),
    beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).

``extract(a, t, shape)`` gathers a[t] for a batch of timesteps as a constant
Tensor shaped (B, 1, ..., 1) that broadcasts against images (B, C, H, W).

References: Ho, Jain & Abbeel, Denoising Diffusion Probabilistic Models (2020);
Nichol & Dhariwal, Improved Denoising Diffusion Probabilistic Models (2021);
Jabri, Fleet & Chen, Scalable Adaptive Computation for Iterative Generation (2022).
"""
from __future__ import annotations

import numpy as np

from ... import backend
from ...autograd import Tensor

__all__ = ["SCHEDULES", "make_beta_schedule", "DiffusionSchedule", "extract"]

SCHEDULES = ("linear", "cosine", "sigmoid")
MAX_BETA = 0.999  # the largest beta any schedule may use


def _alpha_bar_cosine(u, s=0.008):
    """cos^2((u + s) / (1 + s) * pi / 2) at u in [0, 1] (not yet normalised)."""
    return np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2


def _alpha_bar_sigmoid(u, start=-3.0, end=3.0, tau=1.0):
    """A flipped sigmoid mapped onto [0, 1]: 1 at u = 0, 0 at u = 1."""
    def sig(z):
        return 1.0 / (1.0 + np.exp(-z))
    v_start, v_end = sig(start / tau), sig(end / tau)
    return (v_end - sig((u * (end - start) + start) / tau)) / (v_end - v_start)


def _betas_from_alpha_bar(alpha_bar, T):
    """beta_t = 1 - alpha_bar(t / T) / alpha_bar((t - 1) / T) for t = 1 .. T, clipped at MAX_BETA."""
    u = np.arange(T + 1, dtype=np.float64) / T
    ab = alpha_bar(u) / alpha_bar(np.zeros(1))
    return np.minimum(1.0 - ab[1:] / ab[:-1], MAX_BETA)


def make_beta_schedule(name, T=1000):
    """beta_1 .. beta_T of a named schedule as a float64 array of shape (T,).

    "linear": linspace(1e-4 * 1000/T, 0.02 * 1000/T, T) (exactly 1e-4 .. 0.02 at T = 1000);
    "cosine" (s = 0.008) and "sigmoid" (start -3, end 3, tau 1) from their alpha_bar curves.
    All are clipped at 0.999 (this touches the linear schedule only for T <= 20).
    """
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"make_beta_schedule: T must be an integer >= 1, got {T!r}")
    T = int(T)
    if name == "linear":
        scale = 1000.0 / T
        betas = np.linspace(1e-4 * scale, 0.02 * scale, T, dtype=np.float64)
        return np.minimum(betas, MAX_BETA)
    if name == "cosine":
        return _betas_from_alpha_bar(_alpha_bar_cosine, T)
    if name == "sigmoid":
        return _betas_from_alpha_bar(_alpha_bar_sigmoid, T)
    raise ValueError(f"make_beta_schedule: unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


class DiffusionSchedule:
    """Every fixed coefficient of a diffusion, from its betas: float64 NumPy arrays (T,) on the host.

    ``DiffusionSchedule(betas)`` or ``DiffusionSchedule.from_name("cosine", T=1000)``.

    Attributes (entry t is the paper's step t + 1; see the module docstring):
      betas, alphas = 1 - betas, alphas_cumprod = alpha_bar_t, alphas_cumprod_prev = alpha_bar_{t-1}
      sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, log_one_minus_alphas_cumprod,
      sqrt_recip_alphas_cumprod = 1/sqrt(alpha_bar), sqrt_recipm1_alphas_cumprod = sqrt(1/alpha_bar - 1),
      posterior_variance = beta~_t, posterior_log_variance_clipped (log beta~_t with the t = 0
      entry, where beta~ = 0, replaced by beta~ of the next step), posterior_mean_coef1, posterior_mean_coef2.
    """

    def __init__(self, betas):
        betas = np.asarray(betas)
        if betas.ndim != 1 or betas.size < 1 or betas.dtype.kind not in "fiu":
            raise ValueError(f"DiffusionSchedule: betas must be a non-empty 1-D array of numbers, "
                             f"got shape {betas.shape} and dtype {betas.dtype}")
        betas = betas.astype(np.float64)
        if not np.all(np.isfinite(betas)) or np.any(betas <= 0) or np.any(betas >= 1):
            raise ValueError("DiffusionSchedule: every beta must lie in (0, 1), got values in "
                             f"[{betas.min()}, {betas.max()}]")
        self.T = len(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        # Sum logs instead of multiplying, and take 1 - alpha_bar through expm1: near t = 0
        # alpha_bar = 1 - 1e-4 and the plain 1 - cumprod would keep only ~12 correct digits.
        log_alphas_cumprod = np.cumsum(np.log1p(-betas))
        self.alphas_cumprod = np.exp(log_alphas_cumprod)
        one_minus_alphas_cumprod = -np.expm1(log_alphas_cumprod)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        one_minus_prev = np.append(0.0, one_minus_alphas_cumprod[:-1])

        # q(x_t | x_0) and the conversions between x_0, eps and v
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(one_minus_alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(one_minus_alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.exp(-0.5 * log_alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(one_minus_alphas_cumprod / self.alphas_cumprod)

        # q(x_{t-1} | x_t, x_0), notes §5.2
        self.posterior_variance = betas * one_minus_prev / one_minus_alphas_cumprod
        # beta~ is 0 at t = 0 (x_0 is known exactly); the log uses the next step's value there
        # (for T = 1 there is none and beta_1 stands in)
        first = self.posterior_variance[1] if self.T > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / one_minus_alphas_cumprod
        self.posterior_mean_coef2 = one_minus_prev * np.sqrt(self.alphas) / one_minus_alphas_cumprod

    @classmethod
    def from_name(cls, name, T=1000):
        """The schedule of ``make_beta_schedule(name, T)``."""
        return cls(make_beta_schedule(name, T))

    def __repr__(self):
        return (f"DiffusionSchedule(T={self.T}, betas {self.betas[0]:.3g} .. {self.betas[-1]:.3g}, "
                f"alpha_bar_T={self.alphas_cumprod[-1]:.3g})")


def extract(a, t, shape, dtype="float32"):
    """a[t] as a constant Tensor of shape (B, 1, ..., 1) with len(shape) dims, on t's device.

    a: host float64 array (T,); t: integer Tensor or array (B,) with values in [0, T) (checked
    for host t; device t is indexed on its device without a read);
    shape: the shape the result will broadcast against, whose first entry is B.
    """
    t_data = t.data if isinstance(t, Tensor) else t
    if isinstance(t_data, (list, tuple)) or np.isscalar(t_data):
        t_data = np.asarray(t_data)
    device = backend.device_of(t_data)
    if t_data.ndim != 1 or t_data.dtype.kind not in "iu":
        raise ValueError(f"extract: t must be a 1-D integer array of timesteps (B,), "
                         f"got shape {t_data.shape} and dtype {t_data.dtype}")
    shape = tuple(shape)
    if len(shape) < 1 or shape[0] != len(t_data):
        raise ValueError(f"extract: {len(t_data)} timesteps for a batch of shape {shape}")
    a = np.asarray(a)
    # the range is checked where it is free (host t); device t is looked up on the device, never read back
    if backend.is_host(t_data) and t_data.size and (t_data.min() < 0 or t_data.max() >= len(a)):
        raise ValueError(f"extract: timesteps must lie in [0, {len(a)}), got [{t_data.min()}, {t_data.max()}]")
    table = backend.to_device(a.astype(dtype), device)           # T numbers (GaussianDiffusion keeps its tables)
    return Tensor(table[t_data].reshape((len(t_data),) + (1,) * (len(shape) - 1)))

"""Gaussian diffusion: the forward process, the training objectives, the bound in bits/dim, the samplers.

Notes §5.1-5.5.  Code indexes timesteps t = 0 .. T-1; step t of the code is
step t + 1 of the papers, and a_t, s_t below are the schedule's
``sqrt_alphas_cumprod[t]`` and ``sqrt_one_minus_alphas_cumprod[t]`` (a_t^2 + s_t^2 = 1).
See schedule.py for the betas and every coefficient.

Forward process (§5.1).  q(x_t | x_0) = N(a_t x_0, s_t^2 I), so a noisy image
is drawn in one shot:  x_t = a_t x_0 + s_t eps,  eps ~ N(0, I)   (``q_sample``).

Reverse process and the bound (§5.2).  The model p(x_{t-1} | x_t) is Gaussian
with a fixed variance sigma_t^2 ("fixed_small": the posterior variance beta~_t;
"fixed_large": beta_t, with beta~ at the first step, Ho et al. 2020 §3.2) and a
mean mu_theta(x_t, t).  The variational bound on -log p(x_0) is

    L = L_T + sum_{t>=1} L_t + L_0,
    L_T = KL( q(x_T | x_0) || N(0, I) )                  (the prior term; no parameters),
    L_t = KL( q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t) ),
    L_0 = -log p(x_0 | x_1)                               (the decoder),

where the posterior q(x_{t-1} | x_t, x_0) = N(coef1_t x_0 + coef2_t x_t, beta~_t I)
is the Gaussian Bayes rule (``q_posterior_mean_variance``).  Writing the model's
mean as that posterior mean at a predicted x0_hat makes each KL a weighted
squared error (when sigma_t^2 = beta~_t):

    L_t = coef1_t^2 / (2 beta~_t) ||x_0 - x0_hat||^2
        = beta_t^2 / (2 beta~_t alpha_t (1 - alpha_bar_t)) ||eps - eps_hat||^2     (§5.3).

Three parameterizations (§5.2, §5.3; Salimans & Ho 2022 for v).  The network
predicts eps, x_0 or v = a_t eps - s_t x_0; each gives the other two from x_t:

    x0 = (x_t - s_t eps) / a_t,        eps = (x_t - a_t x0) / s_t,
    x0 = a_t x_t - s_t v,              eps = s_t x_t + a_t v.

Training (§5.4, ``p_losses``).  Draw x_0, t ~ U{0..T-1}, eps ~ N(0, I), form x_t
and regress the network output on its target: L_simple = ||eps - eps_hat||^2 (or
x_0, or v), the unweighted loss of Ho et al.; or ``loss_type="vlb"``: the bound's
own term L_t with its weights (L_0 at t = 0), in nats per dimension.

The bound in bits/dim (``bpd``).  On 8-bit images scaled to [-1, 1] the decoder
L_0 is a discretized Gaussian: each of the 256 values owns a bin of width 2/255
and gets the Gaussian's mass over it, the edge bins reaching to -inf / +inf.
L_T + sum_t L_t + L_0 is then an upper bound on -log2 P(x_0) per dimension,
comparable to other models' bits/dim; ``bpd`` evaluates every term, all T of them.

Sampling (§5.5).  Ancestral DDPM (``sample``) walks t = T-1 .. 0:

    x_{t-1} = mu_theta(x_t, t) + sigma_t z,   z ~ N(0, I)   (no noise at the last step),

with mu_theta = coef1_t x0_hat + coef2_t x_t and x0_hat optionally clipped to [-1, 1].
DDIM (``ddim_sample``, Song et al. 2021) jumps along a subsequence tau of any
length with  a_prev = sqrt(alpha_bar) at the next (smaller) timestep (1 past the end):

    x_prev = a_prev x0_hat + sqrt(1 - a_prev^2 - sigma^2) eps_hat + sigma z,
    sigma  = eta sqrt( (1 - a_prev^2) / (1 - a_t^2) ) sqrt( 1 - a_t^2 / a_prev^2 );

eta = 0 is deterministic, eta = 1 over all T steps is the DDPM sampler with fixed_small.

Classifier-free guidance (Ho & Salimans 2022).  A conditional denoiser with
``num_classes`` K treats label K as "no label"; with scale w the prediction is
out(x, t, null) + w (out(x, t, y) - out(x, t, null)), one model call on the
concatenated batch.  Every parameterization is affine in the network output
with the same coefficients for both halves, so guiding the output guides eps.

Shapes: images x_0, x_t, eps (B, C, H, W) (any (B, ...) with at least 2 dims);
timesteps t and labels y int64 (B,); coefficients from ``extract`` (B, 1, 1, 1).
The denoiser is called as ``model(x_t, t, y=y)`` and returns x_t's shape.

References: Ho, Jain & Abbeel, Denoising Diffusion Probabilistic Models (2020);
Nichol & Dhariwal, Improved DDPMs (2021); Song, Meng & Ermon, Denoising Diffusion
Implicit Models (2021); Salimans & Ho, Progressive Distillation (2022, v-prediction);
Ho & Salimans, Classifier-Free Diffusion Guidance (2022).
"""
from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from ... import backend, nn, optim
from ... import functional as F
from ...autograd import Tensor, no_grad
from ...distributions import gaussian_kl, tensors_like
from .dit import DiT
from .schedule import SCHEDULES, DiffusionSchedule
from .unet import UNet

__all__ = ["GaussianDiffusion", "ModelPrediction", "discretized_gaussian_log_likelihood",
           "OBJECTIVES", "LOSS_TYPES", "VARIANCES", "DiffusionConfig", "build_denoiser", "draw_dropout_from",
           "drop_labels", "train_step"]

OBJECTIVES = ("eps", "x0", "v")
LOSS_TYPES = ("simple", "vlb")
VARIANCES = ("fixed_small", "fixed_large")
LN2 = math.log(2.0)

ModelPrediction = namedtuple("ModelPrediction", ["eps", "x0"])


# ----------------------------------------------------------------------------
# the two densities of the bound: the KL of two Gaussians (``gaussian_kl``, shared with
# the VAE) and the discretized Gaussian decoder
# ----------------------------------------------------------------------------

def _standard_normal_cdf(z):
    """Phi(z) = (1 + erf(z / sqrt 2)) / 2."""
    return 0.5 * (1.0 + F.erf(z * (1.0 / math.sqrt(2.0))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) of 8-bit data in [-1, 1] under a Gaussian discretized into 256 bins (Ho et al. 2020 §3.3).

    P(x) = Phi((x + 1/255 - mean) / scale) - Phi((x - 1/255 - mean) / scale), with the
    lowest bin (x = -1) reaching down to -inf and the highest (x = 1) up to +inf, so
    the 256 probabilities sum to one.  scale = exp(log_scales), the standard deviation.
    x: data (Tensor or array); means, log_scales broadcast against it.  Elementwise, in nats;
    a Tensor when any argument is one, else an array.
    """
    any_tensor = any(isinstance(v, Tensor) for v in (x, means, log_scales))
    x, means, log_scales = tensors_like((x, means, log_scales), "discretized_gaussian_log_likelihood")
    centered = x - means
    inv_scale = F.exp(-log_scales)
    cdf_plus = _standard_normal_cdf(inv_scale * (centered + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_scale * (centered - 1.0 / 255.0))
    # Floor every probability at 1e-12 before the log: a bin far in a tail has mass that
    # rounds to 0 (or a CDF difference that cancels), and log(0) would make the bound infinite.
    log_cdf_plus = F.log(F.clip(cdf_plus, min=1e-12))
    log_one_minus_cdf_min = F.log(F.clip(1.0 - cdf_min, min=1e-12))
    log_cdf_delta = F.log(F.clip(cdf_plus - cdf_min, min=1e-12))
    data = x.data
    log_probs = F.where(data < -0.999, log_cdf_plus,
                        F.where(data > 0.999, log_one_minus_cdf_min, log_cdf_delta))
    return log_probs if any_tensor else log_probs.data


def _mean_over_dims(x):
    """Mean over every axis but the batch axis: (B, ...) -> (B,)."""
    return F.mean(x, dim=tuple(range(1, x.ndim)))


# ----------------------------------------------------------------------------
# the diffusion
# ----------------------------------------------------------------------------

class GaussianDiffusion:
    """The fixed forward process, the reverse model's Gaussian steps, the losses and the samplers.

    GaussianDiffusion(schedule="linear" | DiffusionSchedule, T=1000, objective="eps"|"x0"|"v",
                      loss_type="simple"|"vlb", variance="fixed_small"|"fixed_large", dtype="float32")

    The schedule's float64 coefficients are turned into ``dtype`` (the dtype of the
    images and the denoiser) whenever they are used.  T is ignored when ``schedule``
    is a DiffusionSchedule.  The denoiser is not owned: every method takes it.
    """

    def __init__(self, schedule="linear", T=1000, objective="eps", loss_type="simple",
                 variance="fixed_small", dtype="float32"):
        if isinstance(schedule, DiffusionSchedule):
            self.schedule = schedule
        elif isinstance(schedule, str):
            self.schedule = DiffusionSchedule.from_name(schedule, T)
        else:
            raise TypeError(f"GaussianDiffusion: schedule must be one of {', '.join(SCHEDULES)} or a "
                            f"DiffusionSchedule, got {type(schedule).__name__}")
        for name, value, choices in (("objective", objective, OBJECTIVES), ("loss_type", loss_type, LOSS_TYPES),
                                     ("variance", variance, VARIANCES)):
            if value not in choices:
                raise ValueError(f"GaussianDiffusion: unknown {name} {value!r}; choose one of {', '.join(choices)}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"GaussianDiffusion: dtype must be a floating dtype, got {self.dtype}")
        self.T = self.schedule.T
        self.objective, self.loss_type, self.variance = objective, loss_type, variance
        s = self.schedule
        if variance == "fixed_small":
            self.model_log_variance = s.posterior_log_variance_clipped
        else:  # beta_t, except at the first step where beta~ keeps the decoder sharp (Ho et al. 2020)
            first = s.posterior_variance[1] if self.T > 1 else s.betas[0]
            self.model_log_variance = np.log(np.append(first, s.betas[1:]))
        self.model_variance = np.exp(self.model_log_variance)
        self._tables = {}   # (name, device, dtype) -> the coefficient table on that device (see _coef)

    def __repr__(self):
        return (f"GaussianDiffusion(T={self.T}, objective={self.objective!r}, loss_type={self.loss_type!r}, "
                f"variance={self.variance!r}, dtype={self.dtype.name})")

    # --- input checks ----------------------------------------------------------------------------
    def _image(self, x, name, op, like=None):
        """``x`` as a floating Tensor (B, ...) of the diffusion's dtype (and of ``like``'s shape)."""
        if not isinstance(x, Tensor):
            if not hasattr(x, "dtype"):
                raise TypeError(f"GaussianDiffusion.{op}: {name} must be a Tensor or an array, "
                                f"got {type(x).__name__}")
            x = Tensor(x)
        if x.dtype != self.dtype:
            raise TypeError(f"GaussianDiffusion.{op}: {name} has dtype {x.dtype} but the diffusion runs in "
                            f"{self.dtype} (convert it, or build GaussianDiffusion(..., dtype='{x.dtype}'))")
        if x.ndim < 2:
            raise ValueError(f"GaussianDiffusion.{op}: {name} must be a batch (B, ...) with at least 2 dims, "
                             f"got shape {x.shape}")
        if like is not None and x.shape != like.shape:
            raise ValueError(f"GaussianDiffusion.{op}: {name} has shape {x.shape} but the images have "
                             f"shape {like.shape}")
        if like is not None and x.device != like.device:
            raise ValueError(f"GaussianDiffusion.{op}: {name} is on {x.device} but the images are on {like.device}")
        return x

    def _timesteps(self, t, batch, device, op):
        """``t`` as an int64 Tensor (B,) on ``device`` with values in [0, T)."""
        data = t.data if isinstance(t, Tensor) else t
        if isinstance(data, (list, tuple, int, np.integer)):
            data = np.asarray(data)
        if not hasattr(data, "dtype") or data.dtype.kind not in "iu" or data.ndim != 1:
            what = f"shape {data.shape} and dtype {data.dtype}" if hasattr(data, "dtype") else type(data).__name__
            raise ValueError(f"GaussianDiffusion.{op}: t must be a 1-D integer array of timesteps (B,), got {what}")
        if len(data) != batch:
            raise ValueError(f"GaussianDiffusion.{op}: {len(data)} timesteps for a batch of {batch} images")
        # checked where reading them is free (host timesteps); device ones are made in range on the device
        if backend.is_host(data) and data.size and (data.min() < 0 or data.max() >= self.T):
            raise ValueError(f"GaussianDiffusion.{op}: timesteps must lie in [0, {self.T}), "
                             f"got [{data.min()}, {data.max()}]")
        return Tensor(backend.on_device(data.astype(np.int64, copy=False), device))

    def _labels(self, y, batch, device, op):
        """``y`` as an int64 Tensor (B,) on ``device`` (or None)."""
        if y is None:
            return None
        data = y.data if isinstance(y, Tensor) else (np.asarray(y) if isinstance(y, (list, tuple)) else y)
        if not hasattr(data, "dtype") or data.dtype.kind not in "iu" or data.shape != (batch,):
            what = f"shape {data.shape} and dtype {data.dtype}" if hasattr(data, "dtype") else type(data).__name__
            raise ValueError(f"GaussianDiffusion.{op}: labels y must be integers of shape ({batch},), got {what}")
        return Tensor(backend.on_device(data.astype(np.int64, copy=False), device))

    def _coef(self, name, t, x):
        """The coefficient table ``name`` at t, in x's dtype, shaped (B, 1, ..., 1) to broadcast against x.

        ``name`` is a float64 array of the schedule (``sqrt_alphas_cumprod`` ...) or of this
        diffusion (``model_log_variance``).  Each table is copied to x's device and dtype once
        and indexed there, so no call sends t to the host.  (``extract`` is the checked,
        stand-alone version of the same lookup.)
        """
        key = (name, x.device, np.dtype(x.dtype).str)
        table = self._tables.get(key)
        if table is None:
            host = getattr(self, name) if name.startswith("model_") else getattr(self.schedule, name)
            table = self._tables[key] = backend.to_device(np.asarray(host, dtype=x.dtype), x.device)
        return Tensor(table[t.data].reshape((t.shape[0],) + (1,) * (x.ndim - 1)))

    # --- forward process (§5.1) ------------------------------------------------------------------
    def q_sample(self, x0, t, noise):
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise, a draw of q(x_t | x_0) (§5.1).

        x0, noise: Tensors (B, ...); t: int64 Tensor (B,) in [0, T), on x0's device (unchecked:
        ``p_losses`` and the samplers check their arguments once).  Differentiable in x0 and noise.
        """
        return (self._coef("sqrt_alphas_cumprod", t, x0) * x0
                + self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def q_mean_variance(self, x0, t):
        """q(x_t | x_0) = N(mean, variance): (sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t, log(1 - alpha_bar_t)).

        mean (B, ...); variance and log_variance (B, 1, ..., 1).
        """
        x0 = self._image(x0, "x0", "q_mean_variance")
        t = self._timesteps(t, len(x0), x0.device, "q_mean_variance")
        mean = self._coef("sqrt_alphas_cumprod", t, x0) * x0
        return (mean, 1.0 - self._coef("alphas_cumprod", t, x0),
                self._coef("log_one_minus_alphas_cumprod", t, x0))

    def q_posterior_mean_variance(self, x0, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(coef1_t x_0 + coef2_t x_t, beta~_t I) (§5.2).

        Returns (mean (B, ...), variance (B, 1, ..), log_variance_clipped (B, 1, ..)); at t = 0 the
        variance is 0 and its log is clipped to that of t = 1.
        """
        x0 = self._image(x0, "x0", "q_posterior_mean_variance")
        x_t = self._image(x_t, "x_t", "q_posterior_mean_variance", like=x0)
        t = self._timesteps(t, len(x0), x0.device, "q_posterior_mean_variance")
        return self._posterior(x0, x_t, t)

    def _posterior(self, x0, x_t, t):
        mean = self._coef("posterior_mean_coef1", t, x_t) * x0 + self._coef("posterior_mean_coef2", t, x_t) * x_t
        return (mean, self._coef("posterior_variance", t, x_t),
                self._coef("posterior_log_variance_clipped", t, x_t))

    # --- eps, x0 and v (§5.2, §5.3) ------------------------------------------------------------
    def predict_x0_from_eps(self, x_t, t, eps):
        """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def predict_eps_from_x0(self, x_t, t, x0):
        """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)."""
        return ((self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0)
                / self._coef("sqrt_recipm1_alphas_cumprod", t, x_t))

    def predict_v(self, x0, t, eps):
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022)."""
        return (self._coef("sqrt_alphas_cumprod", t, x0) * eps
                - self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * x0)

    def predict_x0_from_v(self, x_t, t, v):
        """x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
        return (self._coef("sqrt_alphas_cumprod", t, x_t) * x_t
                - self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * v)

    def predict_eps_from_v(self, x_t, t, v):
        """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
        return (self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
                + self._coef("sqrt_alphas_cumprod", t, x_t) * v)

    # --- the denoiser ------------------------------------------------------------------------------
    def _call(self, model, x_t, t, y, op):
        out = model(x_t, t, y=y)
        if not isinstance(out, Tensor) or out.shape != x_t.shape:
            got = out.shape if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"GaussianDiffusion.{op}: the denoiser must return a Tensor of the input's shape "
                             f"{x_t.shape}, got {got}")
        return out

    def _model_output(self, model, x_t, t, y, guidance_scale, op):
        """The network output, with classifier-free guidance when labels and a scale != 1 are given."""
        if y is None:
            if guidance_scale != 1.0:
                raise ValueError(f"GaussianDiffusion.{op}: guidance_scale={guidance_scale} needs labels y "
                                 "(classifier-free guidance mixes the conditional and the unconditional output)")
            return self._call(model, x_t, t, None, op)
        if guidance_scale == 1.0:
            return self._call(model, x_t, t, y, op)
        null = getattr(model, "num_classes", None)
        if not isinstance(null, (int, np.integer)):
            raise ValueError(f"GaussianDiffusion.{op}: guidance needs a conditional denoiser with an integer "
                             f"`num_classes` (its null label), got num_classes={null!r}")
        xp = backend.xp_of(y.data)
        null_labels = xp.full(y.shape, int(null), dtype=np.int64)
        if guidance_scale == 0.0:
            return self._call(model, x_t, t, Tensor(null_labels), op)
        b = len(x_t)
        out = self._call(model, F.concat([x_t, x_t], dim=0), Tensor(xp.concatenate([t.data, t.data])),
                         Tensor(xp.concatenate([y.data, null_labels])), op)         # (2B, ...)
        cond, uncond = out[:b], out[b:]
        return uncond + guidance_scale * (cond - uncond)

    def _x0_from_output(self, out, x_t, t):
        if self.objective == "eps":
            return self.predict_x0_from_eps(x_t, t, out)
        if self.objective == "x0":
            return out
        return self.predict_x0_from_v(x_t, t, out)

    def model_predictions(self, model, x_t, t, y=None, guidance_scale=1.0, clip_denoised=False):
        """The denoiser's (eps_hat, x0_hat) at (x_t, t), whatever it predicts; a ModelPrediction(eps, x0).

        With ``clip_denoised`` x0_hat is clipped to [-1, 1] and eps_hat recomputed from it, so the
        pair stays consistent with x_t.  With labels and guidance_scale w != 1: classifier-free guidance.
        """
        x_t = self._image(x_t, "x_t", "model_predictions")
        t = self._timesteps(t, len(x_t), x_t.device, "model_predictions")
        y = self._labels(y, len(x_t), x_t.device, "model_predictions")
        return self._predictions(model, x_t, t, y, guidance_scale, clip_denoised, "model_predictions")

    def _predictions(self, model, x_t, t, y, guidance_scale, clip_denoised, op):
        out = self._model_output(model, x_t, t, y, guidance_scale, op)
        if self.objective == "eps":
            eps, x0 = out, self.predict_x0_from_eps(x_t, t, out)
        elif self.objective == "x0":
            eps, x0 = None, out
        else:
            eps, x0 = self.predict_eps_from_v(x_t, t, out), self.predict_x0_from_v(x_t, t, out)
        if clip_denoised:
            x0 = F.clip(x0, -1.0, 1.0)
            eps = None
        if eps is None:
            eps = self.predict_eps_from_x0(x_t, t, x0)
        return ModelPrediction(eps, x0)

    def p_mean_variance(self, model, x_t, t, y=None, guidance_scale=1.0, clip_denoised=True):
        """p(x_{t-1} | x_t) = N(mean, variance): the posterior mean at x0_hat and the fixed variance (§5.2).

        Returns dict(mean=(B, ...), variance=(B, 1, ..), log_variance=(B, 1, ..), pred_x0=(B, ...)).
        """
        x_t = self._image(x_t, "x_t", "p_mean_variance")
        t = self._timesteps(t, len(x_t), x_t.device, "p_mean_variance")
        y = self._labels(y, len(x_t), x_t.device, "p_mean_variance")
        return self._p_mean_variance(model, x_t, t, y, guidance_scale, clip_denoised, "p_mean_variance")

    def _p_mean_variance(self, model, x_t, t, y, guidance_scale, clip_denoised, op):
        pred = self._predictions(model, x_t, t, y, guidance_scale, clip_denoised, op)
        mean, _, _ = self._posterior(pred.x0, x_t, t)
        return dict(mean=mean, variance=self._coef("model_variance", t, mean),
                    log_variance=self._coef("model_log_variance", t, mean), pred_x0=pred.x0)

    # --- training (§5.4) -------------------------------------------------------------------------
    def _vb_terms(self, x0, x_t, t, pred_x0):
        """The bound's term at each image's t, in nats per dimension: (B,).

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, -log p(x_0 | x_1) for t = 0.
        """
        true_mean, _, true_log_var = self._posterior(x0, x_t, t)
        model_mean, _, _ = self._posterior(pred_x0, x_t, t)
        model_log_var = self._coef("model_log_variance", t, x_t)
        kl = _mean_over_dims(gaussian_kl(true_mean, true_log_var, model_mean, model_log_var))
        nll = -_mean_over_dims(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var))
        return F.where(t.data == 0, nll, kl)

    def p_losses(self, model, x0, t=None, noise=None, y=None, generator=None):
        """The training loss on a batch x0 (B, ...) (§5.4); a scalar Tensor.

        t (B,) defaults to uniform draws from {0 .. T-1} and noise to N(0, I), both from ``generator``
        (default: the device's).  loss_type "simple": mean squared error between the network output
        and its target (eps, x0 or v); "vlb": the mean over the batch of the bound's term at each
        image's t (nats/dim; T times it estimates the bound without L_T).
        """
        # the door: every argument is checked here, once; the formulas below trust them
        x0 = self._image(x0, "x0", "p_losses")
        generator = generator or backend.default_generator(x0.device)
        if t is None:   # drawn in range on the device: nothing to check, nothing copied to the host
            t = Tensor(generator.integers(0, self.T, shape=(len(x0),), device=x0.device))
        else:
            t = self._timesteps(t, len(x0), x0.device, "p_losses")
        if noise is None:
            noise = Tensor(generator.normal(x0.shape, dtype=self.dtype, device=x0.device))
        else:
            noise = self._image(noise, "noise", "p_losses", like=x0)
        y = self._labels(y, len(x0), x0.device, "p_losses")
        x_t = self.q_sample(x0, t, noise)
        out = self._call(model, x_t, t, y, "p_losses")
        if self.loss_type == "vlb":
            return F.mean(self._vb_terms(x0, x_t, t, self._x0_from_output(out, x_t, t)))
        target = {"eps": noise, "x0": x0}.get(self.objective)
        if target is None:
            target = self.predict_v(x0, t, noise)
        return F.mse_loss(out, target)

    # --- the bound in bits/dim ---------------------------------------------------------------------
    def _check_8bit(self, x0):
        data = backend.to_numpy(x0.data)
        if data.size and (data.min() < -1.0 - 1e-6 or data.max() > 1.0 + 1e-6):
            raise ValueError(f"GaussianDiffusion.bpd: x0 must hold 8-bit images scaled to [-1, 1], got values in "
                             f"[{data.min():.4g}, {data.max():.4g}]")
        levels = (data.astype(np.float64) + 1.0) * 127.5
        if np.abs(levels - np.round(levels)).max(initial=0.0) > 1e-2:
            raise ValueError("GaussianDiffusion.bpd: x0 must hold 8-bit images, k/255 * 2 - 1 for integers k "
                             "in 0..255 (the discretized decoder needs the 256 bins)")

    def bpd(self, model, x0, y=None, generator=None, progress=False, desc="bits/dim"):
        """The variational bound L_T + sum_t L_t + L_0 in bits/dim, per image, with all T terms.

        x0 (B, ...): 8-bit images in [-1, 1] (k/255 * 2 - 1).  One denoiser call per timestep
        on the whole batch; the noise of step t is drawn from ``generator`` (default: the
        device's) in the order t = 0, 1, .., T-1.  The terms are computed in float64.
        Returns host float64 arrays: "total" (B,), "prior" (B,) = L_T, "vb" (B, T) with
        vb[:, 0] = L_0 and vb[:, t] = L_t, all in bits/dim.  Runs under no_grad.
        ``progress``: a bar over the T steps, labelled ``desc``.
        """
        from tqdm import tqdm

        x0 = self._image(x0, "x0", "bpd")
        self._check_8bit(x0)
        generator = generator or backend.default_generator(x0.device)
        b, device, s = len(x0), x0.device, self.schedule
        y = self._labels(y, b, device, "bpd")
        xp = backend.get_array_module(device)
        with no_grad():
            x0_64 = x0.astype(np.float64)
            last = Tensor(xp.full(b, self.T - 1, dtype=np.int64))
            prior = gaussian_kl(self._coef("sqrt_alphas_cumprod", last, x0_64) * x0_64,
                              self._coef("log_one_minus_alphas_cumprod", last, x0_64), 0.0, 0.0)
            terms = []
            for step in tqdm(range(self.T), disable=not progress, desc=desc, mininterval=2.0, leave=False):
                t = Tensor(xp.full(b, step, dtype=np.int64))
                noise = Tensor(generator.normal(x0.shape, dtype=self.dtype, device=device))
                x_t = self.q_sample(x0, t, noise)
                pred = self._predictions(model, x_t, t, y, 1.0, False, "bpd")
                terms.append(self._vb_terms(x0_64, x_t.astype(np.float64), t, pred.x0.astype(np.float64)).data)
            vb = backend.to_numpy(xp.stack(terms, axis=1)) / LN2                      # (B, T)
            prior = backend.to_numpy(_mean_over_dims(prior).data) / LN2                 # (B,)
        return {"total": prior + vb.sum(axis=1), "prior": prior, "vb": vb}

    # --- sampling (§5.5) ---------------------------------------------------------------------------
    def _start(self, shape, generator, y, record, op):
        """Check the sampler's arguments; returns x_T ~ N(0, I) on the generator's device and the labels."""
        if not isinstance(generator, backend.Generator):
            raise TypeError(f"GaussianDiffusion.{op}: generator must be a minigen Generator, "
                            f"got {type(generator).__name__}")
        shape = tuple(int(n) for n in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"GaussianDiffusion.{op}: shape must be (B, ...) with at least 2 positive dims, "
                             f"got {shape}")
        if record is not None and (isinstance(record, bool) or not isinstance(record, (int, np.integer))
                                   or record < 1):
            raise ValueError(f"GaussianDiffusion.{op}: record must be None or an integer >= 1, got {record!r}")
        y = self._labels(y, shape[0], generator.device, op)
        return Tensor(generator.normal(shape, dtype=self.dtype, device=generator.device)), y

    @staticmethod
    def _host(x):
        return backend.to_numpy(x.data).astype(np.float32)

    def _finish(self, x, trajectory, record):
        final = self._host(x)
        if record is None:
            return final
        trajectory.append((-1, final))
        return final, trajectory

    def sample(self, model, shape, generator, y=None, guidance_scale=1.0, clip_denoised=True, record=None,
               progress=False):
        """Ancestral DDPM sampling over all T steps (§5.5): x_{t-1} = mu_theta(x_t, t) + sigma_t z.

        shape (B, ...); noise from ``generator``, on its device.  Returns the host float32 array x_0,
        or (x_0, trajectory) with ``record=k``: trajectory is a list of (t, host array) with the state
        the denoiser sees at t for t = T-1, T-1-k, ..., then (-1, x_0).
        """
        from tqdm import tqdm

        x, y = self._start(shape, generator, y, record, "sample")
        xp = backend.get_array_module(generator.device)
        trajectory = []
        with no_grad():
            for i, step in enumerate(tqdm(range(self.T - 1, -1, -1), disable=not progress, desc="DDPM",
                                          mininterval=1.0)):
                if record is not None and i % record == 0:
                    trajectory.append((step, self._host(x)))
                t = Tensor(xp.full(len(x), step, dtype=np.int64))
                out = self._p_mean_variance(model, x, t, y, guidance_scale, clip_denoised, "sample")
                x = out["mean"]
                if step > 0:
                    z = Tensor(generator.normal(x.shape, dtype=self.dtype, device=generator.device))
                    x = x + math.exp(0.5 * self.model_log_variance[step]) * z
        return self._finish(x, trajectory, record)

    def ddim_timesteps(self, steps):
        """The DDIM subsequence: ``steps`` timesteps evenly spaced from T-1 down to 0 (int64, descending)."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= self.T:
            raise ValueError(f"GaussianDiffusion.ddim_sample: steps must be an integer in [1, {self.T}], got {steps!r}")
        return np.round(np.linspace(self.T - 1, 0, int(steps))).astype(np.int64)

    def ddim_sample(self, model, shape, generator, steps=50, eta=0.0, y=None, guidance_scale=1.0,
                    clip_denoised=True, record=None, progress=False):
        """DDIM sampling (Song et al. 2021) along ``steps`` evenly spaced timesteps, stochasticity ``eta``.

        x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z,
        sigma^2 = eta^2 (1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev), ab = alpha_bar (1 past the end).
        Same return convention as ``sample`` (trajectory every ``record`` DDIM steps).
        """
        from tqdm import tqdm

        if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"GaussianDiffusion.ddim_sample: eta must be a number in [0, 1], got {eta!r}")
        seq = self.ddim_timesteps(steps)
        x, y = self._start(shape, generator, y, record, "ddim_sample")
        xp = backend.get_array_module(generator.device)
        ac = self.schedule.alphas_cumprod
        trajectory = []
        with no_grad():
            for i in tqdm(range(len(seq)), disable=not progress, desc=f"DDIM {len(seq)}", mininterval=1.0):
                step = int(seq[i])
                if record is not None and i % record == 0:
                    trajectory.append((step, self._host(x)))
                t = Tensor(xp.full(len(x), step, dtype=np.int64))
                pred = self._predictions(model, x, t, y, guidance_scale, clip_denoised, "ddim_sample")
                ab, ab_prev = ac[step], (ac[seq[i + 1]] if i + 1 < len(seq) else 1.0)
                sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
                # 1 - ab_prev - sigma^2 >= 0 for eta <= 1 (= 0 at eta = 1 on the last step); rounding can
                # push it a hair below zero, where the square root would be NaN
                direction = math.sqrt(max(1.0 - ab_prev - sigma * sigma, 0.0))
                x = math.sqrt(ab_prev) * pred.x0 + direction * pred.eps
                if sigma > 0.0:
                    z = Tensor(generator.normal(x.shape, dtype=self.dtype, device=generator.device))
                    x = x + sigma * z
        return self._finish(x, trajectory, record)


# ----------------------------------------------------------------------------
# the settings a run chooses, the denoiser they describe, and one training step
# ----------------------------------------------------------------------------

@dataclass
class DiffusionConfig:
    """The diffusion process, the denoiser and the sampler (the run options live in
    ``minigen.families.diffusion``)."""

    denoiser: str = "unet"            # "unet" (notes §5.6, UNet) or "dit" (notes §5.6, transformer on patches)
    schedule: str = "linear"          # beta schedule: "linear" (1e-4 -> 0.02), "cosine" or "sigmoid"
    T: int = 1000                     # diffusion steps
    objective: str = "eps"            # what the net predicts: "eps" (§5.3), "x0" (§5.2) or "v"
    loss_type: str = "simple"         # "simple" (unweighted MSE, L_simple) or "vlb" (the bound's weights)
    variance: str = "fixed_small"     # reverse-step variance: "fixed_small" (posterior) or "fixed_large" (beta_t)
    base_channels: int = 32           # UNet: channels at full resolution
    channel_mults: tuple = (1, 2, 2)  # UNet: channel multiplier per resolution level
    time_dim: int = 128               # UNet: width of the time embedding
    dropout: float = 0.0              # UNet: dropout inside the residual blocks
    patch_size: int = 4               # DiT: patch side (28 / 4 = 7 -> 49 tokens)
    dim: int = 128                    # DiT: token width
    depth: int = 4                    # DiT: transformer blocks
    heads: int = 4                    # DiT: attention heads
    label_dropout: float = 0.1        # conditional: probability a label is replaced by the null label in training
    guidance_scale: float = 2.0       # conditional: guidance scale s for samples (1 = no guidance)
    sampler: str = "ddim"             # for grids and eval samples: "ddim" or "ddpm" (ancestral, all T steps)
    sample_steps: int = 100           # DDIM steps
    eta: float = 0.0                  # DDIM eta (0: deterministic; 1: ancestral-like noise)

    def validate(self):
        """Raise ValueError naming the first impossible setting."""
        choices = {"denoiser": ("unet", "dit"), "schedule": SCHEDULES, "objective": OBJECTIVES,
                   "loss_type": LOSS_TYPES, "variance": VARIANCES, "sampler": ("ddim", "ddpm")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("T", "base_channels", "time_dim", "patch_size", "dim", "depth", "heads", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"config: channel_mults must be positive integers, got {self.channel_mults}")
        if self.sample_steps > self.T:
            raise ValueError(f"config: sample_steps ({self.sample_steps}) cannot exceed T ({self.T})")
        if self.dim % self.heads:
            raise ValueError(f"config: dim ({self.dim}) must be divisible by heads ({self.heads})")
        for name in ("label_dropout", "dropout", "eta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"config: {name} must lie in [0, 1], got {getattr(self, name)}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"config: guidance_scale must be a finite number >= 0, got {self.guidance_scale}")


def build_denoiser(config, image_shape, num_classes=None, generator=None):
    """The UNet or DiT a ``DiffusionConfig`` describes, for images of ``image_shape`` (C, H, W)."""
    c, h, w = image_shape
    if config.denoiser == "unet":
        levels = len(config.channel_mults)
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise ValueError(f"config: {h}x{w} images cannot be halved {levels - 1} times "
                             f"(channel_mults={config.channel_mults})")
        return UNet(in_channels=c, base_channels=config.base_channels, channel_mults=tuple(config.channel_mults),
                    time_dim=config.time_dim, num_classes=num_classes, dropout=config.dropout, generator=generator)
    if h != w or h % config.patch_size:
        raise ValueError(f"config: DiT needs square images divisible by patch_size={config.patch_size}, "
                         f"got {h}x{w}")
    return DiT(image_size=h, in_channels=c, patch_size=config.patch_size, dim=config.dim, depth=config.depth,
               heads=config.heads, num_classes=num_classes, generator=generator)


def draw_dropout_from(net, generator):
    """Make every ``nn.Dropout`` inside ``net`` draw its masks from ``generator``; returns net.

    A run passes its model generator: the masks then come from the stream a checkpoint
    saves (a resumed run draws the same masks) and are drawn on the generator's device.
    Without it, dropout uses the device's process-wide default generator.
    """
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.generator = generator
    return net


def drop_labels(y, p, null_label, generator):
    """Classifier-free guidance's training labels: each label replaced by ``null_label`` with probability p.

    y: int64 Tensor (B,) on the generator's device -> the same, some entries set to null_label.
    """
    drop = generator.uniform((len(y),), device=y.device) < p                    # (B,) drawn on y's device
    xp = backend.xp_of(y.data)
    return Tensor(xp.where(drop, null_label, y.data).astype(np.int64))


def train_step(diffusion, net, opt, x0, y=None, generator=None, label_dropout=0.0, grad_clip=0.0,
               lr_scheduler=None, ema=None):
    """One training step, Algorithm 1 of Ho et al. (2020) (notes §5.4):

        x0 ~ data (scaled to [-1, 1]),  t ~ U{0, ..., T-1},  eps ~ N(0, I),
        x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
        loss = || target - net(x_t, t, y) ||^2        (target: eps, x0 or v; ``diffusion.p_losses``),

    then a gradient step of ``opt`` (the gradient's global norm clipped at ``grad_clip``
    when > 0), one step of the learning-rate schedule and one update of the weights'
    moving average ``ema`` (samples use the average).  With labels y (B,) and
    ``label_dropout`` p > 0 each label is first replaced by the null label
    ``net.num_classes`` with probability p, so one network learns both the conditional
    and the unconditional prediction (classifier-free guidance, Ho & Salimans 2022).
    Returns a ``backend.StepLogs`` {"loss", "lr" (the rate this step used), "grad_norm" (before
    clipping, if clipped)}: the device scalars are read in one transfer when first looked at.
    """
    if y is not None and label_dropout > 0:
        y = drop_labels(y, label_dropout, net.num_classes, generator)
    opt.zero_grad()
    loss = diffusion.p_losses(net, x0, y=y, generator=generator)
    loss.backward()
    logs = {"loss": loss.data, "lr": opt.param_groups[0]["lr"]}        # device scalars, not read here
    if grad_clip:
        logs["grad_norm"] = optim.clip_grad_norm_(net.parameters(), grad_clip).data
    opt.step()
    if lr_scheduler is not None:
        lr_scheduler.step()
    if ema is not None:
        ema.update()
    return backend.StepLogs(logs)


"""Latent diffusion: a diffusion model on the codes of a frozen autoencoder, and the VAE's prior hole.

Notes §5.6 (latent diffusion) and §5.7 (LDMs vs VAEs).

Two stages (Rombach et al. 2022).  A UNet on 28 x 28 pixels spends most of its
work on detail an autoencoder can reproduce cheaply.  So:

1. the *first stage* is an autoencoder with a small latent: here a
   KL-regularized convolutional autoencoder (``KLAutoencoder``),
   q(z | x) = N(mean(x), diag exp(logvar(x))) with a spatial code z (B, 4, 7, 7)
   and a decoder mean x_hat(z), trained on

       loss = sum_pixels (x - x_hat(z))^2 + kl_weight * KL(q(z | x) || N(0, I)),   z ~ q(z | x).

   With kl_weight = 2 sigma^2 this is -2 sigma^2 ELBO (up to a constant) of a
   VAE whose decoder is N(x_hat(z), sigma^2 I): a small weight is a sharp
   decoder, and the KL only keeps the codes from drifting to arbitrary scales
   (Rombach et al. weight it by ~1e-6; the prior N(0, I) is not meant to be
   sampled).  A trained ``vae`` / ``conv-vae`` (a vector code z (B, d), notes §2)
   serves as well.
2. the *second stage* is ``GaussianDiffusion`` (notes §5.1-5.5, unchanged) on
   the frozen encoder's codes, rescaled to unit variance,

       u_0 = s z,   z ~ q(z | x),   s = 1 / std(z over the training set)   (``latent_scale_factor``),

   so that the forward process, built for data of unit scale, ends in N(0, I)
   (Rombach et al. rescale KL-regularized latents by this one scalar).  The
   denoiser fits the code's shape: the UNet of notes §5.6 on a spatial code
   (padded from 7 x 7 to 8 x 8 so that it can be halved twice, ``PaddedUNet``),
   a residual MLP (``MLPDenoiser``) on a vector code.  Only the denoiser
   trains; the encoder runs without a graph, so the first stage gets no
   gradient (``latent_diffusion_step``).

Sampling (``LatentDiffusion.sample``): run the DDPM or DDIM chain in latent
space from u_T ~ N(0, I) to u_0, then decode x = x_hat(u_0 / s).  The chain
never clips (codes are not confined to [-1, 1]).  Class labels and
classifier-free guidance work exactly as in pixel space (the denoiser gets
the labels; the first stage stays unconditional).

The cost (§5.6).  A 4 x 7 x 7 code has 196 numbers at 49 positions against
784 pixels; the denoiser's convolutions run at 8 x 8 instead of 28 x 28, so
a training step and every sampling step cost a fraction of the pixel model's
(the README measures it).  The first stage is trained once.

A bound (``LatentDiffusion.two_stage_bound``).  With the diffusion model as
the prior p(z) of the first stage's decoder,

    -log p(x) <= E_q[ -log p(x | z) ] - H[q(z | x)] + E_q[ -log p(z) ]
              <= E_q[ -log p(x | z) ] - H[q(z | x)] + E_q[ L(s z) ] - D_z log s,

where L(u) = L_T + sum_{t>=1} L_t + L_0 >= -log p(u) is the diffusion's
variational bound on the scaled code (notes §5.2; here L_0 is the Gaussian
density of the last step, as the code is continuous) and D_z log s the change
of variables u = s z.  It is an upper bound on -log p(x), never the
likelihood itself.  The KL autoencoder's decoder for the bound is
N(x_hat(z), sigma^2 I) on dequantized images, with sigma^2 the mean squared
error on the training images (``KLAutoencoder.set_decoder_variance``; any
fixed sigma gives a valid bound).  The reverse steps' fixed variance matters
here: with the posterior's beta~_t ("fixed_small") the steps near t = 0 are
too narrow and the bound is looser by about 0.5 nats per code dimension
(T = 1000) even with a perfect denoiser; with beta_t ("fixed_large", the
default here) it is about 0.1 nats per dimension (measured on a Gaussian
code law with its exact denoiser, ``tests/test_ldm.py``).  DDIM
sampling does not use the variance.

The prior hole (§5.7).  A VAE's decoder is trained on codes from the
aggregated posterior q(z) = E_x q(z | x), but a VAE generates from the prior
p(z) = N(0, I).  The average KL term of the ELBO splits as (Hoffman & Johnson 2016)

    E_x KL(q(z | x) || p(z)) = I_q(x; z) + KL(q(z) || p(z)),

and nothing forces the second term to zero: q(z) leaves regions of N(0, I)
empty ("holes"), where the decoder was never trained, and prior draws that
land there decode to non-digits.  A diffusion model in latent space learns
q(z) itself and samples where the decoder was trained.  ``prior_hole``
measures the gap on a trained VAE; ``examples/ldm_prior_hole.py`` compares
decoded samples from N(0, I), from q(z) itself, from a Gaussian mixture
fitted to codes (Ghosh et al. 2020's ex-post density) and from the latent
diffusion model.

Shapes: images x (B, C, H, W); spatial codes (B, c, h, w) or vector codes
(B, d); timesteps t and labels y int64 (B,).

Reading order: config, the first stage, the latent denoisers, the latent
diffusion (encode, sample, bound), the prior-hole statistics, and at the end
the two training steps ``first_stage_step`` and ``latent_diffusion_step``.

References: Rombach, Blattmann, Lorenz, Esser & Ommer, High-Resolution Image
Synthesis with Latent Diffusion Models (CVPR 2022); Kingma & Welling,
Auto-Encoding Variational Bayes (2014); Ho, Jain & Abbeel, Denoising Diffusion
Probabilistic Models (2020); Song, Meng & Ermon, Denoising Diffusion Implicit
Models (2021); Hoffman & Johnson, ELBO surgery: yet another way to carve up the
variational evidence lower bound (NIPS workshop 2016); Vahdat, Kreis & Kautz,
Score-based Generative Modeling in Latent Space (2021); Ghosh, Sajjadi,
Vergari, Black & Schölkopf, From Variational to Deterministic Autoencoders (2020);
Ho & Salimans, Classifier-Free Diffusion Guidance (2022).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import backend, nn
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..creation import zeros_like
from ..distributions import Normal, kl_divergence
from .diffusion import ddpm
from ..distributions import gaussian_kl
from .diffusion.unet import UNet, _check_inputs, _labels_or_null, timestep_embedding

__all__ = ["LDMConfig", "KLAutoencoder", "MLPDenoiser", "PaddedUNet", "build_latent_denoiser", "LatentDiffusion",
           "latent_scale_factor", "encode_dataset", "gaussian_log_density", "aggregate_log_density", "prior_hole",
           "first_stage_step", "latent_diffusion_step"]

LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------

@dataclass
class LDMConfig:
    """The two stages' architecture and objective (the run options live in ``minigen.families.ldm``)."""

    latent_channels: int = 4          # first stage: channels c of the spatial code z (B, c, 7, 7)
    ae_channels: int = 32             # first stage: conv width c at 7x7 (c/2 at 14x14)
    kl_weight: float = 1e-3           # first stage: weight of KL(q(z|x) || N(0,I)) against the summed squared error
    schedule: str = "linear"          # beta schedule of the latent diffusion: "linear", "cosine" or "sigmoid"
    T: int = 1000                     # diffusion steps
    objective: str = "eps"            # what the denoiser predicts: "eps", "x0" or "v" (notes §5.3)
    variance: str = "fixed_large"     # reverse-step variance: "fixed_large" (beta_t; tighter bound) or "fixed_small"
    base_channels: int = 32           # UNet denoiser (spatial code): channels at the code's resolution
    channel_mults: tuple = (1, 2, 2)  # UNet denoiser: one level per entry (the code is padded to 8x8 to halve it)
    time_dim: int = 128               # UNet / MLP denoiser: width of the time embedding
    mlp_hidden: int = 512             # MLP denoiser (vector code): width of the residual blocks
    mlp_depth: int = 4                # MLP denoiser: residual blocks
    label_dropout: float = 0.1        # conditional: probability a label becomes the null label in training
    guidance_scale: float = 2.0       # conditional: classifier-free guidance scale for samples (1 = none)
    sampler: str = "ddim"             # latent chain for samples: "ddim" or "ddpm" (all T ancestral steps)
    sample_steps: int = 100           # DDIM steps
    eta: float = 0.0                  # DDIM eta (0: deterministic)

    def validate(self):
        """Raise ValueError naming the first impossible setting."""
        choices = {"schedule": ("linear", "cosine", "sigmoid"), "objective": ("eps", "x0", "v"),
                   "variance": ("fixed_small", "fixed_large"), "sampler": ("ddim", "ddpm")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("latent_channels", "ae_channels", "T", "base_channels", "time_dim", "mlp_hidden",
                     "mlp_depth", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.ae_channels % 2:
            raise ValueError(f"config: ae_channels must be even (half of it runs at full resolution), "
                             f"got {self.ae_channels}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"config: channel_mults must be positive integers, got {self.channel_mults}")
        if self.sample_steps > self.T:
            raise ValueError(f"config: sample_steps ({self.sample_steps}) cannot exceed T ({self.T})")
        if not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
            raise ValueError(f"config: kl_weight must be a finite number >= 0, got {self.kl_weight}")
        for name in ("label_dropout", "eta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"config: {name} must lie in [0, 1], got {getattr(self, name)}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"config: guidance_scale must be a finite number >= 0, got {self.guidance_scale}")


# ----------------------------------------------------------------------------
# the first stage: a KL-regularized convolutional autoencoder
# ----------------------------------------------------------------------------

def _sum_per_example(t):
    """Sum all axes but the first: (B, ...) -> (B,)."""
    return F.flatten(t, 1).sum(dim=1)


class KLAutoencoder(nn.Module):
    """q(z | x) = N(mean, diag exp(logvar)) with a spatial code, and a conv decoder x_hat(z).

    Shapes (c = ae_channels, k = latent_channels, 28 x 28 images with C channels):

        encoder  x (B, C, 28, 28) -Conv4x4/2-> (c/2, 14, 14) -Conv3x3-> (c, 14, 14) -Conv4x4/2-> (c, 7, 7)
                 -Conv3x3-> (c, 7, 7) -Conv3x3-> (2k, 7, 7) = [mean, logvar]
        decoder  z (B, k, 7, 7) -Conv3x3-> (c, 7, 7) -Conv3x3-> (c, 7, 7) -ConvT4x4/2-> (c/2, 14, 14)
                 -Conv3x3-> (c/2, 14, 14) -ConvT4x4/2-> x_hat (C, 28, 28)

    SiLU between layers.  ``decode(z)`` is the Gaussian N(x_hat(z), exp(decoder_logvar))
    with one scalar log-variance, a buffer set by ``set_decoder_variance`` (used by
    the bound only; training uses the squared error).  ``encode``/``decode`` have
    the VAE's signatures, so a ``VAE`` of ``models/vae.py`` can stand in for it.
    """

    def __init__(self, in_channels=1, latent_channels=4, channels=64, image_shape=(1, 28, 28), generator=None):
        super().__init__()
        if tuple(image_shape[1:]) != (28, 28) or image_shape[0] != in_channels:
            raise ValueError(f"KLAutoencoder: expects images ({in_channels}, 28, 28), got {tuple(image_shape)}")
        if channels % 2:
            raise ValueError(f"KLAutoencoder: channels must be even, got {channels}")
        self.image_shape, self.latent_channels = tuple(image_shape), int(latent_channels)
        self.latent_shape = (self.latent_channels, 7, 7)
        c, h, k = channels, channels // 2, latent_channels
        kw = dict(generator=generator)
        # Only the layers with one image channel run at 28x28: the first conv reads the image with
        # stride 2, the last transposed conv writes it (the expensive widths stay at 14x14 and 7x7).
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, h, 4, stride=2, padding=1, **kw), nn.SiLU(),  # (B, c/2, 14, 14)
            nn.Conv2d(h, c, 3, padding=1, **kw), nn.SiLU(),                      # (B, c, 14, 14)
            nn.Conv2d(c, c, 4, stride=2, padding=1, **kw), nn.SiLU(),            # (B, c, 7, 7)
            nn.Conv2d(c, c, 3, padding=1, **kw), nn.SiLU(),
            nn.Conv2d(c, 2 * k, 3, padding=1, **kw))                             # (B, 2k, 7, 7)
        self.decoder = nn.Sequential(
            nn.Conv2d(k, c, 3, padding=1, **kw), nn.SiLU(),                      # (B, c, 7, 7)
            nn.Conv2d(c, c, 3, padding=1, **kw), nn.SiLU(),
            nn.ConvTranspose2d(c, h, 4, stride=2, padding=1, **kw), nn.SiLU(),   # (B, c/2, 14, 14)
            nn.Conv2d(h, h, 3, padding=1, **kw), nn.SiLU(),
            nn.ConvTranspose2d(h, in_channels, 4, stride=2, padding=1, **kw))    # (B, C, 28, 28)
        self.register_buffer("decoder_logvar", Tensor(np.zeros((), dtype=backend.get_default_dtype())))

    def encode(self, x, y=None):
        """q(z | x): a Normal with batch shape (B, k, 7, 7).  ``y`` must be None (unconditional)."""
        if y is not None:
            raise ValueError("KLAutoencoder is unconditional; pass y=None")
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"KLAutoencoder: expected images (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {x.shape}")
        mean, logvar = F.chunk(self.encoder(x), 2, dim=1)                       # (B, k, 7, 7) each
        # keep exp(logvar) finite while the network is young (a code with std e^-15 is deterministic anyway)
        return Normal(mean, F.clip(logvar, -30.0, 20.0))

    def decode(self, z, y=None):
        """p(x | z) = N(x_hat(z), exp(decoder_logvar) I):  z (B, k, 7, 7) -> batch shape (B, C, 28, 28)."""
        if y is not None:
            raise ValueError("KLAutoencoder is unconditional; pass y=None")
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"KLAutoencoder: expected codes (B, {', '.join(map(str, self.latent_shape))}), "
                             f"got {z.shape}")
        x_hat = self.decoder(z)                                                  # (B, C, 28, 28)
        return Normal(x_hat, F.broadcast_to(self.decoder_logvar, x_hat.shape))

    def loss(self, x, kl_weight, generator=None):
        """(loss, recon, kl), each (B,): recon = sum (x - x_hat(z))^2 with z ~ q(z | x) (reparameterized),
        kl = KL(q(z | x) || N(0, I)) summed over the code, loss = recon + kl_weight * kl."""
        q = self.encode(x)
        z = q.rsample(generator=generator)                                       # (B, k, 7, 7)
        recon = _sum_per_example((x - self.decoder(z)) ** 2)                     # (B,)
        kl = _sum_per_example(kl_divergence(q, Normal(zeros_like(q.mean), zeros_like(q.mean))))
        return recon + kl_weight * kl, recon, kl

    def set_decoder_variance(self, variance):
        """decoder_logvar = log(variance), e.g. the mean squared error of x_hat(z), z ~ q(z | x), on the
        training images: the sigma^2 that maximizes their mean Gaussian log-density."""
        if not (variance > 0 and math.isfinite(variance)):
            raise ValueError(f"KLAutoencoder.set_decoder_variance: need a positive variance, got {variance}")
        self.decoder_logvar.data[...] = math.log(variance)


# ----------------------------------------------------------------------------
# the latent denoisers
# ----------------------------------------------------------------------------

class MLPDenoiser(nn.Module):
    """eps_theta(u_t, t, y) for vector codes: a residual MLP (notes §5.6 for vectors instead of images).

        temb = Linear - SiLU - Linear of timestep_embedding(t, time_dim) [+ label_emb(y)]   (B, time_dim)
        h = Linear(u_t)                                                                     (B, hidden)
        depth x:  h = h + Linear(SiLU(Linear(SiLU(LN(h))) + Linear(temb)))
        out = Linear(SiLU(LN(h)))  (starts at zero: the untrained net predicts 0)          (B, dim)

    u_t (B, dim), t (B,) int, y (B,) int in 0..num_classes (num_classes = the null
    label of classifier-free guidance) or None -> (B, dim).
    """

    def __init__(self, dim, hidden=512, depth=4, time_dim=128, num_classes=None, generator=None):
        super().__init__()
        if min(dim, hidden, depth, time_dim) < 1 or time_dim % 2:
            raise ValueError(f"MLPDenoiser: dim, hidden, depth must be positive and time_dim a positive even "
                             f"number, got {dim}, {hidden}, {depth}, {time_dim}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"MLPDenoiser: num_classes must be a positive int or None, got {num_classes}")
        kw = dict(generator=generator)
        self.dim, self.time_dim, self.num_classes = int(dim), int(time_dim), num_classes
        self.time_fc1 = nn.Linear(time_dim, time_dim, **kw)
        self.time_fc2 = nn.Linear(time_dim, time_dim, **kw)
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + 1, time_dim, **kw)   # row num_classes = no label
        self.proj_in = nn.Linear(dim, hidden, **kw)
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(depth)])
        self.fc1 = nn.ModuleList([nn.Linear(hidden, hidden, **kw) for _ in range(depth)])
        self.time_proj = nn.ModuleList([nn.Linear(time_dim, hidden, **kw) for _ in range(depth)])
        self.fc2 = nn.ModuleList([nn.Linear(hidden, hidden, **kw) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, dim, **kw)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x, t, y=None):
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser: x must be a Tensor (B, {self.dim}), got {getattr(x, 'shape', x)}")
        # the shared checks of the image denoisers, on x seen as (B, dim, 1, 1)
        B = _check_inputs("MLPDenoiser", x.reshape(x.shape[0], self.dim, 1, 1), t, y, self.dim, self.num_classes)
        temb = self.time_fc2(F.silu(self.time_fc1(timestep_embedding(t, self.time_dim, x.dtype))))  # (B, time_dim)
        if self.num_classes is not None:
            temb = temb + self.label_emb(_labels_or_null(y, B, self.num_classes, x.device))
        h = self.proj_in(x)                                                      # (B, hidden)
        for norm, fc1, tp, fc2 in zip(self.norms, self.fc1, self.time_proj, self.fc2):
            h = h + fc2(F.silu(fc1(F.silu(norm(h))) + tp(F.silu(temb))))
        return self.proj_out(F.silu(self.norm_out(h)))                          # (B, dim)


class PaddedUNet(nn.Module):
    """A UNet on codes whose side cannot be halved: pad with zeros, denoise, crop.

    A 7 x 7 code cannot go through the UNet's 2x downsamplings, so the network's input is padded
    at the bottom and right to the next multiple of 2^(levels - 1) (8 x 8 for three levels) and its
    output cropped back.  The padding is input only: the diffusion, its noise and its loss live on
    the code itself.  x (B, c, h, w), t (B,), y (B,) or None -> (B, c, h, w).
    """

    def __init__(self, unet, levels):
        super().__init__()
        self.unet, self.factor = unet, 2 ** (int(levels) - 1)
        self.num_classes = unet.num_classes   # the null label of classifier-free guidance

    def forward(self, x, t, y=None):
        h, w = x.shape[2], x.shape[3]
        ph, pw = -h % self.factor, -w % self.factor
        if not (ph or pw):
            return self.unet(x, t, y)
        out = self.unet(F.pad(x, (0, pw, 0, ph)), t, y)                # (B, c, h + ph, w + pw)
        return out[:, :, :h, :w]                                        # (B, c, h, w)


def build_latent_denoiser(config, latent_shape, num_classes=None, generator=None):
    """The denoiser for codes of ``latent_shape``: a (padded) UNet for (c, h, w), an ``MLPDenoiser`` for (d,)."""
    latent_shape = tuple(latent_shape)
    if len(latent_shape) == 3:
        unet = UNet(in_channels=latent_shape[0], base_channels=config.base_channels,
                    channel_mults=tuple(config.channel_mults), time_dim=config.time_dim, num_classes=num_classes,
                    generator=generator)
        return PaddedUNet(unet, len(config.channel_mults))
    if len(latent_shape) == 1:
        return MLPDenoiser(latent_shape[0], config.mlp_hidden, config.mlp_depth, config.time_dim, num_classes,
                           generator=generator)
    raise ValueError(f"build_latent_denoiser: codes must be (c, h, w) or (d,), got {latent_shape}")


# ----------------------------------------------------------------------------
# the latent diffusion model
# ----------------------------------------------------------------------------

def latent_scale_factor(latents):
    """s = 1 / std(z), one scalar over every element of the training codes z (N, ...).

    After it the codes s z have unit variance, the scale the forward process
    (and its end point N(0, I)) is built for.  float64 arithmetic on the host.
    """
    z = np.asarray(backend.to_numpy(latents.data if isinstance(latents, Tensor) else latents), dtype=np.float64)
    std = float(z.std())
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"latent_scale_factor: the codes have standard deviation {std}; is the encoder trained?")
    return 1.0 / std


class LatentDiffusion:
    """A frozen first stage, a latent denoiser and a ``GaussianDiffusion`` on scaled codes u = s z.

    LatentDiffusion(first_stage, denoiser, diffusion, scale_factor=1.0)

    ``first_stage.encode(x)`` must return a ``Normal`` over z and
    ``first_stage.decode(z)`` a distribution over images (``KLAutoencoder`` or a
    ``VAE``).  Neither module is owned; the first stage only ever runs without
    a graph here.  ``latent_shape`` is the shape of one code, z (B, *latent_shape).
    """

    def __init__(self, first_stage, denoiser, diffusion, scale_factor=1.0, latent_shape=None):
        self.first_stage, self.denoiser, self.diffusion = first_stage, denoiser, diffusion
        self.scale_factor = float(scale_factor)
        if latent_shape is None:
            latent_shape = getattr(first_stage, "latent_shape", None) or (first_stage.latent_dim,)
        self.latent_shape = tuple(latent_shape)

    # --- the two maps between images and scaled codes -------------------------------------------
    def encode(self, x, generator=None, sample=True):
        """u_0 = s z with z ~ q(z | x) (``sample=False``: the posterior mean):  (B, *latent_shape), no graph."""
        with no_grad():
            q = self.first_stage.encode(x)
            z = q.sample(generator=generator) if sample else q.mean
            return (z * self.scale_factor).detach()

    def decode(self, u):
        """p(x | z = u / s): the first stage's decoder distribution; its ``.mean`` is the image."""
        return self.first_stage.decode(u * (1.0 / self.scale_factor))

    # --- training (the loss of notes §5.4 on codes) -----------------------------------------------
    def p_losses(self, x, y=None, generator=None):
        """The diffusion loss on the codes of images x (B, C, H, W); a scalar Tensor (graph in the denoiser only)."""
        u0 = self.encode(x, generator)
        return self.diffusion.p_losses(self.denoiser, u0, y=y, generator=generator)

    # --- sampling (§5.5 in latent space, then the decoder) ----------------------------------------
    def sample_latents(self, n, generator, y=None, sampler="ddim", steps=100, eta=0.0, guidance_scale=1.0,
                       record=None, progress=False):
        """n scaled codes u_0 from the latent chain (host float32 (n, *latent_shape)), never clipped.

        sampler "ddpm": all T ancestral steps; "ddim": ``steps`` DDIM steps with ``eta``.
        With ``record`` the (codes, trajectory) pair of ``GaussianDiffusion.sample``.
        """
        shape = (int(n),) + self.latent_shape
        kw = dict(y=y, guidance_scale=guidance_scale, clip_denoised=False, record=record, progress=progress)
        if sampler == "ddpm":
            return self.diffusion.sample(self.denoiser, shape, generator, **kw)
        if sampler == "ddim":
            return self.diffusion.ddim_sample(self.denoiser, shape, generator, steps=steps, eta=eta, **kw)
        raise ValueError(f"LatentDiffusion.sample: sampler must be 'ddim' or 'ddpm', got {sampler!r}")

    def decode_latents(self, u, batch=500):
        """Decoder means E[x | z = u / s] of host codes u (n, *latent_shape): host float32 (n, C, H, W), unclipped."""
        device, dtype = _device_and_dtype(self.first_stage)
        out = []
        with no_grad():
            for start in range(0, len(u), batch):
                ub = Tensor(backend.to_device(np.asarray(u[start:start + batch], dtype=dtype), device))
                out.append(backend.to_numpy(self.decode(ub).mean.data).astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def sample(self, n, generator, y=None, sampler="ddim", steps=100, eta=0.0, guidance_scale=1.0, progress=False):
        """Latent chain, then the decoder: n images as a host float32 array (n, C, H, W), unclipped."""
        u = self.sample_latents(n, generator, y, sampler, steps, eta, guidance_scale, progress=progress)
        return self.decode_latents(u)

    # --- the bound --------------------------------------------------------------------------------
    def latent_bound(self, u0, y=None, generator=None, progress=False, desc="latent bound"):
        """L(u_0) = L_T + sum_{t>=1} L_t + L_0 >= -log p(u_0), in nats per code:  host float64 (B,).

        u0 (B, *latent_shape) Tensor.  L_t = KL(q(u_{t-1} | u_t, u_0) || p(u_{t-1} | u_t)) with one
        draw of u_t per step; L_0 = -log N(u_0; mu_theta(u_1), sigma_1^2), the continuous density of
        the last step (codes are not 8-bit data).  One denoiser call per step (T in all); the terms
        are computed in float64 on the host.  Runs under no_grad.  ``progress``: a bar over the T steps.
        """
        from tqdm import tqdm

        d, s = self.diffusion, self.diffusion.schedule
        generator = generator or backend.default_generator(u0.device)
        b, device = len(u0), u0.device
        xp = backend.get_array_module(device)
        u64 = backend.to_numpy(u0.data).astype(np.float64).reshape(b, -1)                 # (B, D)
        # L_T = KL(q(u_T | u_0) || N(0, I)): no parameters
        total = gaussian_kl(s.sqrt_alphas_cumprod[-1] * u64, s.log_one_minus_alphas_cumprod[-1], 0.0, 0.0).sum(1)
        with no_grad():
            for step in tqdm(range(d.T), disable=not progress, desc=desc, mininterval=2.0, leave=False):
                t = Tensor(xp.full(b, step, dtype=np.int64))
                noise = Tensor(generator.normal(u0.shape, dtype=d.dtype, device=device))
                u_t = d.q_sample(u0, t, noise)
                x0_hat = backend.to_numpy(d.model_predictions(self.denoiser, u_t, t, y).x0.data)
                ut64 = backend.to_numpy(u_t.data).astype(np.float64).reshape(b, -1)
                x0_hat = x0_hat.astype(np.float64).reshape(b, -1)
                c1, c2 = s.posterior_mean_coef1[step], s.posterior_mean_coef2[step]
                model_mean, model_logvar = c1 * x0_hat + c2 * ut64, d.model_log_variance[step]
                if step == 0:   # -log N(u_0; model_mean, e^logvar), continuous
                    total += 0.5 * (LOG_2PI + model_logvar + (u64 - model_mean) ** 2 * math.exp(-model_logvar)).sum(1)
                else:
                    true_mean = c1 * u64 + c2 * ut64
                    total += gaussian_kl(true_mean, s.posterior_log_variance_clipped[step],
                                       model_mean, model_logvar).sum(1)
        return total

    def two_stage_bound(self, x, y=None, generator=None, progress=False, desc="latent bound"):
        """The two-stage upper bound on -log p(x) (module docstring), one z ~ q(z | x) per image.

        x (B, C, H, W): what the first stage's decoder models (dequantized grey levels for a Gaussian
        decoder, binary pixels for a Bernoulli one).  Returns host float64 arrays (B,), in nats:
        "decoder" E_q[-log p(x|z)], "entropy" H[q(z|x)], "latent" E_q[L(s z)] - D_z log s (a bound on
        -log p(z)), "total" decoder - entropy + latent (the bound), and "prior_kl" KL(q(z|x) || N(0, I))
        (decoder + prior_kl is the first stage's own -ELBO under the N(0, I) prior, for comparison).
        ``progress``: a bar over the latent bound's T steps.
        """
        generator = generator or backend.default_generator(x.device)
        with no_grad():
            q = self.first_stage.encode(x)
            z = q.sample(generator=generator)                                          # (B, *latent_shape)
            decoder = -_sum_per_example(self.first_stage.decode(z).log_prob(x))
            entropy = _sum_per_example(q.entropy())
            prior_kl = _sum_per_example(kl_divergence(q, Normal(zeros_like(q.mean), zeros_like(q.mean))))
            host = lambda t: backend.to_numpy(t.data).astype(np.float64)  # noqa: E731
            decoder, entropy, prior_kl = host(decoder), host(entropy), host(prior_kl)
            num_latent = int(np.prod(self.latent_shape))
            latent = self.latent_bound(z * self.scale_factor, y, generator, progress, desc) - num_latent * math.log(self.scale_factor)
        return {"decoder": decoder, "entropy": entropy, "latent": latent, "total": decoder - entropy + latent,
                "prior_kl": prior_kl}


def _device_and_dtype(module):
    for p in module.parameters():
        return p.device, p.dtype
    return backend.get_default_device(), backend.get_default_dtype()


def encode_dataset(first_stage, images, generator=None, batch=500):
    """Posterior means and log-variances of host images (N, C, H, W): two host float64 arrays (N, *code)."""
    device, dtype = _device_and_dtype(first_stage)
    means, logvars = [], []
    with no_grad():
        for start in range(0, len(images), batch):
            xb = Tensor(backend.to_device(np.asarray(images[start:start + batch], dtype=dtype), device))
            q = first_stage.encode(xb)
            means.append(backend.to_numpy(q.mean.data).astype(np.float64))
            logvars.append(backend.to_numpy(F.broadcast_to(q.logvar, q.mean.shape).data).astype(np.float64))
    return np.concatenate(means), np.concatenate(logvars)


# ----------------------------------------------------------------------------
# the prior hole (notes §5.7)
# ----------------------------------------------------------------------------

def gaussian_log_density(z, means, logvars, chunk=256):
    """log N(z_m; mu_n, diag exp(logvar_n)) for every pair:  z (M, D), means/logvars (N, D) -> (M, N), float64.

    The squared distance expands into matrix products,
    sum_d (z - mu)^2 / v = (z^2) (1/v)^T - 2 z (mu/v)^T + sum_d mu^2 / v, so no (M, N, D) array is formed.
    """
    z = np.asarray(z, dtype=np.float64)
    means, logvars = np.asarray(means, dtype=np.float64), np.asarray(logvars, dtype=np.float64)
    inv = np.exp(-logvars)                                                     # (N, D)
    const = -0.5 * (z.shape[1] * LOG_2PI + logvars.sum(1) + (means * means * inv).sum(1))   # (N,)
    out = np.empty((len(z), len(means)))
    for start in range(0, len(z), chunk):
        zc = z[start:start + chunk]
        out[start:start + chunk] = const - 0.5 * ((zc * zc) @ inv.T) + zc @ (means * inv).T
    return out


def _logsumexp(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (np.log(np.exp(a - m).sum(axis=axis, keepdims=True)) + m).squeeze(axis)   # the max subtracted


def aggregate_log_density(z, means, logvars):
    """log q(z) of the aggregated posterior q(z) = (1/N) sum_n N(z; mu_n, diag exp(logvar_n)).

    z (M, ...) codes; means, logvars (N, ...) the posteriors of N images -> float64 (M,).
    """
    flat = lambda a: np.asarray(a, dtype=np.float64).reshape(len(a), -1)  # noqa: E731
    return _logsumexp(gaussian_log_density(flat(z), flat(means), flat(logvars)), axis=1) - math.log(len(means))


def prior_hole(train_mean, train_logvar, test_mean, test_logvar, generator, n_prior=1000, draws=None):
    """How much of the prior N(0, I) the aggregated posterior leaves empty (notes §5.7).

    The decoder was trained on codes from q_N(z) = (1/N) sum_n q(z | x_n), the mixture of the N
    training images' posteriors (means/logvars (N, ...)); its density is known exactly.  The ELBO's
    average KL term splits as (Hoffman & Johnson 2016)

        rate = (1/N) sum_n KL(q(z | x_n) || p(z)) = I_N + KL(q_N(z) || p(z)),   0 <= I_N <= log N,

    with I_N the mutual information between the index n and z.  One draw z_n ~ q(z | x_n) per training
    image gives a Monte-Carlo estimate of KL(q_N || p) = E_{q_N}[log q_N(z) - log p(z)], unbiased.
    Held-out codes z ~ q(z | x) of test images (test_mean/test_logvar (M, ...)), ``n_prior`` draws of
    N(0, I) (what a VAE decodes) and ``draws`` (name -> codes (K, ...), e.g. a Gaussian mixture's or the
    latent diffusion's, unscaled) are placed against it.  Returns a dict of floats (nats):

    rate, mutual_info, marginal_kl   the three terms above (on the training images); log_n = log N
    moment_kl         KL(N(m, C) || N(0, I)) for the mean m and covariance C of the training draws: a lower
                      bound on KL(q_N || p) (a Gaussian has the largest entropy for its covariance); from M
                      codes in D dims the sample log-determinant is biased low, which raises it by about
                      D(D+1)/(4M) nats
    and for each sampler S in train (the training draws), codes (held-out), prior and ``draws``:
    log_p_S           mean log N(z; 0, I), the prior density of its codes
    log_q_S           mean log q_N(z), the density of its codes under the codes the decoder was trained on
    in_hole_S         the fraction of its codes with log q_N(z) below the 1st percentile of the held-out
                      codes' (about 1% for new draws of q_N; 1% for the held-out codes by construction)
    """
    flat = lambda a: np.asarray(a, dtype=np.float64).reshape(len(a), -1)  # noqa: E731
    tm, tl, hm, hl = flat(train_mean), flat(train_logvar), flat(test_mean), flat(test_logvar)
    d = tm.shape[1]

    def posterior_draws(mean, logvar):
        return mean + np.exp(0.5 * logvar) * backend.to_numpy(generator.normal(mean.shape, dtype=np.float64))

    samplers = {"train": posterior_draws(tm, tl), "codes": posterior_draws(hm, hl),
                "prior": backend.to_numpy(generator.normal((int(n_prior), d), dtype=np.float64))}
    samplers.update({name: flat(z) for name, z in (draws or {}).items()})
    log_q = {name: aggregate_log_density(z, tm, tl) for name, z in samplers.items()}
    log_p = {name: -0.5 * (d * LOG_2PI + (z * z).sum(1)) for name, z in samplers.items()}
    threshold = np.percentile(log_q["codes"], 1.0)
    rate = 0.5 * (np.exp(tl) + tm * tm - 1.0 - tl).sum(1).mean()
    marginal_kl = float(np.mean(log_q["train"] - log_p["train"]))
    train = samplers["train"]
    m, cov = train.mean(0), np.cov(train, rowvar=False).reshape(d, d)
    moment_kl = 0.5 * (np.trace(cov) + m @ m - d - np.linalg.slogdet(cov)[1])
    out = {"rate": float(rate), "marginal_kl": marginal_kl, "mutual_info": float(rate - marginal_kl),
           "log_n": math.log(len(tm)), "moment_kl": float(moment_kl), "latent_dim": float(d)}
    for name in samplers:
        out[f"log_p_{name}"] = float(log_p[name].mean())
        out[f"log_q_{name}"] = float(log_q[name].mean())
        out[f"in_hole_{name}"] = float(np.mean(log_q[name] < threshold))
    return out


# ----------------------------------------------------------------------------
# the training steps
# ----------------------------------------------------------------------------

def first_stage_step(autoencoder, opt, x, kl_weight, generator=None):
    """One Adam step of the first stage on images x (B, C, 28, 28): mean over the batch of
    sum (x - x_hat(z))^2 + kl_weight * KL(q(z|x) || N(0, I)).  Returns floats: loss, recon, kl."""
    opt.zero_grad()
    loss, recon, kl = autoencoder.loss(x, kl_weight, generator)
    loss = loss.mean()
    loss.backward()
    opt.step()
    return {"loss": loss.item(), "recon": recon.mean().item(), "kl": kl.mean().item()}


def latent_diffusion_step(ldm, opt, x, y=None, generator=None, label_dropout=0.0, grad_clip=0.0,
                          lr_scheduler=None, ema=None):
    """One step of Algorithm 1 of Ho et al. (2020) on the frozen first stage's scaled codes.

    u_0 = s z with z ~ q(z | x), computed without a graph (the first stage gets no gradient), then
    ``ddpm.train_step`` on u_0: t ~ U{0..T-1}, eps ~ N(0, I), loss = || target - denoiser(u_t, t, y) ||^2,
    Adam on the denoiser (labels dropped to the null label with probability ``label_dropout``, the
    gradient norm clipped at ``grad_clip``), the learning-rate schedule and the EMA of its weights.
    x (B, C, H, W): images as the first stage sees them; y (B,) int labels or None.
    Returns floats: loss, lr and (with clipping) grad_norm.
    """
    u0 = ldm.encode(x, generator)                                               # (B, *latent_shape)
    return ddpm.train_step(ldm.diffusion, ldm.denoiser, opt, u0, y, generator, label_dropout, grad_clip,
                           lr_scheduler, ema)

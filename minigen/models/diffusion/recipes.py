"""Diffusion models on the command line: ``ddpm``, ``dit`` and their class-conditional variants.

Notes §5.4 (training) and §5.5 (sampling), wired to the training loop of
``minigen.train``.  One training step is Algorithm 1 of Ho et al. (2020):

    x0 ~ data (rescaled to [-1, 1]),  t ~ U{0, ..., T-1},  eps ~ N(0, I),
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
    loss = || target - net(x_t, t, y) ||^2       (target: eps, x0 or v),

then one Adam step (after a linear learning-rate warm-up, then a constant or
cosine-decaying rate (``lr_schedule``), with the gradient
norm clipped at ``grad_clip``) and one update of the exponential moving
average of the weights.  Samples and every evaluation use the averaged
weights (Ho et al. use decay 0.9999 over 800k steps; a few thousand CPU steps
need a shorter memory, 0.999 here).

Families (``python -m minigen list``):

    ddpm    UNet denoiser (the W3 network of the benchmarks, ~0.5 M parameters)
    dit     DiT denoiser (patch 4 -> 49 tokens, adaLN-Zero blocks; Peebles & Xie 2023)
    cddpm   class-conditional UNet with classifier-free guidance (Ho & Salimans 2022)
    cdit    class-conditional DiT with classifier-free guidance

Classifier-free guidance: during training each label is replaced by the null
label (index ``num_classes``) with probability ``label_dropout``, so one
network learns both eps(x, t, y) and eps(x, t); sampling mixes them with the
guidance scale s, eps = eps(x, t) + s (eps(x, t, y) - eps(x, t)) (s = 1: no
guidance).

Evaluation (``python -m minigen eval RUN``) reports the exact variational
bound in bits/dim on ``eval_images`` test digits (each image costs T network
calls, so the default is a few hundred images on a CPU), the test L_simple,
and the sample metrics of ``eval_samples`` DDIM samples.

Bigger runs on a GPU: ``train FAMILY --preset gpu`` (``UNET_GPU`` and
``DIT_GPU`` below: twice the UNet's width, a DiT on 2 x 2 patches, 20,000
steps of 128 images).  The CPU defaults are sized for 2 cores; the README
gives their measured times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ... import backend, optim
from ...autograd import Tensor, no_grad
from ...train import Recipe, RunConfig, TrainingError, register
from .ddpm import GaussianDiffusion
from .dit import DiT
from .unet import UNet

__all__ = ["DiffusionConfig", "DiTConfig", "DDPMRecipe", "DiTRecipe", "ConditionalDDPMRecipe",
           "ConditionalDiTRecipe", "to_model_range", "from_model_range"]


def to_model_range(x):
    """Grey levels in [0, 1] -> [-1, 1], the range the forward process starts from."""
    return x * 2.0 - 1.0


def from_model_range(x):
    """[-1, 1] -> [0, 1] (host arrays), clipped."""
    return np.clip((np.asarray(x) + 1.0) / 2.0, 0.0, 1.0)


@dataclass
class DiffusionConfig(RunConfig):
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
    ema_decay: float = 0.999          # decay of the weights' moving average used for sampling and evaluation
    warmup: int = 200                 # steps of linear learning-rate warm-up
    lr_schedule: str = "constant"     # after warm-up: "constant", or "cosine" (half cosine down to 0 at `steps`)
    grad_clip: float = 1.0            # clip the gradient's global norm (0: off)
    eval_images: int = 100            # test images for the bound in bits/dim (each costs T network calls)
    steps: int = 2000                 # optimisation steps (UNet on 2 CPU cores: ~40 min)
    batch_size: int = 64              # images per step
    lr: float = 5e-4                  # Adam learning rate after warm-up
    sample_every: int = 1000          # steps between sample grids
    checkpoint_every: int = 250       # steps between checkpoints

    def validate(self):
        super().validate()
        choices = {"denoiser": ("unet", "dit"), "schedule": ("linear", "cosine", "sigmoid"),
                   "objective": ("eps", "x0", "v"), "loss_type": ("simple", "vlb"),
                   "variance": ("fixed_small", "fixed_large"), "sampler": ("ddim", "ddpm"),
                   "lr_schedule": ("constant", "cosine")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TrainingError(f"config: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("T", "base_channels", "time_dim", "patch_size", "dim", "depth", "heads", "sample_steps"):
            if getattr(self, name) < 1:
                raise TrainingError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise TrainingError(f"config: channel_mults must be positive integers, got {self.channel_mults}")
        if self.sample_steps > self.T:
            raise TrainingError(f"config: sample_steps ({self.sample_steps}) cannot exceed T ({self.T})")
        if self.dim % self.heads:
            raise TrainingError(f"config: dim ({self.dim}) must be divisible by heads ({self.heads})")
        for name in ("label_dropout", "dropout", "eta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TrainingError(f"config: {name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainingError(f"config: ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise TrainingError(f"config: guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if self.warmup < 1 or self.eval_images < 0 or self.grad_clip < 0:
            raise TrainingError("config: warmup must be >= 1, eval_images and grad_clip >= 0")


@dataclass
class DiTConfig(DiffusionConfig):
    """The DiT's CPU default.  With eps-prediction and a constant rate the DiT of
    patch 4 still drew speckled non-digits after 4,000 steps (its x0 estimates
    at t ~ 300-500 kept pixel noise, where the UNet's were smooth); predicting v
    (Salimans & Ho 2022), whose error is not amplified by 1/sqrt(abar_t) at large
    t, and a cosine decay of the rate gave recognisable digits by 3,000 steps."""
    denoiser: str = "dit"             # the transformer denoiser
    objective: str = "v"              # v = sqrt(abar) eps - sqrt(1 - abar) x0 (see the docstring)
    lr: float = 1e-3                  # transformers of this size take a larger step than the UNet
    lr_schedule: str = "cosine"       # decay to 0 at `steps`
    steps: int = 5000                 # optimisation steps (~0.2 s each for this DiT on 2 CPU cores)


def build_denoiser(config, image_shape, num_classes=None, generator=None):
    """The UNet or DiT of a config for images of ``image_shape`` (C, H, W)."""
    c, h, w = image_shape
    if config.denoiser == "unet":
        levels = len(config.channel_mults)
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise TrainingError(f"config: {h}x{w} images cannot be halved {levels - 1} times "
                                f"(channel_mults={config.channel_mults})")
        return UNet(in_channels=c, base_channels=config.base_channels, channel_mults=tuple(config.channel_mults),
                    time_dim=config.time_dim, num_classes=num_classes, dropout=config.dropout, generator=generator)
    if h != w or h % config.patch_size:
        raise TrainingError(f"config: DiT needs square images divisible by patch_size={config.patch_size}, "
                            f"got {h}x{w}")
    return DiT(image_size=h, in_channels=c, patch_size=config.patch_size, dim=config.dim, depth=config.depth,
               heads=config.heads, num_classes=num_classes, generator=generator)


# Larger runs for a CUDA GPU (``--preset gpu``).  Sizes follow the small-image
# settings of Ho et al. (2020) and Peebles & Xie (2023) scaled to 28 x 28 digits;
# the learning rates are the usual ones for these widths at batch 128.
_GPU_RUN = dict(device="gpu", steps=20000, batch_size=128, warmup=1000, ema_decay=0.9995,
                checkpoint_every=1000, sample_every=5000, eval_images=1000, eval_samples=5000)
UNET_GPU = dict(_GPU_RUN, base_channels=64, lr=2e-4, dropout=0.1)            # 2.4 M parameters (cddpm)
DIT_GPU = dict(_GPU_RUN, patch_size=2, dim=256, depth=8, heads=8, lr=3e-4)   # 196 tokens, 9.7 M parameters (cdit)


@register
class DDPMRecipe(Recipe):
    """Denoising diffusion with a UNet (Ho et al. 2020), notes §5-5.6."""

    name = "ddpm"
    Config = DiffusionConfig
    description = "denoising diffusion (DDPM/DDIM) with a UNet denoiser, notes §5"
    presets = {"gpu": UNET_GPU}

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        self.num_classes = len(data.classes) if self.conditional else None
        self.image_shape = tuple(data.images.shape[1:])   # (C, H, W)
        init_gen = type(generator)(config.seed, "cpu")
        self.net = build_denoiser(config, self.image_shape, self.num_classes, init_gen).to(device)
        self.diffusion = GaussianDiffusion(config.schedule, T=config.T, objective=config.objective,
                                           loss_type=config.loss_type, variance=config.variance)
        self.opt = optim.Adam(self.net.parameters(), lr=config.lr)
        # The cosine reaches 0 at config.steps (a run shorter than its warm-up only warms up);
        # resuming with more steps re-stretches what is left of it.
        self.lr_scheduler = (optim.CosineWarmupLR(self.opt, config.warmup, max(config.steps, config.warmup + 1))
                             if config.lr_schedule == "cosine" else optim.LinearWarmupLR(self.opt, config.warmup))
        self.ema = optim.ExponentialMovingAverage(self.net, decay=config.ema_decay, warmup=True)
        self.modules = {"denoiser": self.net}
        # the schedule's position is optimizer state too: it must survive a resume
        # (saved under "warmup", the name checkpoints have carried since before the cosine option)
        self.optimizers = {"adam": self.opt, "warmup": self.lr_scheduler}
        self.emas = {"denoiser": self.ema}

    def prepare(self, x, y, generator):
        return to_model_range(x), y

    def _training_labels(self, y):
        """Labels with a fraction ``label_dropout`` replaced by the null label (classifier-free guidance)."""
        if not self.conditional:
            return None
        drop = self.generator.uniform((len(y),)) < self.config.label_dropout
        xp = backend.xp_of(y.data)
        return Tensor(xp.where(backend.to_device(drop, self.device), self.num_classes, y.data).astype(np.int64))

    def train_step(self, x, y):
        self.opt.zero_grad()
        loss = self.diffusion.p_losses(self.net, x, y=self._training_labels(y), generator=self.generator)
        loss.backward()
        logs = {"loss": loss.item(), "lr": self.opt.param_groups[0]["lr"]}
        if self.config.grad_clip:
            logs["grad_norm"] = optim.clip_grad_norm_(self.net.parameters(), self.config.grad_clip).item()
        self.opt.step()
        self.lr_scheduler.step()
        self.ema.update()
        return logs

    def _labels_for(self, n, generator, labels):
        if not self.conditional:
            return None
        if labels is None:
            labels = backend.to_numpy(generator.integers(0, self.num_classes, shape=(n,)))
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"{self.name}: labels must be {n} integers in [0, {self.num_classes}), got {labels}")
        return Tensor(backend.to_device(labels, self.device))

    def generate(self, n, generator, labels=None, sampler=None, steps=None, eta=None, guidance_scale=None,
                 record=None, progress=False):
        """n images with the EMA weights, in [-1, 1] (and the trajectory when ``record`` is set).

        sampler/steps/eta/guidance_scale default to the config's; "ddpm" runs all T ancestral steps.
        """
        cfg = self.config
        shape = (n,) + self.image_shape
        if not self.conditional:
            guidance_scale = 1.0            # nothing to guide: the plain model
        kw = dict(y=self._labels_for(n, generator, labels), record=record, progress=progress,
                  guidance_scale=cfg.guidance_scale if guidance_scale is None else guidance_scale)
        with no_grad(), self.ema.average_parameters():
            if (sampler or cfg.sampler) == "ddpm":
                return self.diffusion.sample(self.net, shape, generator, **kw)
            return self.diffusion.ddim_sample(self.net, shape, generator, steps=steps or cfg.sample_steps,
                                              eta=cfg.eta if eta is None else eta, **kw)

    def sample(self, n, generator, labels=None):
        """n images in [0, 1] (host, NCHW) from the EMA weights with the config's sampler."""
        return from_model_range(self.generate(n, generator, labels))

    def evaluate(self, x, y, generator):
        """The bound in bits/dim on ``eval_images`` test images (0: all of them) and the test loss
        (EMA weights).  ``test_loss_simple`` is the unweighted MSE of the run's objective: L_simple
        for eps-prediction, the MSE of x0 or v otherwise, so compare it only between runs that
        predict the same thing."""
        n = len(x) if self.config.eval_images == 0 else min(len(x), self.config.eval_images)
        out = {}
        totals, priors, losses = [], [], []
        batch = 100
        with no_grad(), self.ema.average_parameters():
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                xb = to_model_range(Tensor(backend.to_device(x[start:stop], self.device)))
                yb = (Tensor(backend.to_device(np.asarray(y[start:stop], dtype=np.int64), self.device))
                      if self.conditional else None)
                b = self.diffusion.bpd(self.net, xb, y=yb, generator=generator)
                totals.append(b["total"])
                priors.append(b["prior"])
                losses.append(self.diffusion.p_losses(self.net, xb, y=yb, generator=generator).item() * len(xb))
        out["test_bpd"] = float(np.concatenate(totals).mean())
        out["test_bpd_prior"] = float(np.concatenate(priors).mean())
        out["test_loss_simple"] = float(np.sum(losses) / n)
        out["eval_images"] = float(n)
        return out


@register
class DiTRecipe(DDPMRecipe):
    name = "dit"
    Config = DiTConfig
    description = "denoising diffusion with a DiT (transformer on patches, adaLN-Zero), notes §5.6"
    presets = {"gpu": DIT_GPU}


@register
class ConditionalDDPMRecipe(DDPMRecipe):
    name = "cddpm"
    description = "class-conditional DDPM (UNet) with classifier-free guidance, notes §4 and §5"
    conditional = True


@register
class ConditionalDiTRecipe(DDPMRecipe):
    name = "cdit"
    Config = DiTConfig
    description = "class-conditional DiT with classifier-free guidance, notes §4 and §5.6"
    conditional = True
    presets = {"gpu": DIT_GPU}

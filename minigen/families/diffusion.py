"""The diffusion families on the command line: ``ddpm``, ``dit`` and their class-conditional variants.

Notes §5.4 (training) and §5.5 (sampling).  One training step is
``minigen.models.diffusion.ddpm.train_step`` (Algorithm 1 of Ho et al. 2020,
written out in its docstring) with Adam, a linear learning-rate warm-up followed
by a constant or cosine-decaying rate (``lr_schedule``), the gradient norm
clipped at ``grad_clip``, and an exponential moving average of the weights
that every sample and evaluation uses (Ho et al. use decay 0.9999 over 800k
steps; a few thousand CPU steps need a shorter memory, 0.999 here).

Families (``python -m minigen list``):

    ddpm    UNet denoiser (the W3 network of the benchmarks, ~0.6 M parameters)
    dit     DiT denoiser (patch 4 -> 49 tokens, adaLN-Zero blocks; Peebles & Xie 2023)
    cddpm   class-conditional UNet with classifier-free guidance (Ho & Salimans 2022)
    cdit    class-conditional DiT with classifier-free guidance

Evaluation (``python -m minigen eval RUN``) reports the exact variational bound
in bits/dim on ``eval_images`` test digits (each image costs T network calls),
the test loss of the run's objective, and the sample metrics of ``eval_samples``
DDIM samples.  ``train FAMILY --preset gpu`` selects the larger networks and
runs of ``UNET_GPU`` / ``DIT_GPU`` below.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .. import backend, optim
from ..autograd import Tensor, no_grad
from ..data.transforms import from_symmetric_range, to_symmetric_range
from ..models.diffusion import ddpm
from .base import Recipe, RunConfig

__all__ = ["DenoiserTrainingOptions", "DiffusionRunConfig", "DiTRunConfig", "DDPMRecipe", "DiTRecipe", "ConditionalDDPMRecipe",
           "ConditionalDiTRecipe", "UNET_GPU", "DIT_GPU"]


@dataclass
class DenoiserTrainingOptions:
    """How a denoiser trains and is scored: shared by the pixel (``ddpm``) and latent (``ldm``) families."""

    ema_decay: float = 0.999          # decay of the weights' moving average used for sampling and evaluation
    warmup: int = 200                 # steps of linear learning-rate warm-up
    lr_schedule: str = "constant"     # after warm-up: "constant", or "cosine" (half cosine down to 0 at `steps`)
    grad_clip: float = 1.0            # clip the gradient's global norm (0: off)
    eval_images: int = 100            # test images for the bound in bits/dim (each costs T network calls)

    def validate(self):
        """Called by ``RunConfig.validate`` with the other model-half checks."""
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"config: lr_schedule must be one of constant, cosine, got {self.lr_schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"config: ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.warmup < 1 or self.eval_images < 0 or self.grad_clip < 0:
            raise ValueError("config: warmup must be >= 1, eval_images and grad_clip >= 0")


@dataclass
class DiffusionRunConfig(RunConfig, ddpm.DiffusionConfig, DenoiserTrainingOptions):
    steps: int = 2000                 # optimisation steps
    batch_size: int = 64              # images per step
    lr: float = 5e-4                  # Adam learning rate after warm-up
    sample_every: int = 1000          # steps between sample grids
    checkpoint_every: int = 250       # steps between checkpoints


@dataclass
class DiTRunConfig(DiffusionRunConfig):
    """The DiT's CPU default: v-prediction and a cosine rate (the README tells why: with
    eps-prediction and a constant rate this DiT drew no digits in 4,000 steps)."""
    denoiser: str = "dit"             # the transformer denoiser
    objective: str = "v"              # v = sqrt(abar) eps - sqrt(1 - abar) x0: its x0 error is not amplified at large t
    lr: float = 1e-3                  # transformers of this size take a larger step than the UNet
    lr_schedule: str = "cosine"       # decay to 0 at `steps`
    steps: int = 5000                 # optimisation steps


# Larger runs for a CUDA GPU (``--preset gpu``).  Sizes follow the small-image
# settings of Ho et al. (2020) and Peebles & Xie (2023) scaled to 28 x 28 digits;
# the learning rates are the usual ones for these widths at batch 128.
_GPU_RUN = dict(device="gpu", steps=20000, batch_size=128, warmup=1000, ema_decay=0.9995,
                checkpoint_every=1000, sample_every=5000, eval_images=1000, eval_samples=5000)
UNET_GPU = dict(_GPU_RUN, base_channels=64, lr=2e-4, dropout=0.1)            # 2.4 M parameters (cddpm)
DIT_GPU = dict(_GPU_RUN, patch_size=2, dim=256, depth=8, heads=8, lr=3e-4)   # 196 tokens, 9.7 M parameters (cdit)


def _legacy_unet_key(key, levels):
    """A UNet parameter name from before the ModuleLists (``res2.conv1.weight``) -> today's
    (``downs.1.res.conv1.weight``); other names are returned unchanged."""
    m = re.match(r"(up_res|res|down|up)(\d+)\.(.*)", key)
    if m is None:
        return key
    kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
    if kind == "res":
        return f"downs.{i - 1}.res.{rest}"
    if kind == "down":
        return f"downs.{i}.down.{rest}"
    j = levels - i                              # up_res{L} is ups.0; up{i} / up_res{i} are ups.{L - i}
    return f"ups.{j}.{'res' if kind == 'up_res' else 'up'}.{rest}"


class DDPMRecipe(Recipe):
    """Denoising diffusion with a UNet (Ho et al. 2020), notes §5-5.6."""

    name = "ddpm"
    Config = DiffusionRunConfig
    description = "denoising diffusion (DDPM/DDIM) with a UNet denoiser, notes §5"
    presets = {"gpu": UNET_GPU}

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        self.num_classes = len(data.classes) if self.conditional else None
        self.image_shape = tuple(data.images.shape[1:])   # (C, H, W)
        init_gen = type(generator)(config.seed, "cpu")
        self.net = ddpm.build_denoiser(config, self.image_shape, self.num_classes, init_gen).to(device)
        ddpm.draw_dropout_from(self.net, generator)       # masks from the checkpointed stream: exact resumes
        self.diffusion = ddpm.GaussianDiffusion(config.schedule, T=config.T, objective=config.objective,
                                                loss_type=config.loss_type, variance=config.variance)
        self.opt = optim.Adam(self.net.parameters(), lr=config.lr)
        # The cosine reaches 0 at config.steps (a run shorter than its warm-up only warms up);
        # resuming with more steps re-stretches what is left of it.
        self.lr_scheduler = (optim.CosineWarmupLR(self.opt, config.warmup, max(config.steps, config.warmup + 1))
                             if config.lr_schedule == "cosine" else optim.LinearWarmupLR(self.opt, config.warmup))
        self.ema = optim.ExponentialMovingAverage(self.net, decay=config.ema_decay, warmup=True)
        self.modules = {"denoiser": self.net}
        self.optimizers = {"adam": self.opt}
        self.schedulers = {"lr": self.lr_scheduler}
        self.emas = {"denoiser": self.ema}

    @classmethod
    def uses_option(cls, name, help_text):
        """UNet options for the UNet families, DiT options for the DiT ones, label options for the
        conditional ones."""
        denoiser = cls.Config.denoiser
        if help_text.startswith("UNet:"):
            return denoiser == "unet"
        if help_text.startswith("DiT:"):
            return denoiser == "dit"
        return super().uses_option(name, help_text)

    def upgrade_state(self, state):
        """Checkpoints from before the UNet's ModuleLists name its levels ``res{i}``, ``down{i}``, ...;
        rename those keys in the weights and in the moving average (Adam's moments are stored by
        parameter position, which did not change)."""
        state = super().upgrade_state(state)
        if self.config.denoiser != "unet":
            return state
        levels = len(self.config.channel_mults)
        state = dict(state)
        modules = dict(state.get("modules", {}))
        if "denoiser" in modules:
            modules["denoiser"] = {_legacy_unet_key(k, levels): v for k, v in modules["denoiser"].items()}
        emas = dict(state.get("emas", {}))
        if "denoiser" in emas and "shadow" in emas["denoiser"]:
            ema = dict(emas["denoiser"])
            ema["shadow"] = {_legacy_unet_key(k, levels): v for k, v in ema["shadow"].items()}
            emas["denoiser"] = ema
        state["modules"], state["emas"] = modules, emas
        return state

    def prepare(self, x, y, generator):
        return to_symmetric_range(x), y      # [0, 1] -> [-1, 1], where the forward process starts

    def train_step(self, x, y):
        c = self.config
        return ddpm.train_step(self.diffusion, self.net, self.opt, x, y if self.conditional else None,
                               self.generator, label_dropout=c.label_dropout, grad_clip=c.grad_clip,
                               lr_scheduler=self.lr_scheduler, ema=self.ema)

    def generate(self, n, generator, labels=None, sampler=None, steps=None, eta=None, guidance_scale=None,
                 record=None, progress=False):
        """n images with the EMA weights, in [-1, 1] (and the trajectory when ``record`` is set).

        sampler/steps/eta/guidance_scale default to the config's; "ddpm" runs all T ancestral steps.
        """
        cfg = self.config
        shape = (n,) + self.image_shape
        if not self.conditional:
            guidance_scale = 1.0            # nothing to guide: the plain model
        kw = dict(y=self.sampling_labels(n, generator, labels), record=record, progress=progress,
                  guidance_scale=cfg.guidance_scale if guidance_scale is None else guidance_scale)
        with no_grad(), self.ema.average_parameters():
            if (sampler or cfg.sampler) == "ddpm":
                return self.diffusion.sample(self.net, shape, generator, **kw)
            return self.diffusion.ddim_sample(self.net, shape, generator, steps=steps or cfg.sample_steps,
                                              eta=cfg.eta if eta is None else eta, **kw)

    def sample(self, n, generator, labels=None):
        """n images in [0, 1] (host, NCHW) from the EMA weights with the config's sampler."""
        return np.clip(from_symmetric_range(self.generate(n, generator, labels)), 0.0, 1.0)

    def evaluate(self, x, y, generator):
        """The bound in bits/dim on ``eval_images`` test images (0: all of them) and the test loss
        (EMA weights).  ``test_loss_simple`` is the unweighted MSE of the run's objective: L_simple
        for eps-prediction, the MSE of x0 or v otherwise, so compare it only between runs that
        predict the same thing."""
        n = len(x) if self.config.eval_images == 0 else min(len(x), self.config.eval_images)
        totals, priors, losses = [], [], []
        batch = 100
        with no_grad(), self.ema.average_parameters():
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                xb = to_symmetric_range(Tensor(backend.to_device(x[start:stop], self.device)))
                yb = (Tensor(backend.to_device(np.asarray(y[start:stop], dtype=np.int64), self.device))
                      if self.conditional else None)
                b = self.diffusion.bpd(self.net, xb, y=yb, generator=generator, progress=self.progress,
                                       desc=f"bits/dim, images {start + 1}-{stop} of {n}")
                totals.append(b["total"])
                priors.append(b["prior"])
                losses.append(self.diffusion.p_losses(self.net, xb, y=yb, generator=generator).item() * len(xb))
        return {"test_bpd": float(np.concatenate(totals).mean()),
                "test_bpd_prior": float(np.concatenate(priors).mean()),
                "test_loss_simple": float(np.sum(losses) / n), "eval_images": float(n)}


class DiTRecipe(DDPMRecipe):
    """Denoising diffusion with a DiT denoiser (Peebles & Xie 2023), notes §5.6."""

    name = "dit"
    Config = DiTRunConfig
    description = "denoising diffusion with a DiT (transformer on patches, adaLN-Zero), notes §5.6"
    presets = {"gpu": DIT_GPU}


class ConditionalDDPMRecipe(DDPMRecipe):
    """Class-conditional DDPM (UNet) sampled with classifier-free guidance, notes §4 and §5."""

    name = "cddpm"
    description = "class-conditional DDPM (UNet) with classifier-free guidance, notes §4 and §5"
    conditional = True


class ConditionalDiTRecipe(DDPMRecipe):
    """Class-conditional DiT sampled with classifier-free guidance, notes §4 and §5.6."""

    name = "cdit"
    Config = DiTRunConfig
    description = "class-conditional DiT with classifier-free guidance, notes §4 and §5.6"
    conditional = True
    presets = {"gpu": DIT_GPU}

"""StyleGAN on the command line: ``python -m minigen train stylegan``.

Notes §3.3 (StyleGAN).  The networks, the logistic loss with lazy R1 and the
training step are in ``minigen/models/stylegan.py``; this file feeds them:
digits padded from 28 x 28 to 32 x 32 and rescaled to [-1, 1], Adam with the
authors' betas (0, 0.99) for both networks, an exponential moving average of
G's weights (samples and metrics use it, as in Karras et al.), and sampling with
the truncation psi of ``truncation_psi`` (``sample --truncation PSI`` overrides it).

    python -m minigen train stylegan                          # CPU defaults (see README for the time)
    python -m minigen train stylegan --style-mode adain       # StyleGAN's AdaIN instead of demodulation
    python -m minigen sample RUN --truncation 0.7
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import backend, optim
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..data.transforms import from_symmetric_range, to_symmetric_range
from ..models import gan
from ..models import stylegan as sg
from .base import Recipe, RunConfig, TrainingError

__all__ = ["StyleGANRunConfig", "StyleGANRecipe"]


@dataclass
class StyleGANRunConfig(RunConfig, sg.StyleGANConfig):
    lr: float = 2e-3                  # Adam learning rate of G and D (Karras et al. 2020; mapping: x mapping_lr_mul)
    beta1: float = 0.0                # Adam beta1 (the authors use 0)
    beta2: float = 0.99               # Adam beta2
    ema_decay: float = 0.998          # decay of G's weight average for samples: half-life ~350 steps = 11k images (authors: 10k)
    truncation_psi: float = 1.0       # psi of the samples: w' = w_avg + psi (w - w_avg) (1: no truncation)
    steps: int = 2500                 # iterations (one D and one G step each): 1,034 CPU-s in all (README)
    batch_size: int = 32              # real (and fake) images per minibatch
    log_every: int = 16               # = r1_every by default, so logged rows show the lazy R1 steps
    sample_every: int = 500           # steps between sample grids
    checkpoint_every: int = 250       # steps between checkpoints

    def validate(self):
        super().validate()
        for name in ("beta1", "beta2", "ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"config: {name} must lie in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.truncation_psi) and 0.0 <= self.truncation_psi <= 1.0):
            raise ValueError(f"config: truncation_psi must lie in [0, 1], got {self.truncation_psi}")
        if self.batch_size % min(self.mbstd_group, self.batch_size):
            raise ValueError(f"config: batch_size ({self.batch_size}) must be divisible by mbstd_group "
                             f"({self.mbstd_group})")


class StyleGANRecipe(Recipe):
    """Train the StyleGAN of ``minigen/models/stylegan.py``; samples from the EMA generator."""

    name = "stylegan"
    Config = StyleGANRunConfig
    description = "StyleGAN/StyleGAN2: mapping network, styles, noise inputs, mixing, truncation, R1, notes §3.3"
    options_added_later = {"output": "linear"}  # runs written before the tanh output had a linear one

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        c, h, w = data.images.shape[1:]
        R = config.resolution
        if h > R or w > R:
            raise TrainingError(f"config: the images are {h}x{w} but channels={tuple(config.channels)} draws "
                                f"{R}x{R}; add a width to channels")
        self.image_shape = (c, h, w)
        init_gen = type(generator)(config.seed, "cpu")
        self.G, self.D = sg.build_stylegan(config, c, generator=init_gen)
        self.G.to(device)
        self.D.to(device)
        betas = (config.beta1, config.beta2)
        self.opt_g = optim.Adam(self.G.parameters(), lr=config.lr, betas=betas)
        self.opt_d = optim.Adam(self.D.parameters(), lr=config.lr, betas=betas)
        self.ema = optim.ExponentialMovingAverage(self.G, decay=config.ema_decay, warmup=True)
        self.modules = {"generator": self.G, "discriminator": self.D}
        self.optimizers = {"generator": self.opt_g, "discriminator": self.opt_d}
        self.emas = {"generator": self.ema}

    def _pad(self):
        """(top, bottom, left, right) background pixels between the data's H x W and R x R."""
        R, (h, w) = self.config.resolution, self.image_shape[1:]
        return (R - h) // 2, R - h - (R - h) // 2, (R - w) // 2, R - w - (R - w) // 2

    def prepare(self, x, y, generator):
        top, bottom, left, right = self._pad()
        return to_symmetric_range(F.pad(x, (left, right, top, bottom))), y           # (B, C, R, R) in [-1, 1]

    def train_step(self, x, y):
        logs = sg.train_step(self.G, self.D, self.opt_g, self.opt_d, x, self.generator, self.step, self.config)
        self.ema.update()
        return logs

    def crop(self, images):
        """Generated (n, C, R, R) in [-1, 1] -> host (n, C, H, W) in [0, 1], the data's size."""
        top, _, left, _ = self._pad()
        h, w = self.image_shape[1:]
        x = backend.to_numpy(images.data if isinstance(images, Tensor) else images)
        return np.clip(from_symmetric_range(x[:, :, top:top + h, left:left + w]), 0.0, 1.0)

    def sample(self, n, generator, labels=None, psi=None):
        """n images (host, NCHW, [0, 1]) from the EMA generator, truncated with ``psi`` (default truncation_psi)."""
        psi = self.config.truncation_psi if psi is None else psi
        z = Tensor(generator.normal((n, self.config.z_dim)))
        with no_grad(), self.ema.average_parameters():
            return self.crop(self.G(z, psi=psi, noise_mode="random", generator=generator))

    def evaluate(self, x, y, generator):
        """D on up to 1,000 test images and as many EMA fakes: mean D(x), mean D(G(z)), D's accuracy."""
        n = min(len(x), 1000)
        n -= n % min(self.config.mbstd_group, n)                                      # whole minibatch-stddev groups
        top, bottom, left, right = self._pad()
        real = Tensor(backend.to_device(x[:n], self.device))
        real = to_symmetric_range(F.pad(real, (left, right, top, bottom)))
        z = Tensor(generator.normal((n, self.config.z_dim)))
        with no_grad(), self.ema.average_parameters():
            fake = self.G(z, noise_mode="random", generator=generator)
        with no_grad():
            real_logits, fake_logits = self.D(real), self.D(fake)
        correct = (backend.to_numpy(real_logits.data) > 0).mean() + (backend.to_numpy(fake_logits.data) < 0).mean()
        return {"test_d_real": gan.mean_probability(real_logits), "test_d_fake": gan.mean_probability(fake_logits),
                "test_d_accuracy": float(correct / 2)}

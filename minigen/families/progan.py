"""Progressive GAN on the command line: ``progan``.

Notes §3.3 (Progressive GAN).  The networks, the growth schedule, the fade-in,
the WGAN-GP objective and the training step are in ``minigen/models/progan.py``;
this file feeds them: images rescaled to [-1, 1], Adam with the paper's
lr 1e-3 and betas (0, 0.99) for both networks, an exponential moving average
of G's weights that every sample and evaluation uses, and the count of
training images shown, from which the schedule reads the current resolution
level and fade-in weight alpha.

The image count is part of the checkpoint (``extra_state``), so
``--resume`` in the middle of a fade-in continues with exactly the alpha the
uninterrupted run would have used.  Samples are drawn at the current level
and enlarged to 28x28 by nearest-neighbour upsampling, so grids written early
in a run show the coarse 7x7 and 14x14 stages.

    python -m minigen train progan                    # 7 -> 14 -> 28, the CPU default
    python -m minigen train progan --loss non-saturating
    python -m minigen train --resume RUN              # continues mid-phase exactly
    python -m minigen eval RUN
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend, optim
from ..autograd import Tensor, no_grad
from ..data.transforms import from_symmetric_range, to_symmetric_range
from ..models import progan
from ..models.gan import sample_noise
from .base import Recipe, RunConfig, TrainingError

__all__ = ["ProGANRunConfig", "ProGANRecipe"]

ADAM_BETAS = (0.0, 0.99)  # Karras et al. 2018 §A.1: no first-moment momentum, a short second-moment memory


@dataclass
class ProGANRunConfig(RunConfig, progan.ProGANConfig):
    lr: float = 1e-3                  # Adam learning rate of G and D (Karras et al. 2018)
    steps: int = 6000                 # loop steps (one D step and one G step each); 28x28 from step 2000
    batch_size: int = 16              # real (and fake) images per step (the paper's batch at 128px and above)
    sample_every: int = 500           # steps between sample grids (at the current resolution, enlarged)
    checkpoint_every: int = 250       # steps between checkpoints

    def validate(self):
        super().validate()
        group = min(self.mbstd_group, self.batch_size)
        if self.batch_size % group:
            raise ValueError(f"config: batch_size {self.batch_size} must be a multiple of the minibatch stddev "
                             f"group (mbstd_group {self.mbstd_group})")


class ProGANRecipe(Recipe):
    """Grow G and D from 7x7 to 28x28 along ``growth_stage``; one D step and one G step per loop step."""

    name = "progan"
    Config = ProGANRunConfig
    description = "Progressive GAN: growing 7->14->28, fade-in, equalized lr, WGAN-GP, notes §3.3"

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        c_img, h, w = data.images.shape[1:]
        channels = tuple(config.channels)
        side = config.base_resolution * 2 ** (len(channels) - 1)
        if (h, w) != (side, side):
            raise TrainingError(f"config: base_resolution {config.base_resolution} with {len(channels)} levels "
                                f"grows to {side}x{side} images, but the data are {h}x{w}")
        init_gen = type(generator)(config.seed, "cpu")
        self.G = progan.ProGANGenerator(config.latent_dim, channels, config.base_resolution, c_img,
                                        generator=init_gen).to(device)
        self.D = progan.ProGANDiscriminator(channels, config.base_resolution, c_img, config.mbstd_group,
                                            generator=init_gen).to(device)
        self.opt_g = optim.Adam(self.G.parameters(), lr=config.lr, betas=ADAM_BETAS)
        self.opt_d = optim.Adam(self.D.parameters(), lr=config.lr, betas=ADAM_BETAS)
        # warm-up: the n-th update uses decay min(ema_decay, (1 + n) / (10 + n)), so the average follows
        # the fast early training (and each new block) instead of staying near the initial weights
        self.ema = optim.ExponentialMovingAverage(self.G, decay=config.ema_decay, warmup=True)
        self.modules = {"generator": self.G, "discriminator": self.D}
        self.optimizers = {"generator": self.opt_g, "discriminator": self.opt_d}
        self.emas = {"generator": self.ema}
        self.images_seen = 0          # training images shown so far: the growth schedule's clock

    def stage(self):
        """(level, alpha) of the next training step."""
        c = self.config
        return progan.growth_stage(self.images_seen, self.G.n_levels, c.stabilize_images, c.transition_images)

    def prepare(self, x, y, generator):
        return to_symmetric_range(x), y  # [0, 1] -> [-1, 1]

    def train_step(self, x, y):
        level, alpha = self.stage()
        stats = progan.train_step(self.G, self.D, self.opt_g, self.opt_d, self.ema, x, level, alpha,
                                  self.generator, self.config)
        self.images_seen += x.shape[0]
        return stats

    def sample(self, n, generator, labels=None):
        """n images in [0, 1] (host, NCHW) from the EMA generator at the current stage, enlarged to full size."""
        level, alpha = self.stage()
        z = sample_noise(n, self.config.latent_dim, generator)
        with no_grad(), self.ema.average_parameters():
            x = self.G(z, level, alpha)
            for _ in range(self.G.n_levels - 1 - level):
                x = progan.upsample(x)
        return np.clip(from_symmetric_range(x.numpy()), 0.0, 1.0)

    def evaluate(self, x, y, generator, chunk=200):
        """D's Wasserstein estimate mean D(x) - mean D(G(z)) on up to 1,000 test images and EMA samples."""
        level, alpha = self.stage()
        group = self.config.mbstd_group
        n = min(len(x), 1000)
        n -= n % min(group, n)                     # the minibatch stddev layer needs whole groups
        chunk -= chunk % group
        total = 0.0
        with no_grad(), self.ema.average_parameters():
            for start in range(0, n, chunk):       # in chunks: a 28x28 conv's columns for 1,000 images are large
                m = min(chunk, n - start)
                real = to_symmetric_range(Tensor(backend.to_device(x[start:start + m], self.device)))
                real = progan.real_images_at(real, level, alpha, self.G.n_levels)
                fake = self.G(sample_noise(m, self.config.latent_dim, generator), level, alpha)
                total += (self.D(real, level, alpha).sum() - self.D(fake, level, alpha).sum()).item()
        return {"test_wasserstein": total / n, "level": float(level), "alpha": float(alpha),
                "resolution": float(self.G.resolution(level))}

    def extra_state(self):
        level, alpha = self.stage()
        return {"images_seen": np.int64(self.images_seen), "level": np.int64(level), "alpha": np.float64(alpha)}

    def load_extra_state(self, state):
        if "images_seen" not in state:
            raise TrainingError("checkpoint has no growth schedule position (images_seen)")
        self.images_seen = int(state["images_seen"])

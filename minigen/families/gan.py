"""The GAN families on the command line: ``gan`` (MLP), ``dcgan`` and the conditional ``cgan``.

Notes §3 - §3.3 and §4.1.  The game, its losses and its training step
(``gan_step``: k discriminator steps, then one generator step) are in
``minigen/models/gan.py``; this file feeds them: images rescaled to [-1, 1]
(the range of G's tanh), the extra real minibatches for k > 1, labels for the
cGAN, and the discriminator's view of the test set as the family's metrics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend, optim
from ..autograd import Tensor, no_grad
from ..data.transforms import from_symmetric_range, to_symmetric_range
from ..models import gan
from .base import Recipe, RunConfig

__all__ = ["TwoAdamOptions", "GANRunConfig", "DCGANRunConfig", "CGANRunConfig", "GANRecipe", "DCGANRecipe", "CGANRecipe"]


@dataclass
class TwoAdamOptions:
    """The optimizer options of a two-player game: G's rate is the run's ``lr``, D's is ``lr_d``."""

    lr_d: float = 2e-4                # discriminator's Adam learning rate
    beta1: float = 0.5                # Adam beta1 for both (Radford et al.: 0.9 makes training oscillate)

    def validate(self):
        """Called by ``RunConfig.validate`` with the other model-half checks."""
        if not self.lr_d > 0:
            raise ValueError(f"config: lr_d must be positive, got {self.lr_d}")
        if not 0.0 <= self.beta1 < 1.0:
            raise ValueError(f"config: beta1 must lie in [0, 1), got {self.beta1}")


@dataclass
class GANRunConfig(RunConfig, gan.GANConfig, TwoAdamOptions):
    lr: float = 2e-4                  # generator's Adam learning rate
    steps: int = 10000                # generator steps, each after k discriminator steps
    batch_size: int = 64              # real (and fake) images per minibatch
    sample_every: int = 2000          # steps between sample grids


@dataclass
class DCGANRunConfig(GANRunConfig):
    arch: str = "dcgan"               # the W2 architecture
    steps: int = 2000                 # generator steps (digits recognisable from ~1500)
    sample_every: int = 500           # steps between sample grids


@dataclass
class CGANRunConfig(GANRunConfig):
    arch: str = "dcgan"               # "dcgan" (label embedding in G, label planes in D) or "mlp" (one-hot)
    steps: int = 2000                 # generator steps
    sample_every: int = 500           # steps between sample grids


class GANRecipe(Recipe):
    """Train G and D with ``gan_step``: k discriminator steps, then one generator step.

    One loop step = one generator step.  The loop hands over one real minibatch
    per step; for k > 1 the other k - 1 minibatches are drawn uniformly (with
    replacement) from the training set with the recipe's generator, so a resumed
    run draws exactly the same ones.  Images are rescaled to [-1, 1].
    """

    name = "gan"
    Config = GANRunConfig
    description = "GAN with MLP generator and discriminator, notes §3-3.2"

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        init_gen = type(generator)(config.seed, "cpu")
        self.num_classes = len(data.classes) if self.conditional else 0
        self.G, self.D = gan.build_gan(config.arch, config.latent_dim, tuple(data.images.shape[1:]),
                                       self.num_classes, tuple(config.hidden), config.channels, generator=init_gen)
        self.G.to(device)
        self.D.to(device)
        self.opt_g = optim.Adam(self.G.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
        self.opt_d = optim.Adam(self.D.parameters(), lr=config.lr_d, betas=(config.beta1, 0.999))
        self.modules = {"generator": self.G, "discriminator": self.D}
        self.optimizers = {"generator": self.opt_g, "discriminator": self.opt_d}
        self._images, self._labels = data.images, data.labels  # host arrays, for the extra real minibatches

    def change_learning_rate(self, old, new):
        """G's rate follows ``lr``, D's follows ``lr_d``."""
        self._scale_rates([self.opt_g], new.lr / old.lr)
        self._scale_rates([self.opt_d], new.lr_d / old.lr_d)

    def prepare(self, x, y, generator):
        return to_symmetric_range(x), y  # [0, 1] -> [-1, 1], the range of G's tanh

    def _noise(self, n):
        return gan.sample_noise(n, self.config.latent_dim, self.generator)

    def _random_real_batch(self, n):
        """A fresh real minibatch for the extra discriminator steps: n rows drawn with the model generator."""
        rows = self.generator.host_integers(0, len(self._images), shape=(n,))   # host rows of host images
        x = Tensor(backend.to_device(self._images[rows], self.device))
        y = Tensor(backend.to_device(self._labels[rows], self.device))
        return self.prepare(x, y, None)

    def train_step(self, x, y):
        def real_batches():
            yield x, (y if self.conditional else None)
            for _ in range(self.config.k - 1):
                xr, yr = self._random_real_batch(len(x))
                yield xr, (yr if self.conditional else None)

        return gan.gan_step(self.G, self.D, self.opt_g, self.opt_d, real_batches(), self._noise, self.config.g_loss)

    def sample(self, n, generator, labels=None):
        """n images in [0, 1] (host, NCHW); a conditional recipe draws labels uniformly unless given."""
        x = gan.generate(self.G, n, self.config.latent_dim, generator, self.sampling_labels(n, generator, labels))
        return np.clip(from_symmetric_range(x.numpy()), 0.0, 1.0)

    def evaluate(self, x, y, generator):
        """D on up to 1,000 test images and as many fakes: V(D, G), mean D(x), mean D(G(z)), D's accuracy."""
        n = min(len(x), 1000)
        real = to_symmetric_range(Tensor(backend.to_device(x[:n], self.device)))
        cond = Tensor(backend.to_device(y[:n], self.device)) if self.conditional else None
        fake = gan.generate(self.G, n, self.config.latent_dim, generator, cond)
        with no_grad():
            real_logits = self.D(real) if cond is None else self.D(real, cond)
            fake_logits = self.D(fake) if cond is None else self.D(fake, cond)
            v = gan.value_function(real_logits, fake_logits).item()
        correct = (backend.to_numpy(real_logits.data) > 0).mean() + (backend.to_numpy(fake_logits.data) < 0).mean()
        return {"test_value_function": v, "test_d_real": gan.mean_probability(real_logits),
                "test_d_fake": gan.mean_probability(fake_logits), "test_d_accuracy": float(correct / 2)}


class DCGANRecipe(GANRecipe):
    """DCGAN (Radford et al. 2016): strided-conv D, transposed-conv G, batch norm, notes §3.3."""

    name = "dcgan"
    Config = DCGANRunConfig
    description = "DCGAN: strided conv D, transposed conv G, batch norm, notes §3.3"


class CGANRecipe(GANRecipe):
    """Conditional GAN on class labels (Mirza & Osindero 2014), DCGAN or MLP networks, notes §4.1."""

    name = "cgan"
    Config = CGANRunConfig
    description = "conditional GAN on class labels (DCGAN or MLP), notes §4.1"
    conditional = True

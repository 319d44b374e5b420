"""LAPGAN on the command line: ``lapgan`` and the class-conditional ``clapgan``.

Notes §3.3 (LAPGAN) and §4.1.  The pyramid, the networks, the sampling chain
and the training step are in ``minigen/models/lapgan.py``; this file feeds
them: images rescaled to [-1, 1], one pair of Adam optimizers per level, the
``level`` option, and the family's own metric, the FLD of every level's output.

One loop step trains every level once (``level`` = -1, the default): the
pyramid of the loop's real minibatch is computed, then level K (7x7), level 1
(14x14) and level 0 (28x28) each take one discriminator step and one generator
step with their own optimizers.  All levels thus share one step count; since
no level uses another's output in training, this is the same algorithm as
training them one after another for that many steps each, with the random
draws interleaved.  ``--level K`` trains level K alone (the checkpoint still
holds every level, the others as initialised).

    python -m minigen train lapgan                   # all levels, the default run
    python -m minigen train clapgan                  # the label enters every level
    python -m minigen train lapgan --level 2         # the 7x7 GAN alone
    python -m minigen eval RUN                       # + fld_level_k: level k's samples, upsampled
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend, optim
from ..autograd import Tensor, no_grad
from ..data.transforms import from_symmetric_range, to_symmetric_range
from ..metrics.classifier import get_classifier
from ..metrics.sample_quality import conditional_accuracy, frechet_distance
from ..models import lapgan
from .base import Recipe, RunConfig, TrainingError
from .gan import TwoAdamOptions

__all__ = ["LAPGANRunConfig", "LAPGANRecipe", "ConditionalLAPGANRecipe"]


@dataclass
class LAPGANRunConfig(RunConfig, lapgan.LAPGANConfig, TwoAdamOptions):
    level: int = -1                   # level this run trains: -1 every level each step, k: level k only (0 = finest)
    lr: float = 2e-4                  # every generator's Adam learning rate (every D's: lr_d)
    steps: int = 4000                 # loop steps; each trains every level once (0.22 CPU s each: ~15 CPU minutes)
    batch_size: int = 64              # real images per minibatch (their pyramid feeds every level)
    sample_every: int = 1000          # steps between sample grids

    def validate(self):
        super().validate()
        if not -1 <= self.level < self.levels:
            raise ValueError(f"config: level must be -1 (all) or in [0, {self.levels - 1}], got {self.level}")


class LAPGANRecipe(Recipe):
    """Train each level of the pyramid as its own GAN on the pyramid of real minibatches."""

    name = "lapgan"
    Config = LAPGANRunConfig
    description = "LAPGAN: a Laplacian pyramid of GANs, 7x7 -> 14x14 -> 28x28, notes §3.3"

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        init_gen = type(generator)(config.seed, "cpu")
        self.num_classes = len(data.classes) if self.conditional else 0
        try:
            model = lapgan.build_lapgan(config, tuple(data.images.shape[1:]), self.num_classes, generator=init_gen)
        except ValueError as exc:
            raise TrainingError(f"config: {exc}") from None
        self.model = model.to(device)
        betas = (config.beta1, 0.999)
        self.opts_g, self.opts_d = [], []
        for k in range(self.model.levels):
            params_g, params_d = self.model.level_parameters(k)
            self.opts_g.append(optim.Adam(params_g, lr=config.lr, betas=betas))
            self.opts_d.append(optim.Adam(params_d, lr=config.lr_d, betas=betas))
        self.modules = {"lapgan": self.model}
        self.optimizers = {**{f"generator_{k}": opt for k, opt in enumerate(self.opts_g)},
                           **{f"discriminator_{k}": opt for k, opt in enumerate(self.opts_d)}}
        every = list(reversed(range(self.model.levels)))               # coarsest first
        self.trained_levels = every if config.level == -1 else [config.level]
        self._train_images, self._train_labels = data.images, data.labels  # host, for evaluate's per-level FLDs

    def prepare(self, x, y, generator):
        return to_symmetric_range(x), y  # [0, 1] -> [-1, 1], the range of the coarsest G's tanh

    def train_step(self, x, y):
        """One step of every trained level; logs L_D, L_G of each (``loss_d_k``, ``loss_g_k``) and the mean L_D."""
        stats = lapgan.train_step(self.model, self.opts_g, self.opts_d, x, y if self.conditional else None,
                                  self.generator, self.trained_levels, self.config.g_loss)
        return backend.StepLogs({key: value for key, value in stats.raw().items()
                                 if key.startswith("loss")})                         # 2 curves per level, unread

    def sample_pyramid(self, n, generator, labels=None):
        """The sampling chain as host arrays in [0, 1]: [I~_K, ..., I~_0] (7x7, 14x14, 28x28 for MNIST)."""
        chain = self.model.sample_chain(n, generator, self.sampling_labels(n, generator, labels))
        return [np.clip(from_symmetric_range(image.numpy()), 0.0, 1.0) for image in chain]

    def sample(self, n, generator, labels=None):
        """n images in [0, 1] (host, NCHW): the last image of the chain; labels drawn uniformly unless given."""
        return self.sample_pyramid(n, generator, labels)[-1]

    def _upsampled(self, images, k):
        """Host images of level k in [0, 1] brought to full size by k applications of the pyramid's u."""
        x = Tensor(backend.to_device(np.asarray(images, dtype=np.float32), self.device))
        with no_grad():
            for _ in range(k):
                x = self.model.u(x)
        return np.clip(x.numpy(), 0.0, 1.0)

    def evaluate(self, x, y, generator):
        """What each level adds: FLD of level k's samples upsampled to full size, k = K .. 0.

        ``fld_level_k``: ``eval_samples`` chains (labels cycling 0..9 for clapgan),
        the level-k image u^k(I~_k) against as many test images, in the reference
        classifier's features.  ``fld_level_k_floor``: the same for *real*
        training images reduced to level k, u^k(d^k(I)), the best a level-k
        image can score (at k = 0, the usual real-vs-real floor).
        ``fld_level_k_given_real`` (k < K): level k sampled from the *real*
        coarser image I_{k+1} instead of the chain's, so a level's own error is
        told apart from the error it inherits.  For clapgan also
        ``conditional_accuracy_level_k``.
        """
        n = min(len(x), self.config.eval_samples)
        if n == 0:
            return {}
        clf = get_classifier(self.config.dataset, data_dir=self.config.data_dir or None)
        f_test, _ = clf.features_and_probs(x[:n])
        labels = np.arange(n) % 10 if self.conditional else None
        chains = [self.sample_pyramid(len(part), generator, None if labels is None else labels[part])
                  for part in np.array_split(np.arange(n), max(1, n // 250))]
        real = self.model.real_pyramid(Tensor(backend.to_device(self._train_images[:n], self.device)))
        out = {}
        for k in reversed(range(self.model.levels)):
            level_k = [chain[self.model.coarsest - k] for chain in chains]   # a chain runs coarse -> fine
            fake = self._upsampled(np.concatenate(level_k), k)
            f_fake, p_fake = clf.features_and_probs(fake)
            f_real, _ = clf.features_and_probs(self._upsampled(real[k].numpy(), k))
            out[f"fld_level_{k}"] = frechet_distance(f_fake, f_test)
            out[f"fld_level_{k}_floor"] = frechet_distance(f_real, f_test)
            if labels is not None:
                out[f"conditional_accuracy_level_{k}"] = conditional_accuracy(p_fake, labels)
            if k < self.model.coarsest:
                given_real = self._level_given_real(k, real[k + 1], generator)
                out[f"fld_level_{k}_given_real"] = frechet_distance(clf.features_and_probs(given_real)[0], f_test)
        return out

    def _level_given_real(self, k, coarser, generator):
        """I~_k = sample_level(k, I_{k+1}) from real coarser training images (their own labels), upsampled."""
        n = len(coarser)
        y = Tensor(backend.to_device(self._train_labels[:n], self.device)) if self.conditional else None
        with no_grad():
            image = self.model.sample_level(k, to_symmetric_range(coarser), self.model.noise(k, n, generator), y)
        return self._upsampled(np.clip(from_symmetric_range(image.numpy()), 0.0, 1.0), k)


class ConditionalLAPGANRecipe(LAPGANRecipe):
    """``python -m minigen train clapgan``: every level of the pyramid also sees the class label."""

    name = "clapgan"
    description = "class-conditional LAPGAN: the label enters every level, notes §3.3, §4.1"
    conditional = True

"""The VAE families on the command line: ``vae``, ``conv-vae`` and the conditional ``cvae``.

Notes §2 (VAEs) and §4 (conditional VAE).  The model, its bound and its
training step are in ``minigen/models/vae.py``; this file says how a run
feeds it: images binarized afresh every batch (Bernoulli decoder) or uniformly
dequantized (Gaussian decoder), labels as one-hot rows for the CVAE, and the
test bounds (ELBO and the importance-weighted L_k) in nats and bits/dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import backend, optim
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..data import transforms
from ..metrics.likelihood import bits_per_dim, dequantized_bits_per_dim
from ..models import vae
from .base import Recipe, RunConfig

__all__ = ["VAERunConfig", "ConvVAERunConfig", "VAERecipe", "ConvVAERecipe", "CVAERecipe", "TEST_DATA_SEED"]

TEST_DATA_SEED = 1234  # one fixed binarization / dequantization of the test images, shared by every run


@dataclass
class VAERunConfig(RunConfig, vae.VAEConfig):
    eval_k: int = 1000             # importance samples per test image in the L_k estimate of the NLL
    eval_images: int = 1000        # test images for the ELBO and L_k (0: the whole test set)
    steps: int = 3000              # optimisation steps
    batch_size: int = 128          # images per step
    lr: float = 1e-3               # Adam learning rate

    def validate(self):
        super().validate()
        if self.eval_k < 1:
            raise ValueError(f"config: eval_k must be >= 1, got {self.eval_k}")
        if self.eval_images < 0:
            raise ValueError(f"config: eval_images must be >= 0, got {self.eval_images}")


@dataclass
class ConvVAERunConfig(VAERunConfig):
    arch: str = "conv"             # the convolutional encoder and decoder
    hidden: int = 256              # width of the dense layer between the convs and the code
    steps: int = 2000              # optimisation steps (a conv step costs about five MLP steps)


class VAERecipe(Recipe):
    """``python -m minigen train vae``: data preparation, the training step, sampling, test bounds."""

    name = "vae"
    Config = VAERunConfig
    description = "variational autoencoder (MLP or conv; Bernoulli or Gaussian decoder), notes §2"

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        self.num_classes = len(data.classes) if self.conditional else 0
        init_gen = type(generator)(config.seed, "cpu")
        self.model = vae.build_vae(config, tuple(data.images.shape[1:]), self.num_classes,
                                   generator=init_gen).to(device)
        self.opt = optim.Adam(self.model.parameters(), lr=config.lr)
        self.modules = {"model": self.model}
        self.optimizers = {"model": self.opt}

    # data --------------------------------------------------------------------
    def _observe(self, images, generator):
        """Images in [0, 1] -> what the decoder models: binary pixels or dequantized grey levels."""
        if self.config.decoder == "bernoulli":
            return transforms.binarize_dynamic(images, generator)
        return transforms.dequantize(images, generator)

    def _labels(self, labels, n):
        if not self.conditional:
            return None
        labels = np.arange(n) % self.num_classes if labels is None else labels
        labels = labels if isinstance(labels, Tensor) else Tensor(backend.to_device(np.asarray(labels), self.device))
        return F.one_hot(labels, self.num_classes)

    def prepare(self, x, y, generator):
        return Tensor(self._observe(x.data, generator)), self._labels(y, len(y))

    def train_step(self, x, y):
        c = self.config
        return vae.train_step(self.model, self.opt, x, y, self.generator, c.objective, c.kl, c.beta, c.iwae_k)

    # sampling ----------------------------------------------------------------
    def _images(self, t):
        return np.clip(backend.to_numpy(t.data), 0.0, 1.0)

    def sample(self, n, generator, labels=None):
        """Decoder means of n prior draws (of the given classes for the CVAE), host (n, C, H, W) in [0, 1]."""
        with no_grad():
            return self._images(self.model.sample(n, generator, self._labels(labels, n)))

    def _tensor(self, images):
        return Tensor(backend.to_device(np.asarray(images, dtype=backend.get_default_dtype()), self.device))

    def reconstruct(self, x, labels=None):
        """Decoder means at the posterior means of host images x (B, C, H, W)."""
        with no_grad():
            return self._images(self.model.reconstruct(self._tensor(x), self._labels(labels, len(x))))

    def interpolate(self, x0, x1, steps=8, labels=None):
        """(R, steps, C, H, W) decoded interpolations between the codes of host images x0 and x1."""
        with no_grad():
            strips = self.model.interpolate(self._tensor(x0), self._tensor(x1), steps, self._labels(labels, len(x0)))
            return self._images(strips)

    def encode(self, x, labels=None):
        """Posterior means of host images x: (B, latent_dim) host array."""
        with no_grad():
            return backend.to_numpy(self.model.encode(self._tensor(x), self._labels(labels, len(x))).mean.data)

    # evaluation --------------------------------------------------------------
    def evaluate(self, x, y, generator, batch=500):
        """Test ELBO and L_k NLL, in nats per image and bits per dimension.

        The test images are binarized (Bernoulli decoder) or dequantized
        (Gaussian decoder) once with a fixed seed, so every run is scored on the
        same data.  For the Gaussian decoder the nats are those of the 8-bit
        images (the dequantization bound), so both units describe the discrete
        data (``test_log_px_z`` and ``test_kl``, the ELBO's two terms, stay as
        the model computes them).  For the CVAE the bounds are on log p(x | y).
        """
        cfg = self.config
        n = len(x) if cfg.eval_images == 0 else min(cfg.eval_images, len(x))
        x, y = np.asarray(x[:n]), np.asarray(y[:n])
        obs = self._observe(x, backend.Generator(TEST_DATA_SEED, "cpu"))
        num_dims = int(np.prod(x.shape[1:]))
        # codes decoded per pass: the conv decoder's im2col buffers are ~100x an MLP's activations
        max_rows = 8192 if cfg.arch == "mlp" else 1024
        elbo, log_px_z, kl, lk = [], [], [], []
        with no_grad():
            for start in range(0, n, batch):
                xb = Tensor(backend.to_device(obs[start:start + batch], self.device))
                yb = self._labels(y[start:start + batch], len(xb))
                out = self.model.elbo(xb, yb, generator, kl="analytic")
                elbo.append(backend.to_numpy(out.elbo.data))
                log_px_z.append(backend.to_numpy(out.log_px_z.data))
                kl.append(backend.to_numpy(out.kl.data))
                lk.append(vae.importance_weighted_bound(self.model, xb, yb, cfg.eval_k, generator, max_rows))
        elbo, lk = np.concatenate(elbo).astype(np.float64), np.concatenate(lk)

        def nll_nats_and_bpd(log_p):
            """Per-image mean NLL in nats and bits/dim of the (binary or 8-bit) test images."""
            if cfg.decoder == "bernoulli":
                nll = float(-log_p.mean())
                return nll, float(bits_per_dim(nll, num_dims))
            bpd = float(dequantized_bits_per_dim(log_p, num_dims).mean())
            return bpd * num_dims * math.log(2.0), bpd

        elbo_nats, elbo_bpd = nll_nats_and_bpd(elbo)
        nll_nats, nll_bpd = nll_nats_and_bpd(lk)
        return {"test_elbo": -elbo_nats, "test_elbo_bits_per_dim": elbo_bpd,
                "test_log_px_z": float(np.concatenate(log_px_z).mean()), "test_kl": float(np.concatenate(kl).mean()),
                "test_nll": nll_nats, "test_nll_bits_per_dim": nll_bpd,
                "eval_k": float(cfg.eval_k), "eval_images": float(n)}


class ConvVAERecipe(VAERecipe):
    """The VAE with a convolutional encoder and decoder, notes §2."""

    name = "conv-vae"
    Config = ConvVAERunConfig
    description = "convolutional VAE (strided convs / transposed convs), notes §2"


class CVAERecipe(VAERecipe):
    """Conditional VAE: q(z|x, y) and p(x|z, y) with one-hot labels y, notes §4."""

    name = "cvae"
    Config = VAERunConfig
    description = "conditional VAE: q(z|x,y), p(x|z,y) with one-hot labels, notes §4"
    conditional = True

"""The ``autoencoder`` family on the command line (notes §1).

The networks and the reconstruction loss are in ``minigen/models/autoencoder.py``.
An autoencoder is not a generative model, so ``sample`` decodes draws from a
Gaussian fitted to the codes of 1,000 training images: the simplest density on
the code space, and a baseline the VAE (notes §2) improves on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend, optim
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..models import autoencoder
from .base import Recipe, RunConfig

__all__ = ["AutoencoderRunConfig", "AutoencoderRecipe"]


@dataclass
class AutoencoderRunConfig(RunConfig, autoencoder.AutoencoderConfig):
    steps: int = 1500        # optimisation steps
    batch_size: int = 128    # images per step
    lr: float = 1e-3         # Adam learning rate


class AutoencoderRecipe(Recipe):
    """``python -m minigen train autoencoder``: a deterministic autoencoder, notes §1."""

    name = "autoencoder"
    Config = AutoencoderRunConfig
    description = "deterministic autoencoder (MLP, conv or linear), notes §1"
    samples_need_data = True   # its sampler fits a Gaussian to the codes of training images

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        init_gen = type(generator)(config.seed, "cpu")
        self.model = autoencoder.Autoencoder(config.arch, config.latent_dim, config.hidden,
                                             tuple(data.images.shape[1:]), generator=init_gen).to(device)
        self.opt = optim.Adam(self.model.parameters(), lr=config.lr)
        self.modules = {"model": self.model}
        self.optimizers = {"model": self.opt}
        # A fixed subset of training images: its codes define the Gaussian that sample() decodes from.
        self._fit_images = data.images[:1000]

    def train_step(self, x, y):
        return autoencoder.train_step(self.model, self.opt, x, self.config.loss)

    def _decode_images(self, z):
        out = self.model.decode(z)
        return (F.sigmoid(out) if self.config.loss == "bce" else F.clip(out, 0.0, 1.0)).numpy()

    def sample(self, n, generator, labels=None):
        """Decode z ~ N(mean, cov) of the codes of 1,000 training images."""
        with no_grad():
            codes = self.model.encode(Tensor(self._fit_images).to(self.device)).numpy().astype(np.float64)
        mean, cov = codes.mean(0), np.cov(codes, rowvar=False).reshape(codes.shape[1], codes.shape[1])
        chol = np.linalg.cholesky(cov + 1e-6 * np.eye(len(mean)))
        eps = backend.to_numpy(generator.normal((n, len(mean)), dtype=np.float64))
        z = mean + eps @ chol.T
        return self._decode_images(Tensor(z.astype(np.float32)).to(self.device))

    def evaluate(self, x, y, generator):
        """Mean per-image reconstruction loss and pixel MSE on the test images."""
        total, mse, n = 0.0, 0.0, len(x)
        for start in range(0, n, 500):
            xb = Tensor(x[start:start + 500]).to(self.device)
            out = self.model(xb)
            total += autoencoder.reconstruction_loss(out, xb, self.config.loss).item() * len(xb)
            recon = F.sigmoid(out) if self.config.loss == "bce" else out
            mse += float(((recon - xb) ** 2).mean().item()) * len(xb)
        return {"test_recon_loss": total / n, "test_pixel_mse": mse / n}

    def reconstruct(self, x):
        """Reconstructions of host images x (B, C, H, W) in [0, 1]."""
        with no_grad():
            return self._decode_images(self.model.encode(Tensor(x).to(self.device)))

    def encode(self, x):
        """Codes of host images x (B, C, H, W) in [0, 1]: a host array (B, latent_dim)."""
        with no_grad():
            return self.model.encode(Tensor(x).to(self.device)).numpy()

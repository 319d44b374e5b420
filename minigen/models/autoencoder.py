"""Autoencoders: learn an encoder f: x -> z and a decoder g: z -> x that reconstructs x.

Notes §1 (dimensionality reduction).  With a code z of dimension d much smaller
than the image, training minimises the reconstruction error

    L(theta, phi) = (1/N) sum_n  l( x_n, g_theta( f_phi(x_n) ) ),

with l the squared error (``loss="mse"``) or, for images in [0, 1], the
Bernoulli cross-entropy of decoder logits (``loss="bce"``).  Everything is
differentiated by the engine.

A *linear* autoencoder (``arch="linear"``: one linear map each way, no
nonlinearity) trained with the squared error learns the same subspace as PCA
(Baldi & Hornik 1989): its decoder's columns span the top-d principal
directions, though they need not be orthogonal or ordered.  A test checks this
against ``minigen.models.pca.PCA`` with principal angles.

An autoencoder is not a generative model: nothing says where in z-space codes
of real images lie.  ``sample`` therefore decodes draws from a Gaussian fitted to
the codes of training images, which shows how far that gets (the VAE of notes
§2 fixes this by shaping the code distribution).

Shapes: images x (B, 1, 28, 28) in [0, 1]; codes z (B, latent_dim).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend
from .. import functional as F
from .. import nn

__all__ = ["AutoencoderConfig", "Autoencoder", "reconstruction_loss", "train_step"]


@dataclass
class AutoencoderConfig:
    """The autoencoder's architecture and loss (the run options live in ``minigen.families.autoencoder``)."""

    arch: str = "mlp"        # "mlp", "conv" or "linear" (the PCA-equivalent model)
    latent_dim: int = 16     # size of the code z
    hidden: int = 512        # width of the MLP's hidden layers
    loss: str = "bce"        # "bce" (Bernoulli logits, images in [0, 1]) or "mse"

    def validate(self):
        """Raise ValueError naming the first impossible setting."""
        if self.arch not in ("mlp", "conv", "linear"):
            raise ValueError(f"config: arch must be mlp, conv or linear, got {self.arch!r}")
        if self.loss not in ("bce", "mse"):
            raise ValueError(f"config: loss must be bce or mse, got {self.loss!r}")
        if self.latent_dim < 1 or self.hidden < 1:
            raise ValueError("config: latent_dim and hidden must be positive")


class Autoencoder(nn.Module):
    """Encoder and decoder for 1x28x28 images.  ``forward`` returns decoder outputs
    (logits for ``loss="bce"``, pixel values for ``"mse"``) of shape (B, 1, 28, 28)."""

    def __init__(self, arch="mlp", latent_dim=16, hidden=512, image_shape=(1, 28, 28), generator=None):
        super().__init__()
        c, h, w = image_shape
        d = c * h * w
        kw = dict(generator=generator)
        if arch == "linear":
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, latent_dim, **kw))
            self.decoder = nn.Sequential(nn.Linear(latent_dim, d, **kw), nn.Unflatten(1, image_shape))
        elif arch == "mlp":
            self.encoder = nn.Sequential(
                nn.Flatten(),
                nn.Linear(d, hidden, **kw), nn.ReLU(),
                nn.Linear(hidden, hidden, **kw), nn.ReLU(),
                nn.Linear(hidden, latent_dim, **kw))
            self.decoder = nn.Sequential(
                nn.Linear(latent_dim, hidden, **kw), nn.ReLU(),
                nn.Linear(hidden, hidden, **kw), nn.ReLU(),
                nn.Linear(hidden, d, **kw), nn.Unflatten(1, image_shape))
        elif arch == "conv":
            if (h, w) != (28, 28):
                raise ValueError(f"the conv autoencoder expects 28x28 images, got {h}x{w}")
            self.encoder = nn.Sequential(
                nn.Conv2d(c, 32, 4, stride=2, padding=1, **kw), nn.ReLU(),    # (B, 32, 14, 14)
                nn.Conv2d(32, 64, 4, stride=2, padding=1, **kw), nn.ReLU(),   # (B, 64, 7, 7)
                nn.Flatten(),                                                  # (B, 3136)
                nn.Linear(64 * 7 * 7, latent_dim, **kw))
            self.decoder = nn.Sequential(
                nn.Linear(latent_dim, 64 * 7 * 7, **kw), nn.ReLU(),
                nn.Unflatten(1, (64, 7, 7)),                                         # (B, 64, 7, 7)
                nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1, **kw), nn.ReLU(),  # (B, 32, 14, 14)
                nn.ConvTranspose2d(32, c, 4, stride=2, padding=1, **kw))              # (B, 1, 28, 28)
        else:
            raise ValueError(f"arch must be 'mlp', 'conv' or 'linear', got {arch!r}")

    def encode(self, x):
        """z = f(x): (B, C, H, W) -> (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z):
        """g(z): (B, latent_dim) -> (B, C, H, W) logits or values."""
        return self.decoder(z)

    def forward(self, x):
        return self.decode(self.encode(x))


def reconstruction_loss(output, x, loss="bce"):
    """Per-image reconstruction error summed over pixels, averaged over the batch."""
    b = x.shape[0]
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(output, x, reduction="sum") / b
    return F.mse_loss(output, x, reduction="sum") / b


def train_step(model, opt, x, loss="bce"):
    """One step on a minibatch x (B, C, H, W): the reconstruction loss of notes §1, backprop, update.

    Returns a ``backend.StepLogs`` {"loss": per-image reconstruction loss} (read when first looked at).
    """
    opt.zero_grad()
    value = reconstruction_loss(model(x), x, loss)
    value.backward()
    opt.step()
    return backend.StepLogs({"loss": value})

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

from .. import backend, nn, optim
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..train import Recipe, RunConfig, TrainingError, register

__all__ = ["AutoencoderConfig", "Autoencoder", "AutoencoderRecipe", "load_trained"]


@dataclass
class AutoencoderConfig(RunConfig):
    arch: str = "mlp"        # "mlp", "conv" or "linear" (the PCA-equivalent model)
    latent_dim: int = 16     # size of the code z
    hidden: int = 512        # width of the MLP's hidden layers
    loss: str = "bce"        # "bce" (Bernoulli logits, images in [0, 1]) or "mse"
    steps: int = 1500        # optimisation steps
    batch_size: int = 128    # images per step
    lr: float = 1e-3         # Adam learning rate

    def validate(self):
        super().validate()
        if self.arch not in ("mlp", "conv", "linear"):
            raise TrainingError(f"config: arch must be mlp, conv or linear, got {self.arch!r}")
        if self.loss not in ("bce", "mse"):
            raise TrainingError(f"config: loss must be bce or mse, got {self.loss!r}")
        if self.latent_dim < 1 or self.hidden < 1:
            raise TrainingError("config: latent_dim and hidden must be positive")


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


@register
class AutoencoderRecipe(Recipe):
    name = "autoencoder"
    Config = AutoencoderConfig
    description = "deterministic autoencoder (MLP, conv or linear), notes §1"

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        init_gen = type(generator)(config.seed, "cpu")
        self.model = Autoencoder(config.arch, config.latent_dim, config.hidden,
                                 tuple(data.images.shape[1:]), generator=init_gen).to(device)
        self.opt = optim.Adam(self.model.parameters(), lr=config.lr)
        self.modules = {"model": self.model}
        self.optimizers = {"model": self.opt}
        # A fixed subset of training images: its codes define the Gaussian that sample() decodes from.
        self._fit_images = data.images[:1000]

    def train_step(self, x, y):
        self.opt.zero_grad()
        loss = reconstruction_loss(self.model(x), x, self.config.loss)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

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
            total += reconstruction_loss(out, xb, self.config.loss).item() * len(xb)
            recon = F.sigmoid(out) if self.config.loss == "bce" else out
            mse += float(((recon - xb) ** 2).mean().item()) * len(xb)
        return {"test_recon_loss": total / n, "test_pixel_mse": mse / n}

    def reconstruct(self, x):
        """Reconstructions of host images x (B, C, H, W) in [0, 1]."""
        with no_grad():
            return self._decode_images(self.model.encode(Tensor(x).to(self.device)))

    def encode(self, x):
        with no_grad():
            return self.model.encode(Tensor(x).to(self.device)).numpy()


def load_trained(run_dir):
    """The trained ``AutoencoderRecipe`` of a run directory and the run's test set.

    The config comes from RUN_DIR/config.json and the weights from
    RUN_DIR/checkpoint.npz, exactly as ``python -m minigen eval`` loads a run;
    the model is in eval mode.  Use ``recipe.reconstruct(x)`` and
    ``recipe.encode(x)`` on host images (B, 1, 28, 28).
    """
    from ..evaluate import restore_run

    recipe, _config, _train_set, test_set, _step = restore_run(run_dir)
    if not isinstance(recipe, AutoencoderRecipe):
        raise TrainingError(f"{run_dir} is a {recipe.name!r} run, not an autoencoder run")
    return recipe, test_set

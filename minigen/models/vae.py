"""Variational autoencoders: the VAE, a convolutional VAE, the conditional VAE, the IWAE bound.

Notes §2 (VAEs) and §4 (conditional latent-variable models).

The model.  A latent-variable model draws a code from the prior and an image
from the decoder,

    z ~ p(z) = N(0, I),        x ~ p_theta(x | z),

so log p(x) = log E_{p(z)}[ p_theta(x | z) ] is intractable.  An encoder
q_phi(z | x) = N(mu_phi(x), diag exp(logvar_phi(x))) gives the evidence lower
bound (notes §2.3, by Jensen's inequality)

    log p(x) >= ELBO(x) = E_q[ log p_theta(x | z) ] - KL( q_phi(z | x) || p(z) ),

with equality exactly when q_phi(z | x) is the true posterior p(z | x)
(``tests/test_vae.py`` checks both claims on a linear-Gaussian model).

Training (notes §2.6).  For a mini-batch: compute (mu, logvar) = encoder(x);
reparameterize z = mu + exp(0.5 logvar) * eps with eps ~ N(0, I), so z is a
differentiable function of phi (notes §2.3); decode z; the loss is -ELBO, whose
KL term has the closed form of notes §2.4 for two Gaussians (or a one-sample
Monte-Carlo estimate, ``kl="mc"``); the engine differentiates it and Adam
updates theta and phi together.  A weight beta on the KL term gives the
beta-VAE (Higgins et al. 2017); beta = 1 is the ELBO.

Decoders.  ``bernoulli``: each pixel of a binarized image is Bernoulli with a
logit from the network (images are binarized afresh every batch).
``gaussian``: each grey level is N(mean, exp(logvar)) with one log-variance per
pixel, ``fixed`` or ``learned``; the data are uniformly dequantized so the
density is a bound on the 8-bit data's likelihood (``metrics.likelihood``).

Conditional VAE (notes §4).  With a label y as a one-hot vector appended to
the encoder's and the decoder's inputs, q(z | x, y) and p(x | z, y) give a
lower bound on log p(x | y); ``sample(n, y=...)`` draws images of a chosen class.

Importance weighting.  With k draws z_i ~ q(z | x),

    L_k(x) = log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x),

is a lower bound with L_1 = ELBO <= L_k <= L_{k+1} -> log p(x) as k -> inf
(Burda et al. 2016).  ``importance_weighted_bound`` evaluates it in batches for
k in the thousands, the usual test NLL estimate; ``objective="iwae"`` trains on
L_k directly.

Shapes: images x (B, C, H, W); codes z (B, latent_dim); labels as one-hot
rows y (B, num_classes).

References: Kingma & Welling, Auto-Encoding Variational Bayes (2014);
Rezende et al., Stochastic Backpropagation (2014); Sohn et al., Learning
Structured Output Representation using Deep Conditional Generative Models (2015);
Burda et al., Importance Weighted Autoencoders (2016).
"""
from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from .. import backend, nn, optim
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..data import transforms
from ..distributions import Bernoulli, Normal, kl_divergence
from ..metrics.likelihood import bits_per_dim, dequantized_bits_per_dim, logmeanexp
from ..train import Recipe, RunConfig, TrainingError, register

__all__ = ["VAEConfig", "ConvVAEConfig", "Encoder", "Decoder", "VAE", "reparameterize", "one_hot",
           "importance_weighted_bound", "latent_manifold", "build_vae",
           "VAERecipe", "ConvVAERecipe", "CVAERecipe"]


# ----------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------

@dataclass
class VAEConfig(RunConfig):
    arch: str = "mlp"              # "mlp" (two hidden layers each way) or "conv" (two strided convs each way)
    latent_dim: int = 16           # size of the code z
    hidden: int = 512              # width of the hidden dense layers
    decoder: str = "bernoulli"     # p(x|z): "bernoulli" (binarized images) or "gaussian" (dequantized grey levels)
    decoder_var: str = "learned"   # gaussian decoder: "learned" (one log-variance per pixel) or "fixed"
    decoder_logvar: float = -4.0   # gaussian decoder: the fixed log-variance, or where the learned one starts
    kl: str = "analytic"           # KL(q(z|x) || p(z)): "analytic" (notes §2.4) or "mc" (one-sample estimate)
    beta: float = 1.0              # weight of the KL term (1: the ELBO; beta-VAE otherwise)
    objective: str = "elbo"        # "elbo" or "iwae" (train on the importance-weighted bound L_k)
    iwae_k: int = 5                # importance samples per image for objective="iwae"
    eval_k: int = 1000             # importance samples per test image in the L_k estimate of the NLL
    eval_images: int = 1000        # test images for the ELBO and L_k (0: the whole test set)
    steps: int = 3000              # optimisation steps
    batch_size: int = 128          # images per step
    lr: float = 1e-3               # Adam learning rate

    def validate(self):
        super().validate()
        choices = {"arch": ("mlp", "conv"), "decoder": ("bernoulli", "gaussian"),
                   "decoder_var": ("learned", "fixed"), "kl": ("analytic", "mc"), "objective": ("elbo", "iwae")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TrainingError(f"config: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("latent_dim", "hidden", "iwae_k", "eval_k"):
            if getattr(self, name) < 1:
                raise TrainingError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.eval_images < 0:
            raise TrainingError(f"config: eval_images must be >= 0, got {self.eval_images}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise TrainingError(f"config: beta must be a finite number >= 0, got {self.beta}")
        if not math.isfinite(self.decoder_logvar):
            raise TrainingError(f"config: decoder_logvar must be finite, got {self.decoder_logvar}")


@dataclass
class ConvVAEConfig(VAEConfig):
    arch: str = "conv"             # the convolutional encoder and decoder
    hidden: int = 256              # width of the dense layer between the convs and the code
    steps: int = 2000              # optimisation steps (a conv step costs about five MLP steps)


# ----------------------------------------------------------------------------
# the two halves: q(z | x [, y]) and p(x | z [, y])
# ----------------------------------------------------------------------------

def one_hot(labels, num_classes, dtype=None, device=None):
    """Integer labels (B,) -> one-hot rows (B, num_classes) as a constant Tensor."""
    labels = backend.to_numpy(labels.data if isinstance(labels, Tensor) else np.asarray(labels))
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"one_hot: expected a 1-D array of integer labels, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    rows = np.eye(num_classes, dtype=dtype or backend.get_default_dtype())[labels]
    return Tensor(backend.to_device(rows, device or "cpu"))


def _conv_shape_check(image_shape):
    if tuple(image_shape[1:]) != (28, 28):
        raise ValueError(f"the conv VAE expects 28x28 images, got {image_shape[1]}x{image_shape[2]}")


class Encoder(nn.Module):
    """q(z | x [, y]) = N(mean, diag exp(logvar)):  x (B, C, H, W) [, y (B, K)] -> Normal with (B, d).

    The image is turned into a feature vector (flattened for the MLP, two
    strided convolutions for the conv net), the one-hot label is appended, and a
    dense head outputs 2d numbers: the mean and the log-variance of z.
    """

    def __init__(self, arch="mlp", latent_dim=16, hidden=512, image_shape=(1, 28, 28), num_classes=0,
                 generator=None):
        super().__init__()
        self.image_shape, self.num_classes = tuple(image_shape), int(num_classes)
        c, h, w = self.image_shape
        kw = dict(generator=generator)
        if arch == "mlp":
            self.features = nn.Flatten()                                          # (B, C*H*W)
            self.head = nn.Sequential(
                nn.Linear(c * h * w + num_classes, hidden, **kw), nn.ReLU(),
                nn.Linear(hidden, hidden, **kw), nn.ReLU(),
                nn.Linear(hidden, 2 * latent_dim, **kw))
        elif arch == "conv":
            _conv_shape_check(self.image_shape)
            self.features = nn.Sequential(
                nn.Conv2d(c, 32, 4, stride=2, padding=1, **kw), nn.ReLU(),        # (B, 32, 14, 14)
                nn.Conv2d(32, 64, 4, stride=2, padding=1, **kw), nn.ReLU(),       # (B, 64, 7, 7)
                nn.Flatten())                                                      # (B, 3136)
            self.head = nn.Sequential(
                nn.Linear(64 * 7 * 7 + num_classes, hidden, **kw), nn.ReLU(),
                nn.Linear(hidden, 2 * latent_dim, **kw))
        else:
            raise ValueError(f"Encoder: arch must be 'mlp' or 'conv', got {arch!r}")

    def forward(self, x, y=None):
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"Encoder: expected images (B, {', '.join(map(str, self.image_shape))}), got {x.shape}")
        h = self.features(x)                                  # (B, F)
        if y is not None:
            h = F.concat([h, y], dim=1)                       # (B, F + K)
        mean, logvar = F.chunk(self.head(h), 2, dim=1)        # (B, d) each
        return Normal(mean, logvar)


class Decoder(nn.Module):
    """p(x | z [, y]):  z (B, d) [, y (B, K)] -> a distribution over images (B, C, H, W).

    ``likelihood="bernoulli"``: Bernoulli(logits = net(z, y)) per pixel.
    ``likelihood="gaussian"``: N(mean = net(z, y), exp(logvar)) per pixel, with
    ``logvar`` one number per pixel, either a trained Parameter
    (``learn_logvar=True``) or the constant ``logvar``.
    """

    def __init__(self, arch="mlp", latent_dim=16, hidden=512, image_shape=(1, 28, 28), num_classes=0,
                 likelihood="bernoulli", learn_logvar=True, logvar=-4.0, generator=None):
        super().__init__()
        self.image_shape, self.likelihood = tuple(image_shape), likelihood
        c, h, w = self.image_shape
        d_in = latent_dim + num_classes
        kw = dict(generator=generator)
        if arch == "mlp":
            self.net = nn.Sequential(
                nn.Linear(d_in, hidden, **kw), nn.ReLU(),
                nn.Linear(hidden, hidden, **kw), nn.ReLU(),
                nn.Linear(hidden, c * h * w, **kw),
                nn.Unflatten(1, self.image_shape))                                     # (B, C, H, W)
        elif arch == "conv":
            _conv_shape_check(self.image_shape)
            self.net = nn.Sequential(
                nn.Linear(d_in, hidden, **kw), nn.ReLU(),
                nn.Linear(hidden, 64 * 7 * 7, **kw), nn.ReLU(),
                nn.Unflatten(1, (64, 7, 7)),                                           # (B, 64, 7, 7)
                nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1, **kw), nn.ReLU(),   # (B, 32, 14, 14)
                nn.ConvTranspose2d(32, c, 4, stride=2, padding=1, **kw))               # (B, C, 28, 28)
        else:
            raise ValueError(f"Decoder: arch must be 'mlp' or 'conv', got {arch!r}")
        if likelihood == "gaussian":
            start = np.full(self.image_shape, logvar, dtype=backend.get_default_dtype())
            if learn_logvar:
                self.logvar = nn.Parameter(start)
            else:
                self.register_buffer("logvar", Tensor(start))
        elif likelihood != "bernoulli":
            raise ValueError(f"Decoder: likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")

    def forward(self, z, y=None):
        h = z if y is None else F.concat([z, y], dim=1)       # (B, d + K)
        out = self.net(h)                                     # (B, C, H, W)
        if self.likelihood == "bernoulli":
            return Bernoulli(logits=out)
        return Normal(out, self.logvar)


# ----------------------------------------------------------------------------
# the VAE: ELBO, reparameterization, importance weights, sampling
# ----------------------------------------------------------------------------

ELBO = namedtuple("ELBO", ["elbo", "log_px_z", "kl"])


def reparameterize(mean, logvar, generator=None):
    """z = mean + exp(0.5 * logvar) * eps,  eps ~ N(0, I)   (notes §2.3, §2.6).

    The noise eps carries all the randomness, so z is a differentiable function
    of the encoder's outputs.  mean, logvar (B, d) -> z (B, d).
    """
    gen = generator if generator is not None else backend.default_generator(mean.device)
    eps = Tensor(backend.to_device(gen.normal(mean.shape, dtype=mean.dtype), mean.device))
    return mean + F.exp(0.5 * logvar) * eps


def _sum_per_example(t):
    """Sum all axes but the first: (B, ...) -> (B,)."""
    return F.flatten(t, 1).sum(dim=1)


class VAE(nn.Module):
    """An encoder q(z | x [, y]) and a decoder p(x | z [, y]) under the prior p(z) = N(0, I).

    ``encoder(x, y)`` must return a ``Normal`` over z (B, d); ``decoder(z, y)``
    a distribution over x.  ``num_classes > 0`` makes it conditional: every
    method then needs one-hot labels y (B, num_classes).
    """

    def __init__(self, encoder, decoder, latent_dim, num_classes=0):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.num_classes = int(latent_dim), int(num_classes)

    def _check_y(self, y, batch):
        if self.num_classes and y is None:
            raise ValueError(f"this conditional VAE needs one-hot labels y of shape ({batch}, {self.num_classes})")
        if not self.num_classes and y is not None:
            raise ValueError("this VAE is not conditional; pass y=None")
        if y is not None and tuple(y.shape) != (batch, self.num_classes):
            raise ValueError(f"labels y must be one-hot rows of shape ({batch}, {self.num_classes}), got {y.shape}")

    def prior(self, n, like):
        """p(z) = N(0, I) with batch shape (n, d), in ``like``'s dtype and device."""
        xp = backend.xp_of(like.data)
        zeros = Tensor(xp.zeros((n, self.latent_dim), dtype=like.dtype))
        return Normal(zeros, zeros)

    def encode(self, x, y=None):
        """q(z | x [, y]): a Normal with batch shape (B, d)."""
        self._check_y(y, x.shape[0])
        return self.encoder(x, y)

    def decode(self, z, y=None):
        """p(x | z [, y]): a distribution with batch shape (B, C, H, W)."""
        self._check_y(y, z.shape[0])
        return self.decoder(z, y)

    def elbo(self, x, y=None, generator=None, kl="analytic", beta=1.0):
        """ELBO(x) = E_q[log p(x|z)] - beta KL(q(z|x) || p(z)), one z per image (notes §2.5).

        Returns ``ELBO(elbo, log_px_z, kl)``, three Tensors of shape (B,), in nats;
        with beta = 1 ``elbo`` is the evidence lower bound itself.
        kl: "analytic" (closed form, notes §2.4) or "mc" (log q(z|x) - log p(z) at the same z).
        """
        q = self.encode(x, y)                                               # (B, d)
        z = reparameterize(q.mean, q.logvar, generator)                     # (B, d)
        log_px_z = _sum_per_example(self.decode(z, y).log_prob(x))          # (B,)
        p_z = self.prior(x.shape[0], q.mean)
        if kl == "analytic":
            kl_term = kl_divergence(q, p_z).sum(dim=1)                      # (B,)
        elif kl == "mc":
            kl_term = (q.log_prob(z) - p_z.log_prob(z)).sum(dim=1)          # (B,)
        else:
            raise ValueError(f"elbo: kl must be 'analytic' or 'mc', got {kl!r}")
        return ELBO(log_px_z - beta * kl_term, log_px_z, kl_term)

    def log_importance_weights(self, x, y=None, k=1, generator=None):
        """log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x),  z_i ~ q(z | x):  -> (k, B).

        The k draws of every image are decoded together as one batch of k * B codes.
        """
        q = self.encode(x, y)                                               # (B, d)
        b = x.shape[0]
        z = q.rsample((k,), generator)                                      # (k, B, d)
        xp = backend.xp_of(x.data)
        # the k copies of each image (and label), as constants laid out like z.reshape(k * B, d)
        x_rep = Tensor(xp.broadcast_to(x.data, (k,) + x.shape).reshape((k * b,) + x.shape[1:]))
        y_rep = None if y is None else Tensor(xp.broadcast_to(y.data, (k,) + y.shape).reshape(k * b, -1))
        log_px_z = _sum_per_example(self.decode(z.reshape(k * b, self.latent_dim), y_rep).log_prob(x_rep))
        log_pz = self.prior(b, q.mean).log_prob(z).sum(dim=-1)              # (k, B)
        log_qz = q.log_prob(z).sum(dim=-1)                                  # (k, B)
        return log_px_z.reshape(k, b) + log_pz - log_qz

    def iwae_bound(self, x, y=None, k=5, generator=None):
        """L_k(x) = logsumexp_i(log w_i) - log k  (Burda et al. 2016), differentiable:  -> (B,)."""
        # logsumexp subtracts the largest log-weight, so the sum of k weights cannot overflow
        return F.logsumexp(self.log_importance_weights(x, y, k, generator), dim=0) - math.log(k)

    def sample(self, n, generator=None, y=None):
        """Draw z ~ N(0, I) and return the decoder's mean E[x | z]:  -> (n, C, H, W)."""
        self._check_y(y, n)
        device, dtype = self.device_and_dtype()
        gen = generator if generator is not None else backend.default_generator(device)
        z = Tensor(backend.to_device(gen.normal((n, self.latent_dim), dtype=dtype), device))
        return self.decode(z, y).mean

    def reconstruct(self, x, y=None):
        """Decoder mean at the posterior mean: E[x | z = mean of q(z | x)]:  -> (B, C, H, W)."""
        return self.decode(self.encode(x, y).mean, y).mean

    def interpolate(self, x0, x1, steps=8, y=None):
        """Decode z(a) = (1 - a) mu(x0) + a mu(x1) for ``steps`` values of a in [0, 1].

        x0, x1 (R, C, H, W) -> (R, steps, C, H, W): one row per pair (y, if given, labels both).
        """
        z0, z1 = self.encode(x0, y).mean, self.encode(x1, y).mean           # (R, d)
        rows = []
        for a in np.linspace(0.0, 1.0, steps):
            rows.append(self.decode((1.0 - a) * z0 + a * z1, y).mean)       # (R, C, H, W)
        return F.stack(rows, dim=1)                                         # (R, steps, C, H, W)

    def device_and_dtype(self):
        """Where the parameters live and their dtype (codes drawn for sampling must match)."""
        for p in self.parameters():
            return p.device, p.dtype
        return backend.get_default_device(), backend.get_default_dtype()


def importance_weighted_bound(model, x, y=None, k=1000, generator=None, max_rows=8192):
    """L_k for each image, in batches of at most ``max_rows`` decoded codes:  -> float64 (B,) on the host.

    ``k`` may be in the thousands: the k draws of one group of images are taken
    in chunks and their log-weights gathered on the host before the log-mean-exp.
    Runs without a graph.  x (B, C, H, W) Tensor, y (B, K) one-hot or None.
    """
    if int(k) < 1:
        raise ValueError(f"importance_weighted_bound: k must be >= 1, got {k}")
    k = int(k)
    out = np.empty(x.shape[0], dtype=np.float64)
    per_group = max(1, max_rows // k)                       # images sharing one pass
    with no_grad():
        for start in range(0, x.shape[0], per_group):
            xb = x[start:start + per_group]
            yb = None if y is None else y[start:start + per_group]
            chunk = max(1, max_rows // xb.shape[0])         # draws per image per pass
            log_w = np.concatenate([
                backend.to_numpy(model.log_importance_weights(xb, yb, min(chunk, k - i), generator).data)
                for i in range(0, k, chunk)]).astype(np.float64)   # (k, b)
            out[start:start + xb.shape[0]] = logmeanexp(log_w, axis=0)
    return out


def latent_manifold(model, n=15, y=None, span=0.95):
    """Decoder means over a grid of codes of a 2-D latent space:  -> (n * n, C, H, W) in [0, 1], host.

    The grid is evenly spaced in probability under the prior: z_j = Phi^-1(p_j)
    with p_j from 1 - span to span, so each cell covers equal prior mass.  Row r
    holds z2 from high to low, column c z1 from low to high (as on a plot).
    y: one label (int) for a conditional model.
    """
    if model.latent_dim != 2:
        raise ValueError(f"latent_manifold: needs a 2-D latent space, the model has {model.latent_dim}")
    from scipy.special import ndtri  # the inverse of the standard normal CDF

    ticks = ndtri(np.linspace(1.0 - span, span, n))
    z1, z2 = np.meshgrid(ticks, ticks[::-1])                # (n, n) each
    device, dtype = model.device_and_dtype()
    z = Tensor(backend.to_device(np.stack([z1.ravel(), z2.ravel()], axis=1).astype(dtype), device))  # (n*n, 2)
    labels = None if y is None else one_hot(np.full(n * n, int(y)), model.num_classes, dtype, device)
    with no_grad():
        return np.clip(backend.to_numpy(model.decode(z, labels).mean.data), 0.0, 1.0)


def build_vae(config, image_shape=(1, 28, 28), num_classes=0, generator=None):
    """The VAE a config describes (encoder, decoder, prior)."""
    encoder = Encoder(config.arch, config.latent_dim, config.hidden, image_shape, num_classes, generator)
    decoder = Decoder(config.arch, config.latent_dim, config.hidden, image_shape, num_classes,
                      likelihood=config.decoder, learn_logvar=config.decoder_var == "learned",
                      logvar=config.decoder_logvar, generator=generator)
    return VAE(encoder, decoder, config.latent_dim, num_classes)


# ----------------------------------------------------------------------------
# training and evaluation recipes for the CLI
# ----------------------------------------------------------------------------

TEST_DATA_SEED = 1234  # one fixed binarization / dequantization of the test images, shared by every run


@register
class VAERecipe(Recipe):
    """``python -m minigen train vae``: data preparation, the training step, sampling, test bounds."""

    name = "vae"
    Config = VAEConfig
    description = "variational autoencoder (MLP or conv; Bernoulli or Gaussian decoder), notes §2"

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        self.num_classes = len(data.classes) if self.conditional else 0
        init_gen = type(generator)(config.seed, "cpu")
        self.model = build_vae(config, tuple(data.images.shape[1:]), self.num_classes, generator=init_gen).to(device)
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
        return one_hot(labels, self.num_classes, device=self.device)

    def prepare(self, x, y, generator):
        return Tensor(self._observe(x.data, generator)), self._labels(y, len(y))

    # training ----------------------------------------------------------------
    def train_step(self, x, y):
        """One step of notes §2.6: encode, reparameterize, decode, -ELBO, backprop, Adam."""
        cfg = self.config
        self.opt.zero_grad()
        if cfg.objective == "iwae":
            loss = -self.model.iwae_bound(x, y, cfg.iwae_k, self.generator).mean()
            logs = {}
        else:
            out = self.model.elbo(x, y, self.generator, kl=cfg.kl, beta=cfg.beta)
            loss = -out.elbo.mean()
            logs = {"log_px_z": out.log_px_z.mean().item(), "kl": out.kl.mean().item()}
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), **logs}

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
                lk.append(importance_weighted_bound(self.model, xb, yb, cfg.eval_k, generator, max_rows))
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


@register
class ConvVAERecipe(VAERecipe):
    name = "conv-vae"
    Config = ConvVAEConfig
    description = "convolutional VAE (strided convs / transposed convs), notes §2"


@register
class CVAERecipe(VAERecipe):
    name = "cvae"
    Config = VAEConfig
    description = "conditional VAE: q(z|x,y), p(x|z,y) with one-hot labels, notes §4"
    conditional = True

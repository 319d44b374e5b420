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

from .. import backend, nn
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..distributions import Bernoulli, Normal, kl_divergence
from ..metrics.likelihood import logmeanexp

__all__ = ["VAEConfig", "Encoder", "Decoder", "VAE", "reparameterize", "importance_weighted_bound",
           "latent_manifold", "build_vae", "train_step"]


# ----------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------

@dataclass
class VAEConfig:
    """The VAE's architecture and objective (the run options live in ``minigen.families.vae``)."""

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

    def validate(self):
        """Raise ValueError naming the first impossible setting."""
        choices = {"arch": ("mlp", "conv"), "decoder": ("bernoulli", "gaussian"),
                   "decoder_var": ("learned", "fixed"), "kl": ("analytic", "mc"), "objective": ("elbo", "iwae")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("latent_dim", "hidden", "iwae_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"config: beta must be a finite number >= 0, got {self.beta}")
        if not math.isfinite(self.decoder_logvar):
            raise ValueError(f"config: decoder_logvar must be finite, got {self.decoder_logvar}")


# ----------------------------------------------------------------------------
# the two halves: q(z | x [, y]) and p(x | z [, y])
# ----------------------------------------------------------------------------

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


def reparameterize(mean, logvar, generator=None, sample_shape=()):
    """z = mean + exp(0.5 * logvar) * eps,  eps ~ N(0, I)   (notes §2.3, §2.6).

    The noise eps carries all the randomness, so z is a differentiable function
    of the encoder's outputs.  mean, logvar (B, d) -> z (*sample_shape, B, d):
    ``sample_shape=(k,)`` gives k independent draws per row (the IWAE bound).
    The one place the VAE draws a code.
    """
    gen = generator if generator is not None else backend.default_generator(mean.device)
    shape = tuple(sample_shape) + tuple(mean.shape)
    eps = Tensor(gen.normal(shape, dtype=mean.dtype, device=mean.device))
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
        """The labels' guard, run once by each public method (the inner calls trust it)."""
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
        return self.encoder(x, y)  # (B, d)

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
        self._check_y(y, x.shape[0])
        q = self.encoder(x, y)                                              # (B, d)
        z = reparameterize(q.mean, q.logvar, generator)                     # (B, d)
        log_px_z = _sum_per_example(self.decoder(z, y).log_prob(x))         # (B,)
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
        self._check_y(y, x.shape[0])
        q = self.encoder(x, y)                                              # (B, d)
        b = x.shape[0]
        z = reparameterize(q.mean, q.logvar, generator, (k,))               # (k, B, d)
        xp = backend.xp_of(x.data)
        # the k copies of each image (and label), as constants laid out like z.reshape(k * B, d)
        x_rep = Tensor(xp.broadcast_to(x.data, (k,) + x.shape).reshape((k * b,) + x.shape[1:]))
        y_rep = None if y is None else Tensor(xp.broadcast_to(y.data, (k,) + y.shape).reshape(k * b, -1))
        log_px_z = _sum_per_example(self.decoder(z.reshape(k * b, self.latent_dim), y_rep).log_prob(x_rep))
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
        z = Tensor(gen.normal((n, self.latent_dim), dtype=dtype, device=device))
        return self.decoder(z, y).mean

    def reconstruct(self, x, y=None):
        """Decoder mean at the posterior mean: E[x | z = mean of q(z | x)]:  -> (B, C, H, W)."""
        self._check_y(y, x.shape[0])
        return self.decoder(self.encoder(x, y).mean, y).mean

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
    labels = None if y is None else F.one_hot(backend.to_device(np.full(n * n, int(y)), device), model.num_classes, dtype)
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
# the training step (notes §2.6)
# ----------------------------------------------------------------------------

def train_step(model, opt, x, y=None, generator=None, objective="elbo", kl="analytic", beta=1.0, iwae_k=5):
    """One step of notes §2.6 on a minibatch: encode, reparameterize, decode, -bound, backprop, update.

        loss = -(1/B) sum_b ELBO_beta(x_b)           (objective "elbo"), or
        loss = -(1/B) sum_b L_k(x_b)                  (objective "iwae", k = iwae_k),

    then one step of ``opt`` on encoder and decoder together.  x (B, C, H, W)
    observed images (binarized or dequantized); y one-hot (B, K) or None.
    Returns a ``backend.StepLogs`` {"loss": -bound, and for the ELBO its two terms "log_px_z", "kl"}
    (device scalars, read in one transfer when first looked at).
    """
    opt.zero_grad()
    if objective == "iwae":
        loss = -model.iwae_bound(x, y, iwae_k, generator).mean()
        terms = {}
    else:
        out = model.elbo(x, y, generator, kl=kl, beta=beta)
        loss = -out.elbo.mean()
        terms = {"log_px_z": out.log_px_z.mean(), "kl": out.kl.mean()}
    loss.backward()
    opt.step()
    return backend.StepLogs({"loss": loss, **terms})

"""Generative adversarial networks: the minimax game, DCGAN and the conditional GAN.

Notes §3 - §3.3 and §4.1.  A generator G maps noise z ~ p(z) = N(0, I) to data
space; a discriminator D(x) in (0, 1) is the probability that x is real.  They
play the two-player game

    min_G max_D  V(D, G) = E_{x ~ p_data}[log D(x)] + E_{z ~ p(z)}[log(1 - D(G(z)))].

For a fixed G the best discriminator is D*(x) = p_data(x) / (p_data(x) + p_g(x)),
and then V(D*, G) = 2 JS(p_data || p_g) - log 4, so the generator's outer
minimisation minimises the Jensen-Shannon divergence (both facts are checked
numerically in tests/test_gan.py).

Reading order of this file
--------------------------
1. the value function and the losses, all computed from discriminator *logits*
   l = log(D / (1 - D)) (so D = sigmoid(l)), never from probabilities;
2. the training algorithm of notes §3.1 in three functions: ``discriminator_step``
   (one ascent step on V for D), ``generator_step`` (one descent step for G) and
   ``gan_step`` (k discriminator steps on fresh minibatches, then one generator
   step), plus ``sample_noise`` / ``generate``.  They take any modules G(z[, c]) and
   D(x[, c]), so LAPGAN, Progressive GAN and StyleGAN reuse them;
3. the networks: MLP generator/discriminator (2-D toy data and MNIST), DCGAN
   (notes §3.3), both optionally conditioned on a class label (notes §4.1);
4. ``GANConfig``, the architecture and game settings a run chooses (the
   command-line families ``gan``, ``dcgan`` and ``cgan`` live in
   ``minigen/families/gan.py`` and call ``gan_step``).

Shapes: noise z (B, latent_dim); images x (B, 1, 28, 28) in [-1, 1] (the tanh
output range; ``prepare`` rescales the loader's [0, 1] images); toy points
(B, 2); labels y (B,) integers; logits (B, 1).

References: Goodfellow et al. 2014, "Generative Adversarial Nets" (the game,
D*, the JS identity, the non-saturating loss, Algorithm 1); Radford, Metz &
Chintala 2016, "Unsupervised Representation Learning with Deep Convolutional
GANs" (DCGAN); Mirza & Osindero 2014, "Conditional Generative Adversarial Nets".
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from .. import backend, nn
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..creation import ones_like, zeros_like

__all__ = ["value_function", "discriminator_loss", "generator_loss", "optimal_discriminator",
           "GENERATOR_LOSSES", "frozen", "mean_probability", "mean_probability_on_device", "discriminator_step",
           "generator_step", "gan_step",
           "sample_noise", "generate", "MLPGenerator", "MLPDiscriminator",
           "DCGANGenerator", "DCGANDiscriminator", "dcgan_init_", "build_gan", "GANConfig"]


# ----------------------------------------------------------------------------
# 1. the value function and the losses (from logits)
# ----------------------------------------------------------------------------

def _expectation(values, weights):
    """E[values]: the batch mean, or sum_i w_i values_i for a discrete distribution w."""
    return values.mean() if weights is None else (values * weights).sum()


def value_function(real_logits, fake_logits, real_weights=None, fake_weights=None):
    """V(D, G) = E_{p_data}[log D(x)] + E_{p_g}[log(1 - D(x))],  D = sigmoid(l)  (notes §3).

    real_logits: D's logits on samples of p_data, fake_logits: on samples of p_g
    (any shapes).  Expectations are batch means; or, for distributions on a
    finite set, pass the probabilities as ``real_weights`` / ``fake_weights``
    (same shapes as the logits) and the expectations are exact weighted sums.
    Returns a scalar Tensor.  The game's value at the equilibrium is -log 4.
    """
    # log sigmoid(l) = -softplus(-l) and log(1 - sigmoid(l)) = log sigmoid(-l): finite for every l
    log_d_real = F.log_sigmoid(real_logits)
    log_one_minus_d_fake = F.log_sigmoid(-fake_logits)
    return _expectation(log_d_real, real_weights) + _expectation(log_one_minus_d_fake, fake_weights)


def discriminator_loss(real_logits, fake_logits):
    """L_D = BCE(D(x), 1) + BCE(D(G(z)), 0) = -V(D, G) on the batches (notes §3.1).

    Maximising V over D is supervised learning of "real" (label 1) against
    "fake" (label 0), so D minimises the binary cross-entropy of its logits.
    real_logits (B, 1), fake_logits (B', 1) -> scalar.
    """
    bce = F.binary_cross_entropy_with_logits  # from logits: log(1 + e^-l) is evaluated without overflow
    return bce(real_logits, ones_like(real_logits)) + bce(fake_logits, zeros_like(fake_logits))


GENERATOR_LOSSES = ("minimax", "non-saturating")


def generator_loss(fake_logits, loss="non-saturating"):
    """The generator's loss on D's logits for its samples, l = logit D(G(z))  (notes §3, §3.2).

    "minimax"        L_G = E[log(1 - D(G(z)))] = -BCE(l, 0):  the game as written.
                     dL_G/dl = -sigmoid(l), which vanishes when D confidently
                     rejects the fakes (l << 0), i.e. early in training: it saturates.
    "non-saturating" L_G = -E[log D(G(z))] = BCE(l, 1):  same fixed point, but
                     dL_G/dl = -(1 - sigmoid(l)) -> -1 where the minimax one is ~0.
    fake_logits (B, 1) -> scalar.
    """
    bce = F.binary_cross_entropy_with_logits
    if loss == "minimax":
        return -bce(fake_logits, zeros_like(fake_logits))
    if loss == "non-saturating":
        return bce(fake_logits, ones_like(fake_logits))
    raise ValueError(f"generator_loss: loss must be one of {GENERATOR_LOSSES}, got {loss!r}")


def optimal_discriminator(p_data, p_g):
    """D*(x) = p_data(x) / (p_data(x) + p_g(x)), the best D for a fixed G (notes §3).

    p_data, p_g: the two densities (or probabilities) evaluated at the same
    points, NumPy arrays of any one shape.  Returns D* at those points.
    """
    p_data, p_g = np.asarray(p_data, dtype=np.float64), np.asarray(p_g, dtype=np.float64)
    return p_data / (p_data + p_g)


# ----------------------------------------------------------------------------
# 2. the training algorithm (notes §3.1) and sampling
# ----------------------------------------------------------------------------

def _call(net, x, cond):
    """net(x), or net(x, cond) for a conditional model (cond: labels, a low-resolution image ...)."""
    return net(x) if cond is None else net(x, cond)


@contextlib.contextmanager
def frozen(module):
    """Inside the block ``module``'s parameters do not require gradients.

    The generator step back-propagates *through* D to G's parameters; freezing
    D there means no gradients are computed for D's weights at all, so D can
    only change through its own optimizer.
    """
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def mean_probability_on_device(logits):
    """Mean of D = sigmoid(l) over a batch, as a 0-d float64 array on the logits' device (for logs, unread)."""
    xp = backend.xp_of(logits.data)
    l = logits.data.astype(np.float64)
    return xp.mean(0.5 * (1.0 + xp.tanh(0.5 * l)))  # sigmoid via tanh: no overflow for large |l|


def mean_probability(logits):
    """Mean of D = sigmoid(l) over a batch, as a float (for logs; one read)."""
    return backend.read_scalars([mean_probability_on_device(logits)])[0]


def discriminator_step(D, opt_d, x_real, x_fake, cond=None):
    """One gradient step of the inner loop (notes §3.1): D ascends V(D, G) for a fixed G.

        theta_D <- theta_D + eta_D grad_D [ mean log D(x_i) + mean log(1 - D(G(z_i))) ]

    implemented as a descent step on ``discriminator_loss`` = -V.  x_real (B, ...)
    from p_data; x_fake (B', ...) generated without a graph (or detached), so
    only D's parameters receive gradients.  ``cond``: the condition shared by
    both batches (labels for a cGAN), or None.
    Returns a ``backend.StepLogs`` {"loss_d": L_D, "d_real": mean D(x), "d_fake": mean D(G(z))}
    (device scalars, read in one transfer when first looked at).
    """
    opt_d.zero_grad()
    real_logits = _call(D, x_real, cond)
    fake_logits = _call(D, x_fake.detach(), cond)
    loss = discriminator_loss(real_logits, fake_logits)
    loss.backward()
    opt_d.step()
    return backend.StepLogs({"loss_d": loss, "d_real": mean_probability_on_device(real_logits),
                             "d_fake": mean_probability_on_device(fake_logits)})


def generator_step(G, D, opt_g, z, cond=None, loss="non-saturating"):
    """One gradient step of the outer loop (notes §3.1): G descends its loss for a fixed D.

        theta_G <- theta_G - eta_G grad_G L_G(D(G(z_i)))     (L_G: ``generator_loss``)

    z (B, latent_dim) fresh noise; ``cond`` as in ``discriminator_step``.  D is
    frozen (``frozen``): the gradient flows through D's layers to the fakes and
    on into G, but D's weights get none.
    Returns a ``backend.StepLogs`` {"loss_g": L_G, "d_fake_g": mean D(G(z)) seen by this step}.
    """
    opt_g.zero_grad()
    with frozen(D):
        fake_logits = _call(D, _call(G, z, cond), cond)
        loss_g = generator_loss(fake_logits, loss)
        loss_g.backward()
    opt_g.step()
    return backend.StepLogs({"loss_g": loss_g, "d_fake_g": mean_probability_on_device(fake_logits)})


def gan_step(G, D, opt_g, opt_d, real_batches, noise, loss="non-saturating"):
    """One outer iteration of the GAN training algorithm (notes §3.1, Goodfellow et al. Alg. 1).

        for each of the k real minibatches (x_1..x_B [, c]):           inner loop, D
            sample noise z_1..z_B ~ p(z);   discriminator_step on x and G(z)
        sample noise z_1..z_B ~ p(z);       generator_step               outer step, G

    ``real_batches``: an iterable of k pairs (x_real, cond), each a *fresh*
    minibatch (cond None when unconditional); k is its length.  The generator
    step uses the condition of the last real minibatch (labels then follow the
    data's label distribution).  ``noise(n)`` returns z (n, latent_dim).
    Returns the last discriminator step's stats, the generator step's and
    "loss": the last L_D = -V on a minibatch (log 4 ~ 1.386 at the equilibrium), as one
    ``backend.StepLogs`` (nothing is read until a value is looked at; then one transfer).
    """
    stats, cond, batch = {}, None, None
    for x_real, cond in real_batches:
        batch = len(x_real)
        with no_grad():  # the fakes are constants for D's step: no graph through G
            x_fake = _call(G, noise(batch), cond)
        stats.update(discriminator_step(D, opt_d, x_real, x_fake, cond).raw())
    if batch is None:
        raise ValueError("gan_step: real_batches held no minibatch (k must be at least 1)")
    stats.update(generator_step(G, D, opt_g, noise(batch), cond, loss).raw())
    stats["loss"] = stats["loss_d"]
    return backend.StepLogs(stats)


def sample_noise(n, latent_dim, generator, dtype=None):
    """z ~ N(0, I): a Tensor (n, latent_dim) on the generator's device."""
    return Tensor(generator.normal((n, latent_dim), dtype=dtype))


def generate(G, n, latent_dim, generator, cond=None):
    """x = G(z), z ~ N(0, I): n samples (a Tensor, no graph).  Put G in eval() mode first."""
    with no_grad():
        return _call(G, sample_noise(n, latent_dim, generator), cond)


# ----------------------------------------------------------------------------
# 3. networks
# ----------------------------------------------------------------------------

class MLPGenerator(nn.Module):
    """G(z) or G(z, y): noise to data with fully connected layers and ReLU.

    z (B, latent_dim) [concatenated with one-hot y (B, num_classes) when
    num_classes > 0, notes §4.1] -> hidden layers -> x (B, *data_shape).
    ``output="tanh"`` for images in [-1, 1], ``"linear"`` for unbounded toy data.
    ``batch_norm=True`` normalises every hidden layer before its ReLU, as the
    DCGAN generator does; on MNIST it keeps the MLP generator from collapsing.
    """

    def __init__(self, latent_dim, data_shape, hidden=(256, 512), num_classes=0, output="tanh", batch_norm=False,
                 generator=None):
        super().__init__()
        if output not in ("tanh", "linear"):
            raise ValueError(f"MLPGenerator: output must be 'tanh' or 'linear', got {output!r}")
        self.latent_dim, self.num_classes, self.output = int(latent_dim), int(num_classes), output
        self.data_shape = tuple(data_shape)
        widths = [self.latent_dim + self.num_classes] + list(hidden)
        layers = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers.append(nn.Linear(w_in, w_out, generator=generator))
            layers += [nn.BatchNorm1d(w_out), nn.ReLU()] if batch_norm else [nn.ReLU()]
        layers.append(nn.Linear(widths[-1], int(np.prod(self.data_shape)), generator=generator))
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        if self.num_classes:
            z = F.concat([z, F.one_hot(y, self.num_classes, z.dtype)], dim=1)  # (B, latent + classes)
        x = self.net(z).reshape((z.shape[0],) + self.data_shape)                       # (B, *data_shape)
        return F.tanh(x) if self.output == "tanh" else x


class MLPDiscriminator(nn.Module):
    """D(x) or D(x, y) as a logit: fully connected layers with LeakyReLU(0.2).

    x (B, *data_shape) flattened [concatenated with one-hot y] -> (B, 1) logits.
    """

    def __init__(self, data_shape, hidden=(512, 256), num_classes=0, generator=None):
        super().__init__()
        self.num_classes = int(num_classes)
        widths = [int(np.prod(data_shape)) + self.num_classes] + list(hidden)
        layers = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out, generator=generator), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(widths[-1], 1, generator=generator))
        self.net = nn.Sequential(*layers)

    def forward(self, x, y=None):
        h = F.flatten(x, 1)                                                              # (B, D)
        if self.num_classes:
            h = F.concat([h, F.one_hot(y, self.num_classes, h.dtype)], dim=1)     # (B, D + classes)
        return self.net(h)                                                               # (B, 1)


def dcgan_init_(module, generator=None):
    """DCGAN initialisation (Radford et al. 2016, §4): weights ~ N(0, 0.02), biases 0.

    Applies to every Linear, Conv2d and ConvTranspose2d; BatchNorm scales get
    N(1, 0.02) and shifts 0.  Embeddings keep their N(0, 1).  Returns the module.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(m.bias)
    return module


class DCGANGenerator(nn.Module):
    """The DCGAN generator (notes §3.3; benchmark W2): fractionally strided convolutions, BN, ReLU, tanh.

        z (B, latent_dim) [+ label embedding (B, embed_dim)]
          -> Linear -> BatchNorm1d -> ReLU -> reshape       (B, 2c, H/4, W/4)
          -> ConvTranspose2d(2c, c, 4, 2, 1) -> BN -> ReLU  (B, c, H/2, W/2)
          -> ConvTranspose2d(c, C, 4, 2, 1) -> tanh         (B, C, H, W) in [-1, 1]

    c = ``channels`` (64 in W2); image (C, H, W) = (1, 28, 28) by default (H, W
    divisible by 4).  With num_classes > 0 a learned embedding of y is
    concatenated to z (Mirza & Osindero 2014).
    """

    def __init__(self, latent_dim=100, image_shape=(1, 28, 28), channels=64, num_classes=0, embed_dim=16,
                 generator=None):
        super().__init__()
        c_img, h, w = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"DCGANGenerator: image height and width must be divisible by 4, got {h}x{w}")
        self.latent_dim, self.num_classes, self.channels = int(latent_dim), int(num_classes), int(channels)
        self.start = (2 * channels, h // 4, w // 4)
        kw = dict(generator=generator)
        in_dim = self.latent_dim
        if self.num_classes:
            self.embed = nn.Embedding(self.num_classes, embed_dim, generator=generator)
            in_dim += embed_dim
        self.fc = nn.Linear(in_dim, int(np.prod(self.start)), **kw)
        self.bn0 = nn.BatchNorm1d(int(np.prod(self.start)))
        self.deconv1 = nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1, **kw)
        self.bn1 = nn.BatchNorm2d(channels)
        self.deconv2 = nn.ConvTranspose2d(channels, c_img, 4, stride=2, padding=1, **kw)
        dcgan_init_(self, generator)

    def forward(self, z, y=None):
        if self.num_classes:
            z = F.concat([z, self.embed(y)], dim=1)                          # (B, latent + embed)
        h = F.relu(self.bn0(self.fc(z)))                                      # (B, 2c * H/4 * W/4)
        h = h.reshape((z.shape[0],) + self.start)                             # (B, 2c, H/4, W/4)
        h = F.relu(self.bn1(self.deconv1(h)))                                 # (B, c, H/2, W/2)
        return F.tanh(self.deconv2(h))                                        # (B, C, H, W)


class DCGANDiscriminator(nn.Module):
    """The DCGAN discriminator (notes §3.3; benchmark W2): strided convolutions, BN, LeakyReLU(0.2).

        x (B, C, H, W) [+ label maps (B, num_classes, H, W)]
          -> Conv2d(C, c, 4, 2, 1) -> LeakyReLU                 (B, c, H/2, W/2)
          -> Conv2d(c, 2c, 4, 2, 1) -> BN -> LeakyReLU          (B, 2c, H/4, W/4)
          -> flatten -> Linear(2c * H/4 * W/4, 1)               (B, 1) logits

    No pooling: the strided convolutions learn their own downsampling.  With
    num_classes > 0 the label enters as num_classes constant image planes, plane y
    all ones and the rest zeros, stacked onto the image's channels.
    """

    def __init__(self, image_shape=(1, 28, 28), channels=64, num_classes=0, generator=None):
        super().__init__()
        c_img, h, w = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"DCGANDiscriminator: image height and width must be divisible by 4, got {h}x{w}")
        self.num_classes = int(num_classes)
        kw = dict(generator=generator)
        self.conv1 = nn.Conv2d(c_img + self.num_classes, channels, 4, stride=2, padding=1, **kw)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1, **kw)
        self.bn2 = nn.BatchNorm2d(2 * channels)
        self.fc = nn.Linear(2 * channels * (h // 4) * (w // 4), 1, **kw)
        dcgan_init_(self, generator)

    def forward(self, x, y=None):
        if self.num_classes:
            b, _, h, w = x.shape
            planes = F.one_hot(y, self.num_classes, x.dtype).reshape(b, self.num_classes, 1, 1)
            x = F.concat([x, F.broadcast_to(planes, (b, self.num_classes, h, w))], dim=1)  # (B, C + classes, H, W)
        h = F.leaky_relu(self.conv1(x), 0.2)                                  # (B, c, H/2, W/2)
        h = F.leaky_relu(self.bn2(self.conv2(h)), 0.2)                        # (B, 2c, H/4, W/4)
        return self.fc(F.flatten(h, 1))                                       # (B, 1)


def build_gan(arch, latent_dim, data_shape, num_classes=0, hidden=(256, 512), channels=64, generator=None):
    """(G, D) for ``arch`` "mlp" or "dcgan"; the MLP discriminator mirrors the generator's widths."""
    if arch == "mlp":
        G = MLPGenerator(latent_dim, data_shape, hidden, num_classes, batch_norm=True, generator=generator)
        D = MLPDiscriminator(data_shape, tuple(reversed(hidden)), num_classes, generator=generator)
    elif arch == "dcgan":
        G = DCGANGenerator(latent_dim, data_shape, channels, num_classes, generator=generator)
        D = DCGANDiscriminator(data_shape, channels, num_classes, generator=generator)
    else:
        raise ValueError(f"build_gan: arch must be 'mlp' or 'dcgan', got {arch!r}")
    return G, D


# ----------------------------------------------------------------------------
# 4. the settings a run chooses
# ----------------------------------------------------------------------------

@dataclass
class GANConfig:
    """The networks and the game (the run options live in ``minigen.families.gan``)."""

    arch: str = "mlp"                 # "mlp" (fully connected) or "dcgan" (notes §3.3)
    latent_dim: int = 100             # size of the noise z ~ N(0, I)
    hidden: tuple = (256, 512)        # MLP generator widths; the discriminator uses them reversed
    channels: int = 64                # DCGAN base width c (G: 2c -> c -> 1, D: c -> 2c)
    g_loss: str = "non-saturating"    # generator loss: "non-saturating" (§3.2) or "minimax" (saturating)
    k: int = 1                        # discriminator steps per generator step (each on a fresh real minibatch)

    def validate(self):
        """Raise ValueError naming the first impossible setting."""
        if self.arch not in ("mlp", "dcgan"):
            raise ValueError(f"config: arch must be mlp or dcgan, got {self.arch!r}")
        if self.g_loss not in GENERATOR_LOSSES:
            raise ValueError(f"config: g_loss must be one of {', '.join(GENERATOR_LOSSES)}, got {self.g_loss!r}")
        if self.k < 1:
            raise ValueError(f"config: k (discriminator steps per generator step) must be >= 1, got {self.k}")
        if self.latent_dim < 1 or self.channels < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError("config: latent_dim, channels and the hidden widths must be positive")

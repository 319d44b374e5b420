"""Progressive GAN: grow G and D from low to high resolution, fading each new block in.

Notes §3.3 (Progressive GAN).  Training starts on 7x7 images with a generator
and a discriminator of one resolution block each.  Every few hundred thousand
images a block is added to both networks (7 -> 14 -> 28 on MNIST), so coarse
structure (where the strokes go) is learned first and fine detail (stroke
edges) later, each on a network that is already stable at the scale below.

Reading order of this file
--------------------------
1. ``ProGANConfig``: the architecture, the objective and the growth schedule;
2. the growth schedule: ``growth_stage(images_seen)`` -> (level, alpha), a pure
   function of the number of training images shown;
3. the fade-in and the resampling between resolutions (``fade``, ``upsample``,
   ``downsample``, ``real_images_at``);
4. the networks: ``ProGANGenerator`` and ``ProGANDiscriminator``, built from
   resolution blocks with toRGB / fromRGB 1x1 layers, using the equalized
   layers, pixel norm and minibatch stddev of ``minigen.nn.equalized``;
5. the objective: WGAN-GP with the drift term (or the non-saturating loss);
6. the training step: ``discriminator_step``, ``generator_step`` and
   ``train_step`` (one step of D, one of G, one EMA update of G's weights).

Resolution ladder.  MNIST is 28x28 = 7 * 2^2, so the ladder is 7 -> 14 -> 28
(levels 0, 1, 2), every step an exact factor of 2.  The paper's ladder starts at
4x4 and would need the digits padded to 32x32; 7x7 is already a coarse but
recognisable digit, and the smaller images keep CPU training fast.

Fade-in (Karras et al. 2018 §3, Fig. 2).  While block k is being added, with
alpha rising linearly from 0 to 1 over ``transition_images`` training images:

    G:  x = (1 - alpha) * upsample(toRGB_{k-1}(h_{k-1})) + alpha * toRGB_k(block_k(h_{k-1}))
    D:  h = (1 - alpha) * fromRGB_{k-1}(downsample(x)) + alpha * block_k(fromRGB_k(x))

and the real images shown to D are blended the same way,
x_real = (1 - alpha) * upsample(downsample(r_k)) + alpha * r_k, with r_k the
data at resolution k (2x2 average pooling of the 28x28 digits).  At alpha = 0
the grown networks compute exactly what the smaller ones did (tests check it
bit for bit), so adding a block does not disturb training.

Shapes: z (B, latent_dim); images (B, 1, R, R) with R = 7 * 2^level, values in
[-1, 1] (the output layer is linear, as in the paper; samples are clipped);
critic scores (B, 1).

References: Karras, Aila, Laine & Lehtinen 2018, "Progressive Growing of GANs
for Improved Quality, Stability, and Variation" (ICLR; growing, fade-in,
equalized learning rate, pixel norm, minibatch stddev, drift term, Adam
(0, 0.99) at lr 1e-3, EMA of G); Gulrajani et al. 2017, "Improved Training of
Wasserstein GANs" (the gradient penalty, lambda = 10); Arjovsky, Chintala &
Bottou 2017, "Wasserstein GAN".
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import backend
from .. import functional as F
from .. import nn
from ..autograd import Tensor, grad, no_grad
from ..nn.equalized import pixel_norm
from .gan import frozen, sample_noise

__all__ = ["ProGANConfig", "PROGAN_LOSSES", "growth_stage", "phase_boundaries", "fade", "upsample", "downsample",
           "real_images_at", "ProGANGenerator", "ProGANDiscriminator", "gradient_penalty", "discriminator_loss",
           "generator_loss", "discriminator_step", "generator_step", "train_step"]

PROGAN_LOSSES = ("wgan-gp", "non-saturating")


# ----------------------------------------------------------------------------
# 1. config
# ----------------------------------------------------------------------------

@dataclass
class ProGANConfig:
    """Architecture, objective and growth schedule of a Progressive GAN (notes §3.3)."""

    latent_dim: int = 128                 # size of z ~ N(0, I) (pixel-normalised before the first layer)
    base_resolution: int = 7              # side of the first block's images; the data side must be base * 2^k
    channels: tuple = (64, 32, 16)        # feature maps per level (7x7, 14x14, 28x28): one entry per level
    loss: str = "wgan-gp"                 # "wgan-gp" (WGAN-GP + drift, the paper's) or "non-saturating"
    gp_lambda: float = 10.0               # weight of the gradient penalty (Gulrajani et al.: 10)
    drift: float = 0.001                  # epsilon_drift: weight of D(x_real)^2 (WGAN-GP only; paper: 0.001)
    mbstd_group: int = 4                  # minibatch stddev group size before D's last block (paper: 4)
    stabilize_images: int = 8000          # training images per stabilisation phase (paper: 600k)
    transition_images: int = 8000         # training images per fade-in (alpha 0 -> 1) of a new block (paper: 600k)
    ema_decay: float = 0.999              # EMA of G's weights for sampling (paper: 0.999; the recipe warms it up)

    def validate(self):
        """Raise ValueError naming the first impossible setting."""
        channels = tuple(self.channels)
        if self.latent_dim < 1 or self.base_resolution < 1:
            raise ValueError("config: latent_dim and base_resolution must be positive")
        if not channels or min(channels) < 1:
            raise ValueError(f"config: channels needs one positive width per level, got {self.channels}")
        if self.loss not in PROGAN_LOSSES:
            raise ValueError(f"config: loss must be one of {', '.join(PROGAN_LOSSES)}, got {self.loss!r}")
        if self.gp_lambda < 0 or self.drift < 0:
            raise ValueError(f"config: gp_lambda and drift must be >= 0, got {self.gp_lambda}, {self.drift}")
        if self.mbstd_group < 1:
            raise ValueError(f"config: mbstd_group must be >= 1, got {self.mbstd_group}")
        if self.stabilize_images < 0 or self.transition_images < 1:
            raise ValueError("config: stabilize_images must be >= 0 and transition_images >= 1, got "
                             f"{self.stabilize_images}, {self.transition_images}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"config: ema_decay must lie in [0, 1), got {self.ema_decay}")


# ----------------------------------------------------------------------------
# 2. the growth schedule
# ----------------------------------------------------------------------------

def growth_stage(images_seen, n_levels, stabilize_images, transition_images):
    """(level, alpha) after ``images_seen`` training images: where the growth schedule stands.

        level 0 stable for S images; then for k = 1 .. n_levels - 1:
            transition to level k for T images (alpha = images into it / T, from 0 up to < 1),
            then level k stable for S images (alpha = 1);
        the last level stays stable for the rest of training.

    S = ``stabilize_images``, T = ``transition_images``.  A pure function of the
    image count, so a checkpoint that stores the count resumes mid-fade exactly.
    """
    n = int(images_seen)
    start = stabilize_images
    for level in range(1, n_levels):
        if n < start:
            return level - 1, 1.0
        if n < start + transition_images:
            return level, (n - start) / transition_images
        start += transition_images + stabilize_images
    return n_levels - 1, 1.0


def phase_boundaries(n_levels, stabilize_images, transition_images):
    """Image counts where the phases begin: [(images, level, "transition" | "stabilize"), ...]."""
    out, start = [(0, 0, "stabilize")], stabilize_images
    for level in range(1, n_levels):
        out += [(start, level, "transition"), (start + transition_images, level, "stabilize")]
        start += transition_images + stabilize_images
    return out


# ----------------------------------------------------------------------------
# 3. fade-in and resampling
# ----------------------------------------------------------------------------

def fade(old, new, alpha):
    """(1 - alpha) * old + alpha * new: the fade-in blend (written so alpha 0 / 1 give old / new exactly)."""
    return old * (1.0 - alpha) + new * alpha


def upsample(x):
    """Nearest-neighbour x2: every pixel becomes a 2x2 block.  (B, C, H, W) -> (B, C, 2H, 2W)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample(x, factor=2):
    """Average pooling over factor x factor blocks.  (B, C, H, W) -> (B, C, H/factor, W/factor)."""
    return x if factor == 1 else F.avg_pool2d(x, factor)


def real_images_at(x, level, alpha, n_levels):
    """The real images as D sees them at (level, alpha): x (B, C, R, R) full size -> (B, C, r, r).

        r_k = downsample(x, 2^(L-1-k));   x_real = (1 - alpha) * upsample(downsample(r_k)) + alpha * r_k

    so during a fade-in the reals are blurred between the two resolutions just as
    G's output is (Karras et al. 2018 §3).  r_k is computed by repeated 2x2
    pooling, so r_{k-1} = downsample(r_k) holds exactly, bit for bit.
    """
    r = x
    for _ in range(n_levels - 1 - level):
        r = downsample(r)                                                 # (B, C, R / 2^j, R / 2^j)
    if level > 0 and alpha < 1.0:
        r = fade(upsample(downsample(r)), r, alpha)
    return r


# ----------------------------------------------------------------------------
# 4. networks
# ----------------------------------------------------------------------------

class ConvLayer(nn.Module):
    """Equalized 3x3 conv (padding 1) -> LeakyReLU(0.2) [-> pixel norm in G].  (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, c_in, c_out, normalize, generator=None):
        super().__init__()
        self.conv = nn.EqualizedConv2d(c_in, c_out, 3, padding=1, generator=generator)
        self.norm = nn.PixelNorm() if normalize else nn.Identity()

    def forward(self, x):
        return self.norm(F.leaky_relu(self.conv(x), 0.2))


class GeneratorFirstBlock(nn.Module):
    """z -> 7x7 features: pixel norm, dense to (C, 7, 7), LReLU, pixel norm, 3x3 conv layer.

    z (B, latent_dim) -> (B, C, r0, r0).  The dense layer plays the paper's 4x4
    "transposed convolution" of the latent vector.
    """

    def __init__(self, latent_dim, channels, resolution, generator=None):
        super().__init__()
        self.shape = (channels, resolution, resolution)
        self.dense = nn.EqualizedLinear(latent_dim, channels * resolution * resolution, generator=generator)
        self.conv = ConvLayer(channels, channels, normalize=True, generator=generator)

    def forward(self, z):
        h = self.dense(pixel_norm(z))                                    # (B, C r0 r0)
        h = pixel_norm(F.leaky_relu(h.reshape((z.shape[0],) + self.shape), 0.2))  # (B, C, r0, r0)
        return self.conv(h)


class GeneratorBlock(nn.Module):
    """Upsample x2, then two 3x3 conv layers with pixel norm.  (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, c_in, c_out, generator=None):
        super().__init__()
        self.conv0 = ConvLayer(c_in, c_out, normalize=True, generator=generator)
        self.conv1 = ConvLayer(c_out, c_out, normalize=True, generator=generator)

    def forward(self, h):
        return self.conv1(self.conv0(upsample(h)))


class ProGANGenerator(nn.Module):
    """G(z; level, alpha): blocks 0..level, then toRGB, blended with the previous level during a fade-in.

        h_0 = block_0(z)                      (B, c_0, r0, r0)
        h_k = block_k(h_{k-1})                (B, c_k, r0 2^k, r0 2^k)
        x   = toRGB_level(h_level)                                   (alpha = 1)
        x   = fade(upsample(toRGB_{level-1}(h_{level-1})), toRGB_level(h_level), alpha)  (alpha < 1)

    toRGB_k is an equalized 1x1 conv with gain 1 and a linear output.  Every
    block exists from the start (so optimizer, EMA and checkpoints always hold
    the same parameters); blocks above ``level`` are simply not used yet.
    ``level=None`` means the last level, ``alpha`` defaults to 1.
    """

    def __init__(self, latent_dim=128, channels=(64, 32, 16), base_resolution=7, image_channels=1,
                 generator=None):
        super().__init__()
        self.latent_dim, self.base_resolution = int(latent_dim), int(base_resolution)
        self.channels = tuple(int(c) for c in channels)
        self.n_levels = len(self.channels)
        blocks = [GeneratorFirstBlock(self.latent_dim, self.channels[0], self.base_resolution, generator)]
        blocks += [GeneratorBlock(c_in, c_out, generator) for c_in, c_out in zip(self.channels, self.channels[1:])]
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = nn.ModuleList([nn.EqualizedConv2d(c, image_channels, 1, gain=1.0, generator=generator)
                                     for c in self.channels])

    def resolution(self, level):
        """The image side at growth level ``level``: base_resolution * 2^level (7, 14, 28)."""
        return self.base_resolution * 2 ** level

    def forward(self, z, level=None, alpha=1.0):
        level = self.n_levels - 1 if level is None else int(level)
        if not 0 <= level < self.n_levels:
            raise ValueError(f"ProGANGenerator: level must be in [0, {self.n_levels}), got {level}")
        h = self.blocks[0](z)
        for k in range(1, level):
            h = self.blocks[k](h)
        if level == 0:
            return self.to_rgb[0](h)
        new = self.to_rgb[level](self.blocks[level](h))                 # (B, C, r, r): the new block
        if alpha >= 1.0:
            return new
        old = upsample(self.to_rgb[level - 1](h))                        # (B, C, r, r): the previous level
        return fade(old, new, alpha)


class DiscriminatorBlock(nn.Module):
    """Two 3x3 conv layers, then 2x2 average pooling.  (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, c_in, c_out, generator=None):
        super().__init__()
        self.conv0 = ConvLayer(c_in, c_in, normalize=False, generator=generator)
        self.conv1 = ConvLayer(c_in, c_out, normalize=False, generator=generator)

    def forward(self, h):
        return downsample(self.conv1(self.conv0(h)))


class DiscriminatorLastBlock(nn.Module):
    """Minibatch stddev, 3x3 conv layer, dense, dense to one score.  (B, C, r0, r0) -> (B, 1)."""

    def __init__(self, channels, resolution, mbstd_group=4, generator=None):
        super().__init__()
        self.mbstd = nn.MinibatchStdDev(mbstd_group)
        self.conv = ConvLayer(channels + 1, channels, normalize=False, generator=generator)
        self.dense0 = nn.EqualizedLinear(channels * resolution * resolution, channels, generator=generator)
        self.dense1 = nn.EqualizedLinear(channels, 1, gain=1.0, generator=generator)

    def forward(self, h):
        h = self.conv(self.mbstd(h))                                     # (B, C, r0, r0)
        h = F.leaky_relu(self.dense0(F.flatten(h, 1)), 0.2)              # (B, C)
        return self.dense1(h)                                            # (B, 1)


class ProGANDiscriminator(nn.Module):
    """D(x; level, alpha): fromRGB at the input's resolution, then blocks level..0, mirroring G.

        h = fromRGB_level(x)                                             (alpha = 1)
        h = fade(fromRGB_{level-1}(downsample(x)), block_level(fromRGB_level(x)), alpha)   (alpha < 1)
        then block_{level-1}, ..., block_1, and the last block (minibatch stddev, convs, dense) -> (B, 1)

    fromRGB_k is an equalized 1x1 conv followed by LeakyReLU(0.2).  x (B, C, r, r)
    with r = r0 2^level.  Returns critic scores (B, 1) (unbounded for WGAN-GP;
    logits for the non-saturating loss).
    """

    def __init__(self, channels=(64, 32, 16), base_resolution=7, image_channels=1, mbstd_group=4,
                 generator=None):
        super().__init__()
        self.base_resolution = int(base_resolution)
        self.channels = tuple(int(c) for c in channels)
        self.n_levels = len(self.channels)
        self.from_rgb = nn.ModuleList([nn.EqualizedConv2d(image_channels, c, 1, generator=generator)
                                       for c in self.channels])
        blocks = [DiscriminatorLastBlock(self.channels[0], self.base_resolution, mbstd_group, generator)]
        blocks += [DiscriminatorBlock(c_in, c_out, generator)
                   for c_out, c_in in zip(self.channels, self.channels[1:])]
        self.blocks = nn.ModuleList(blocks)       # blocks[k] takes level-k features down to level k - 1

    def forward(self, x, level=None, alpha=1.0):
        level = self.n_levels - 1 if level is None else int(level)
        r = self.base_resolution * 2 ** level if 0 <= level < self.n_levels else None
        if r is None or tuple(x.shape[2:]) != (r, r):
            raise ValueError(f"ProGANDiscriminator: level {level} needs images of {r}x{r} "
                             f"(levels 0..{self.n_levels - 1}), got shape {x.shape}")
        h = self.blocks[level](F.leaky_relu(self.from_rgb[level](x), 0.2))   # level > 0: (B, c_{level-1}, r/2, r/2)
        if level > 0 and alpha < 1.0:
            old = F.leaky_relu(self.from_rgb[level - 1](downsample(x)), 0.2)    # the previous level's input path
            h = fade(old, h, alpha)
        for k in range(level - 1, -1, -1):
            h = self.blocks[k](h)
        return h                                                             # (B, 1)


# ----------------------------------------------------------------------------
# 5. the objective: WGAN-GP with drift, or the non-saturating loss
# ----------------------------------------------------------------------------

def gradient_penalty(critic, x_real, x_fake, u):
    """GP = mean_i (||grad_x D(x_hat_i)||_2 - 1)^2 at x_hat = x_real + u (x_fake - x_real)  (Gulrajani et al. §4).

    ``critic(x) -> (B, 1)``; x_real, x_fake (B, C, H, W); u (B, 1, 1, 1) ~ U(0, 1)
    (one mixing weight per pair).  The gradient is taken with
    ``create_graph=True``, so the penalty can itself be differentiated with
    respect to D's parameters (a second-order gradient).  Returns a scalar.
    """
    x_hat = (x_real.detach() + u * (x_fake.detach() - x_real.detach())).detach().requires_grad_(True)
    scores = critic(x_hat)                                                # (B, 1)
    # d sum_i D(x_hat_i) / d x_hat: row i is grad D(x_hat_i), up to the minibatch stddev term, which
    # couples the samples of a group (the paper's code penalises this same gradient)
    (g,) = grad(scores.sum(), [x_hat], create_graph=True)                 # (B, C, H, W)
    norm = ((g * g).sum(dim=(1, 2, 3)) + 1e-12).sqrt()                   # (B,); 1e-12 keeps d sqrt finite at 0
    return ((norm - 1.0) ** 2).mean()


def discriminator_loss(real_scores, fake_scores, loss="wgan-gp", drift=0.001):
    """D's loss before the gradient penalty, on scores (B, 1) of real and generated images.

    "wgan-gp":        L_D = mean D(G(z)) - mean D(x) + drift * mean D(x)^2
                      (the critic's side of the Wasserstein-1 estimate; the drift term
                      keeps D's outputs near 0, Karras et al. 2018 §A.1)
    "non-saturating": L_D = mean softplus(-D(x)) + mean softplus(D(G(z)))   (BCE from logits)
    """
    if loss == "wgan-gp":
        return fake_scores.mean() - real_scores.mean() + drift * (real_scores * real_scores).mean()
    if loss == "non-saturating":
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
    raise ValueError(f"discriminator_loss: loss must be one of {PROGAN_LOSSES}, got {loss!r}")


def generator_loss(fake_scores, loss="wgan-gp"):
    """G's loss: -mean D(G(z)) (WGAN) or mean softplus(-D(G(z))) = -mean log sigmoid(D(G(z))) (non-saturating)."""
    if loss == "wgan-gp":
        return -fake_scores.mean()
    if loss == "non-saturating":
        return F.softplus(-fake_scores).mean()
    raise ValueError(f"generator_loss: loss must be one of {PROGAN_LOSSES}, got {loss!r}")


# ----------------------------------------------------------------------------
# 6. the training step
# ----------------------------------------------------------------------------

def discriminator_step(D, opt_d, x_real, x_fake, u, level, alpha, loss="wgan-gp", gp_lambda=10.0, drift=0.001):
    """One Adam step of D on L_D + gp_lambda * GP at (level, alpha).

    x_real, x_fake (B, C, r, r) at the current resolution (x_fake without a graph);
    u (B, 1, 1, 1) the gradient penalty's mixing weights.
    Returns a ``backend.StepLogs`` {"loss_d", "gp", "d_real", "d_fake", "wasserstein"}
    ("wasserstein" = mean D(x) - mean D(G(z)), the critic's estimate of W_1): floats
    when looked at, read from the device together in one transfer.
    """
    def critic(x):
        return D(x, level, alpha)

    opt_d.zero_grad()
    real_scores, fake_scores = critic(x_real), critic(x_fake.detach())
    loss_d = discriminator_loss(real_scores, fake_scores, loss, drift)
    gp = gradient_penalty(critic, x_real, x_fake, u) if gp_lambda > 0 else None
    total = loss_d if gp is None else loss_d + gp_lambda * gp
    total.backward()
    opt_d.step()
    d_real, d_fake = real_scores.data.mean(), fake_scores.data.mean()      # 0-d, on the device: not read here
    return backend.StepLogs({"loss_d": total, "gp": 0.0 if gp is None else gp, "d_real": d_real,
                             "d_fake": d_fake, "wasserstein": d_real - d_fake})


def generator_step(G, D, opt_g, z, level, alpha, loss="wgan-gp"):
    """One Adam step of G on L_G(D(G(z))) at (level, alpha), D frozen.  Returns a ``backend.StepLogs`` {"loss_g"}."""
    opt_g.zero_grad()
    with frozen(D):
        loss_g = generator_loss(D(G(z, level, alpha), level, alpha), loss)
        loss_g.backward()
    opt_g.step()
    return backend.StepLogs({"loss_g": loss_g})


def train_step(G, D, opt_g, opt_d, ema, x, level, alpha, generator, config):
    """One Progressive GAN iteration at (level, alpha): a D step, a G step, an EMA update.

    x (B, C, R, R): real images at full resolution in [-1, 1]; they are brought
    to the current resolution and blended with ``real_images_at``.  ``generator``
    draws z and the penalty's mixing weights; ``config`` a ``ProGANConfig``.
    Returns the steps' statistics plus "loss" (= loss_d), "level", "alpha" and
    "resolution", as one ``backend.StepLogs`` (one read, when first looked at).
    """
    n_levels, batch = G.n_levels, x.shape[0]
    x_real = real_images_at(x, level, alpha, n_levels)                    # (B, C, r, r)
    with no_grad():  # the fakes are constants for D's step
        x_fake = G(sample_noise(batch, config.latent_dim, generator, x.dtype), level, alpha)
    u = Tensor(generator.uniform((batch, 1, 1, 1), dtype=x.dtype))
    stats = discriminator_step(D, opt_d, x_real, x_fake, u, level, alpha, config.loss, config.gp_lambda,
                               config.drift if config.loss == "wgan-gp" else 0.0).raw()
    stats.update(generator_step(G, D, opt_g, sample_noise(batch, config.latent_dim, generator, x.dtype),
                                level, alpha, config.loss).raw())
    ema.update()
    stats.update(loss=stats["loss_d"], level=float(level), alpha=float(alpha),
                 resolution=float(G.resolution(level)))
    return backend.StepLogs(stats)

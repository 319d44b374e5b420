"""LAPGAN: a Laplacian pyramid of (conditional) GANs, trained level by level.

Notes §3.3 (LAPGAN) with §4.1 (conditional GANs).  Generation starts at a low
resolution; each finer level is generated *conditioned on the upsampled
coarser image*, and adds only what the coarser image lacks: a band-pass
residual.  Because every level is its own generator/discriminator pair trained
on the pyramid of *real* images, the levels are independent problems and can
be trained one at a time, each smaller and more stable than one GAN at full
resolution.

The pyramid (Burt & Adelson 1983), with d = downsample and u = upsample:

    I_0 = I,   I_{k+1} = d(I_k)                      Gaussian pyramid, k = 0 .. K-1
    h_k = I_k - u(I_{k+1})                           band-pass residuals, k = 0 .. K-1
    I_k = u(I_{k+1}) + h_k                           reconstruction, exact for any d and u

Level 0 is the full image and level K the coarsest, as in Denton et al.  Here
d is the 2x2 average (``F.avg_pool2d``) and u bilinear (or nearest)
``F.interpolate`` by 2, so an image of side H needs H divisible by 2^K.  For
MNIST this file uses K = 2 (three images 28 -> 14 -> 7) instead of padding to
32 -> 16 -> 8: the 7x7 coarsest image still shows which digit it is, and every
pixel a network sees is a pixel of the data.

The generative model (Denton et al. 2015):

    level K (coarsest):  I~_K = G_K(z_K [, y])                     an ordinary (c)GAN on 7x7 images
    level k < K:         l_k  = u(I~_{k+1})                         the upsampled coarser sample
                         h~_k = G_k(z_k, l_k [, y])                 a residual conditioned on l_k
                         I~_k = l_k + h~_k
    D_K(I_K [, y]) and D_k(h_k, l_k [, y]): each discriminator sees its level's
    real or generated residual *together with* its low-pass condition.

One addition to the paper: G_k's residual is corrected so that the level-k
image averages back exactly to the coarser one, d(I~_k) = I~_{k+1}, as every
real pair does (``match_coarse``; ``ResidualGenerator`` says why D needs it).

Training level k uses only real data: real pairs (h_k, l_k = u(I_{k+1})) from
the pyramid of a real minibatch, fake pairs (G_k(z_k, l_k), l_k) with the same
real l_k.  No level's loss depends on another level's parameters, so one step
of level k can change nothing else (``tests/test_lapgan.py`` checks this on the
parameters).  The game at each level is the one of notes §3.1, played by
``minigen.models.gan.gan_step`` with the condition (l_k, y) passed to G and D.

Reading order: 1. the pyramid; 2. the networks (a small DCGAN-like pair at
the coarsest level, residual generators and discriminators above it); 3. the
``LAPGAN`` container with the sampling chain; 4. the model config; 5. the
training step.

Shapes: images (B, C, H, W) in [-1, 1] (C = 1, H = W = 28 for MNIST); I_k
(B, C, H / 2^k, W / 2^k); residuals h_k the shape of I_k; z_K (B, latent_dim);
z_k for k < K one noise image (B, 1, H_k, W_k), the extra input plane that
Denton et al. use; labels y (B,) integers; logits (B, 1).

References: Denton, Chintala, Szlam & Fergus 2015, "Deep Generative Image
Models using a Laplacian Pyramid of Adversarial Networks" (the model, the
noise plane, D seeing the low-pass image); Burt & Adelson 1983, "The Laplacian
Pyramid as a Compact Image Code"; Goodfellow et al. 2014 and Mirza & Osindero
2014 as in ``gan.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import backend, nn
from .. import functional as F
from ..autograd import Tensor, no_grad
from .gan import GENERATOR_LOSSES, dcgan_init_, gan_step

__all__ = ["UPSAMPLE_MODES", "downsample", "upsample", "check_pyramid_size", "gaussian_pyramid",
           "laplacian_pyramid", "reconstruct", "match_coarse", "label_planes", "CoarseGenerator", "CoarseDiscriminator",
           "ResidualGenerator", "ResidualDiscriminator",
           "LAPGAN", "LAPGANConfig", "build_lapgan", "level_step", "train_step"]


# ----------------------------------------------------------------------------
# 1. the pyramid
# ----------------------------------------------------------------------------

UPSAMPLE_MODES = ("bilinear", "nearest")


def downsample(x):
    """d(I): the mean of each 2x2 block.  (B, C, H, W) -> (B, C, H/2, W/2).

    A 2x2 box filter followed by subsampling; Burt & Adelson blur with a 5-tap
    kernel first, which at 28 -> 14 -> 7 would smear most of a digit.
    """
    return F.avg_pool2d(x, 2)


def upsample(x, mode="bilinear"):
    """u(I): resize by 2 with ``F.interpolate``.  (B, C, H, W) -> (B, C, 2H, 2W).

    "bilinear" (align_corners=False) gives a smooth low-pass image, so the
    residuals h_k are band-pass detail; "nearest" repeats each pixel 2x2.
    """
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample: mode must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")
    h, w = x.shape[2:]
    if mode == "nearest":
        return F.interpolate(x, size=(2 * h, 2 * w), mode="nearest")
    return F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)


def check_pyramid_size(height, width, levels):
    """Raise ValueError unless a ``levels``-image pyramid of an H x W image exists (H, W divisible by 2^(levels-1))."""
    if int(levels) != levels or levels < 1:
        raise ValueError(f"laplacian_pyramid: levels must be a positive integer, got {levels!r}")
    factor = 2 ** (int(levels) - 1)
    if height % factor or width % factor:
        raise ValueError(f"laplacian_pyramid: a {levels}-level pyramid halves the image {levels - 1} times, so height "
                         f"and width must be divisible by {factor}; got {height}x{width}")


def gaussian_pyramid(image, levels):
    """[I_0, ..., I_K] with I_0 = image and I_{k+1} = d(I_k), K = levels - 1.

    image (B, C, H, W) -> list of ``levels`` Tensors, I_k (B, C, H/2^k, W/2^k).
    """
    if image.ndim != 4:
        raise ValueError(f"laplacian_pyramid: images must be (B, C, H, W), got shape {tuple(image.shape)}")
    check_pyramid_size(image.shape[2], image.shape[3], levels)
    pyramid = [image]
    for _ in range(levels - 1):
        pyramid.append(downsample(pyramid[-1]))
    return pyramid


def laplacian_pyramid(image, levels, mode="bilinear"):
    """(I_K, [h_0, ..., h_{K-1}]): the coarsest image and the residuals h_k = I_k - u(I_{k+1}).

    image (B, C, H, W) with H and W divisible by 2^(levels-1); h_k has the shape
    of I_k (finest first).  ``reconstruct`` inverts it exactly.
    """
    gauss = gaussian_pyramid(image, levels)
    residuals = [gauss[k] - upsample(gauss[k + 1], mode) for k in range(levels - 1)]
    return gauss[-1], residuals


def reconstruct(coarse, residuals, mode="bilinear"):
    """I_0 from I_K and [h_0, ..., h_{K-1}]: I_k = u(I_{k+1}) + h_k for k = K-1 down to 0.

    coarse (B, C, h, w); residuals finest first, h_k (B, C, 2^(K-k) h, 2^(K-k) w).
    """
    image = coarse
    for k in reversed(range(len(residuals))):
        low = upsample(image, mode)
        if tuple(residuals[k].shape) != tuple(low.shape):
            raise ValueError(f"reconstruct: residual h_{k} has shape {tuple(residuals[k].shape)} but the upsampled "
                             f"coarser image has {tuple(low.shape)}")
        image = low + residuals[k]
    return image


def match_coarse(image, coarse):
    """The image nearest to ``image`` whose 2x2 block means are ``coarse``: I + u_nn(c - d(I)).

    d(match_coarse(I, c)) = c exactly, because d (the 2x2 mean) of a nearest
    upsampling u_nn gives back its input; an image with d(I) = c is returned
    unchanged, and the correction spreads each block's error evenly over its
    four pixels (the least-squares projection onto {I : d(I) = c}).
    image (B, C, 2h, 2w), coarse (B, C, h, w) -> (B, C, 2h, 2w).
    """
    return image + upsample(coarse - downsample(image), "nearest")


# ----------------------------------------------------------------------------
# 2. the networks: a small DCGAN at the coarsest level, residual nets above it
# ----------------------------------------------------------------------------

def label_planes(y, num_classes, like):
    """y (B,) -> (B, num_classes, H, W) constant planes, plane y all ones, H x W and dtype of ``like``."""
    b, _, h, w = like.shape
    planes = F.one_hot(y, num_classes, like.dtype).reshape(b, num_classes, 1, 1)
    return F.broadcast_to(planes, (b, num_classes, h, w))


def _conv_out(size):
    """Output side of a Conv2d(kernel 4, stride 2, padding 1): floor(size / 2) (7 -> 3, 14 -> 7)."""
    return (size + 2 - 4) // 2 + 1


class CoarseGenerator(nn.Module):
    """G_K(z [, y]): the coarsest image, an ordinary (conditional) GAN generator at H_K x W_K.

        z (B, latent_dim) [+ one-hot y (B, classes)]
          -> Linear -> BatchNorm1d -> ReLU -> reshape       (B, 2c, H_K, W_K)
          -> Conv2d(3x3, c) -> BN -> ReLU                   (B, c, H_K, W_K)
          -> Conv2d(3x3, C) -> tanh                         (B, C, H_K, W_K) in [-1, 1]

    DCGAN's generator without its upsampling: at 7x7 there is nothing left to
    upsample.  (Denton et al. use fully connected nets at their coarsest CIFAR-10
    level; on 7x7 digits this small convolutional one gives clearly better
    digits after 1,000 steps than the MLP of ``gan.py`` after 3,000.)
    """

    def __init__(self, latent_dim=100, image_shape=(1, 7, 7), channels=32, num_classes=0, generator=None):
        super().__init__()
        c_img, h, w = image_shape
        self.latent_dim, self.num_classes = int(latent_dim), int(num_classes)
        self.start = (2 * channels, h, w)
        n_start = 2 * channels * h * w
        self.fc = nn.Linear(self.latent_dim + self.num_classes, n_start, generator=generator)
        self.bn0 = nn.BatchNorm1d(n_start)
        self.conv1 = nn.Conv2d(2 * channels, channels, 3, padding=1, generator=generator)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, c_img, 3, padding=1, generator=generator)
        dcgan_init_(self, generator)

    def forward(self, z, y=None):
        if self.num_classes:
            z = F.concat([z, F.one_hot(y, self.num_classes, z.dtype)], dim=1)    # (B, latent + classes)
        h = F.relu(self.bn0(self.fc(z))).reshape((z.shape[0],) + self.start)     # (B, 2c, H_K, W_K)
        h = F.relu(self.bn1(self.conv1(h)))                                       # (B, c, H_K, W_K)
        return F.tanh(self.conv2(h))                                              # (B, C, H_K, W_K)


class CoarseDiscriminator(nn.Module):
    """D_K(I_K [, y]): is this coarsest image real?  A logit.

        I_K (B, C, H_K, W_K) [+ label planes (B, classes, H_K, W_K)]
          -> Conv2d(3x3, c) -> LeakyReLU(0.2)                       (B, c, H_K, W_K)
          -> Conv2d(c, 2c, 4, 2, 1) -> BN -> LeakyReLU(0.2)         (B, 2c, H_K/2, W_K/2)  (7 -> 3)
          -> flatten -> Linear -> (B, 1)
    """

    def __init__(self, image_shape=(1, 7, 7), channels=32, num_classes=0, generator=None):
        super().__init__()
        c_img, h, w = image_shape
        if min(h, w) < 2:
            raise ValueError(f"CoarseDiscriminator: the coarsest image must be at least 2x2, got {h}x{w}")
        self.num_classes = int(num_classes)
        self.conv1 = nn.Conv2d(c_img + self.num_classes, channels, 3, padding=1, generator=generator)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1, generator=generator)
        self.bn2 = nn.BatchNorm2d(2 * channels)
        self.fc = nn.Linear(2 * channels * _conv_out(h) * _conv_out(w), 1, generator=generator)
        dcgan_init_(self, generator)

    def forward(self, x, y=None):
        if self.num_classes:
            x = F.concat([x, label_planes(y, self.num_classes, x)], dim=1)         # (B, C + classes, H_K, W_K)
        h = F.leaky_relu(self.conv1(x), 0.2)                                        # (B, c, H_K, W_K)
        h = F.leaky_relu(self.bn2(self.conv2(h)), 0.2)                              # (B, 2c, H_K/2, W_K/2)
        return self.fc(F.flatten(h, 1))                                             # (B, 1)


class ResidualGenerator(nn.Module):
    """G_k(z_k, l_k [, y]) -> h~_k: a residual image conditioned on the upsampled coarser image.

        [l_k (B, C, H, W), z_k (B, 1, H, W) [, label planes (B, classes, H, W)]]  stacked on channels
          -> Conv2d(3x3, c) -> BN -> ReLU -> Conv2d(3x3, c) -> BN -> ReLU           (B, c, H, W)
          -> Conv2d(3x3, C)                                                        (B, C, H, W) = r
          h~_k = match_coarse(l_k + r, I_{k+1}) - l_k

    The output is linear: a residual is signed and small, not an image in
    [-1, 1].  Denton et al. feed the noise as an extra image plane, as here;
    their CIFAR-10 nets are the same shape with more and wider layers.

    The last line is this file's addition.  Every real pair satisfies
    d(l_k + h_k) = d(I_k) = I_{k+1} exactly, and D_k sees l_k and h_k together,
    so without it D_k learns that linear test and wins outright (in our runs
    its loss fell below 0.05 and G_1's 14x14 images stayed poor).
    ``match_coarse`` makes every generated image pass the same test, so D_k
    has to judge the residual's shape instead; it also means the level-k
    sample averages back exactly to the coarser sample it was drawn from.
    ``forward(z, cond)`` takes cond = (l_k, I_{k+1}, y) with y None when
    unconditional, so ``gan.gan_step`` can pass it on unchanged.
    """

    def __init__(self, image_channels=1, channels=32, num_classes=0, generator=None):
        super().__init__()
        self.num_classes = int(num_classes)
        kw = dict(padding=1, generator=generator)
        self.conv1 = nn.Conv2d(image_channels + 1 + self.num_classes, channels, 3, **kw)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, **kw)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, image_channels, 3, **kw)
        dcgan_init_(self, generator)

    def forward(self, z, cond):
        low, coarse, y = cond
        inputs = [low, z]
        if self.num_classes:
            inputs.append(label_planes(y, self.num_classes, low))
        h = F.concat(inputs, dim=1)                                  # (B, C + 1 [+ classes], H, W)
        h = F.relu(self.bn1(self.conv1(h)))                          # (B, c, H, W)
        h = F.relu(self.bn2(self.conv2(h)))                          # (B, c, H, W)
        r = self.conv3(h)                                            # (B, C, H, W)
        return match_coarse(low + r, coarse) - low                   # d(l + h~) = I_{k+1}


class ResidualDiscriminator(nn.Module):
    """D_k(h_k, l_k [, y]): is this residual real, given its low-pass image l_k?  A logit.

        [h_k (B, C, H, W), l_k (B, C, H, W) [, label planes]]  stacked on channels
          -> Conv2d(C', c, 4, 2, 1) -> LeakyReLU(0.2)                  (B, c, H/2, W/2)
          -> Conv2d(c, 2c, 4, 2, 1) -> BN -> LeakyReLU(0.2)            (B, 2c, H/4, W/4)
          -> flatten -> Linear -> (B, 1)

    Seeing l_k next to h_k, D judges whether the residual fits the image it is
    added to (Denton et al. add l_k to h_k before the first layer; stacking
    them lets the first convolution form that sum or anything else).  H/4 is
    rounded down (14 -> 7 -> 3).  ``forward(h, cond)`` with cond = (l_k, I_{k+1}, y);
    D uses l_k and y.
    """

    def __init__(self, image_shape=(1, 28, 28), channels=32, num_classes=0, generator=None):
        super().__init__()
        c_img, h, w = image_shape
        self.num_classes = int(num_classes)
        kw = dict(stride=2, padding=1, generator=generator)
        self.conv1 = nn.Conv2d(2 * c_img + self.num_classes, channels, 4, **kw)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 4, **kw)
        self.bn2 = nn.BatchNorm2d(2 * channels)
        out_h, out_w = _conv_out(_conv_out(h)), _conv_out(_conv_out(w))  # two k4 s2 p1 convolutions
        if min(out_h, out_w) < 1:
            raise ValueError(f"ResidualDiscriminator: images of {h}x{w} are too small (need at least 4x4)")
        self.fc = nn.Linear(2 * channels * out_h * out_w, 1, generator=generator)
        dcgan_init_(self, generator)

    def forward(self, h, cond):
        low, _, y = cond
        inputs = [h, low]
        if self.num_classes:
            inputs.append(label_planes(y, self.num_classes, low))
        x = F.concat(inputs, dim=1)                                  # (B, 2C [+ classes], H, W)
        x = F.leaky_relu(self.conv1(x), 0.2)                         # (B, c, H/2, W/2)
        x = F.leaky_relu(self.bn2(self.conv2(x)), 0.2)               # (B, 2c, H/4, W/4)
        return self.fc(F.flatten(x, 1))                              # (B, 1)


# ----------------------------------------------------------------------------
# 3. the pyramid of GANs and its sampling chain
# ----------------------------------------------------------------------------

class LAPGAN(nn.Module):
    """K + 1 generator/discriminator pairs, ``generators[k]`` / ``discriminators[k]`` for level k.

    Level k = 0 is the full resolution (image_shape), level K = levels - 1 the
    coarsest (``CoarseGenerator`` / ``CoarseDiscriminator``); levels k < K are
    ``ResidualGenerator`` / ``ResidualDiscriminator`` at H/2^k.  ``channels[k]``
    is level k's width.  With num_classes > 0 every level sees the label
    (notes §4.1).  The module holds no training logic: see ``level_step`` and
    ``train_step`` below.
    """

    def __init__(self, image_shape=(1, 28, 28), levels=3, upsample="bilinear", latent_dim=100,
                 channels=(16, 32, 32), num_classes=0, generator=None):
        super().__init__()
        c, h, w = image_shape
        check_pyramid_size(h, w, levels)
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"LAPGAN: upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
        if len(channels) != levels:
            raise ValueError(f"LAPGAN: channels needs one width per level ({levels}), got {tuple(channels)}")
        self.image_shape, self.levels, self.upsample_mode = tuple(image_shape), int(levels), upsample
        self.latent_dim, self.num_classes = int(latent_dim), int(num_classes)
        self.shapes = [(c, h // 2 ** k, w // 2 ** k) for k in range(self.levels)]  # (C, H_k, W_k) per level
        gens, discs = [], []
        for k, (shape, width) in enumerate(zip(self.shapes, channels)):
            if k == self.coarsest:
                gens.append(CoarseGenerator(latent_dim, shape, width, num_classes, generator=generator))
                discs.append(CoarseDiscriminator(shape, width, num_classes, generator=generator))
            else:
                gens.append(ResidualGenerator(c, width, num_classes, generator=generator))
                discs.append(ResidualDiscriminator(shape, width, num_classes, generator=generator))
        self.generators = nn.ModuleList(gens)
        self.discriminators = nn.ModuleList(discs)

    @property
    def coarsest(self):
        """K, the index of the coarsest level."""
        return self.levels - 1

    def level_parameters(self, k):
        """(G_k's parameters, D_k's parameters): what level k's two optimizers update."""
        return list(self.generators[k].parameters()), list(self.discriminators[k].parameters())

    def u(self, x):
        """The pyramid's upsampling u (bilinear or nearest by 2)."""
        return upsample(x, self.upsample_mode)

    def real_pyramid(self, images):
        """The Gaussian pyramid [I_0, ..., I_K] of real images (B, C, H, W), as constants (no graph)."""
        with no_grad():
            return gaussian_pyramid(images, self.levels)

    def level_batch(self, pyramid, k, y=None):
        """(x, cond) that level k's GAN is trained on, from a real Gaussian pyramid.

        k = K:  x = I_K (B, C, H_K, W_K), cond = y (None when unconditional);
        k < K:  x = h_k = I_k - u(I_{k+1}), cond = (l_k, I_{k+1}, y) with l_k = u(I_{k+1}).
        """
        if k == self.coarsest:
            return pyramid[k], y
        with no_grad():
            low = self.u(pyramid[k + 1])                             # (B, C, H_k, W_k)
            return pyramid[k] - low, (low, pyramid[k + 1], y)

    def noise(self, k, n, generator):
        """z_k ~ N(0, I): (n, latent_dim) for the coarsest level, one noise plane (n, 1, H_k, W_k) otherwise."""
        if k == self.coarsest:
            return Tensor(generator.normal((n, self.latent_dim)))
        _, h, w = self.shapes[k]
        return Tensor(generator.normal((n, 1, h, w)))

    def sample_level(self, k, coarser, z, y=None):
        """I~_k = u(I~_{k+1}) + G_k(z_k, u(I~_{k+1}) [, y]) for a level k < K (no graph); d(I~_k) = I~_{k+1}.

        coarser (B, C, H_{k+1}, W_{k+1}); z (B, 1, H_k, W_k); returns (B, C, H_k, W_k).
        Deterministic given (coarser, z, y) once the module is in eval() mode.
        """
        if not 0 <= k < self.coarsest:
            raise ValueError(f"sample_level: k must be a finer level in [0, {self.coarsest}), got {k}")
        with no_grad():
            low = self.u(coarser)
            return low + self.generators[k](z, (low, coarser, y))

    def sample_chain(self, n, generator, y=None):
        """The chain coarse -> fine: [I~_K, ..., I~_0], n samples at every level (Tensors, no graph).

        I~_K = G_K(z_K [, y]) (tanh, in [-1, 1]); then for k = K-1 .. 0,
        I~_k = clip(sample_level(k, I~_{k+1}, z_k, y), -1, 1).  The clip keeps each
        sample in the data range, where the next level's condition l_k = u(I_{k+1})
        always lies during training.  Draws z_K, z_{K-1}, ..., z_0 from
        ``generator`` in that order.  Put the module in eval() mode first.
        """
        with no_grad():
            z = self.noise(self.coarsest, n, generator)
            image = self.generators[self.coarsest](z) if y is None else self.generators[self.coarsest](z, y)
            chain = [image]
            for k in reversed(range(self.coarsest)):
                image = F.clip(self.sample_level(k, image, self.noise(k, n, generator), y), -1.0, 1.0)
                chain.append(image)
        return chain


# ----------------------------------------------------------------------------
# 4. the model config
# ----------------------------------------------------------------------------

@dataclass
class LAPGANConfig:
    """The pyramid, the networks and the game (the run options live in ``minigen.families.lapgan``)."""

    levels: int = 3                   # images in the pyramid: 28 -> 14 -> 7 for MNIST (K = levels - 1 halvings)
    upsample: str = "bilinear"        # u of the pyramid: "bilinear" or "nearest" (d is always the 2x2 average)
    latent_dim: int = 100             # size of the coarsest level's noise z_K ~ N(0, I)
    channels: tuple = (16, 32, 32)    # width c of each level's G_k and D_k, finest first (one per level)
    g_loss: str = "non-saturating"    # generator loss at every level: "non-saturating" (§3.2) or "minimax"

    def validate(self):
        """Raise ValueError naming the first impossible setting."""
        if int(self.levels) != self.levels or self.levels < 1:
            raise ValueError(f"config: levels must be a positive integer, got {self.levels}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"config: upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {self.upsample!r}")
        if self.g_loss not in GENERATOR_LOSSES:
            raise ValueError(f"config: g_loss must be one of {', '.join(GENERATOR_LOSSES)}, got {self.g_loss!r}")
        if len(self.channels) != self.levels:
            raise ValueError(f"config: channels needs one width per level ({self.levels}), got {tuple(self.channels)}")
        if self.latent_dim < 1 or min(self.channels) < 1:
            raise ValueError("config: latent_dim and the channel widths must be positive")


def build_lapgan(config, image_shape, num_classes=0, generator=None):
    """The ``LAPGAN`` a config describes, for images of ``image_shape`` (C, H, W)."""
    return LAPGAN(tuple(image_shape), config.levels, config.upsample, config.latent_dim, tuple(config.channels),
                  num_classes, generator=generator)


# ----------------------------------------------------------------------------
# 5. training: each level is its own GAN on the real pyramid
# ----------------------------------------------------------------------------

def level_step(model, k, opt_g, opt_d, pyramid, y, generator, loss="non-saturating"):
    """One GAN iteration of level k (notes §3.1): a D_k step, then a G_k step, on the real pyramid.

        D_k:  real (x_k, c_k) from ``level_batch``,  fake (G_k(z_k, c_k), c_k)
        G_k:  fresh z_k, the same real condition c_k

    where x_K = I_K, c_K = y and x_k = h_k, c_k = (u(I_{k+1}), y) for k < K.
    ``pyramid``: the real Gaussian pyramid (constants); opt_g / opt_d hold
    G_k's and D_k's parameters only.  Nothing of another level enters the
    graph, so no other level gets a gradient.  Returns ``gan_step``'s stats.
    """
    x, cond = model.level_batch(pyramid, k, y)
    return gan_step(model.generators[k], model.discriminators[k], opt_g, opt_d, [(x, cond)],
                    lambda n: model.noise(k, n, generator), loss)


def train_step(model, opts_g, opts_d, images, y=None, generator=None, levels=None, loss="non-saturating"):
    """One training step of the pyramid: ``level_step`` at each level in ``levels`` (default: all).

    images (B, C, H, W) in [-1, 1]; y (B,) labels or None; opts_g[k] / opts_d[k]
    level k's optimizers.  Every level trains on the pyramid of the same real
    minibatch, coarsest first, each with its own fresh noise.
    Returns {"loss_d_k", "loss_g_k", "d_real_k", "d_fake_k", "d_fake_g_k"} for
    each trained level k and "loss", the mean L_D over them (log 4 ~ 1.386 at
    every level's equilibrium).
    """
    levels = list(reversed(range(model.levels))) if levels is None else list(levels)
    if not levels:
        raise ValueError("train_step: levels is empty; name at least one level to train")
    pyramid = model.real_pyramid(images)
    stats = {}
    for k in levels:
        if not 0 <= k < model.levels:
            raise ValueError(f"train_step: level {k} does not exist (levels are 0 .. {model.levels - 1})")
        level_stats = level_step(model, k, opts_g[k], opts_d[k], pyramid, y, generator, loss)
        stats.update({f"{key}_{k}": value for key, value in level_stats.raw().items() if key != "loss"})
    stats["loss"] = sum(stats[f"loss_d_{k}"] for k in levels) / len(levels)   # still unread device scalars
    return backend.StepLogs(stats)

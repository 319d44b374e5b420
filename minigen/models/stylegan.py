"""StyleGAN: a mapping network to a style space, styles at every layer, noise inputs, R1.

Notes §3.3 (StyleGAN): the latent z is transformed into a style space w that
controls generation at every resolution, and fine details come from noise
injected at different scales.  This file makes those two claims concrete:

    z ~ N(0, I)  --f (mapping MLP)-->  w  --A_i (one affine map per layer)-->  style s_i
    x_0 = learned constant 4x4;   x_{i+1} = layer_i(x_i, s_i, noise_i);   image = toRGB(x_L)

The synthesis network never sees z: everything it draws is steered by the
styles s_i, and the per-pixel noise images add stochastic detail.  Because each
layer takes its own copy of w, two latents can be mixed (coarse layers from w1,
fine layers from w2: *style mixing*), and w can be pulled towards the average
style w_avg (*truncation*).

Reading order of this file
--------------------------
0. ``StyleGANConfig``: the architecture and objective a run chooses.
1. The style operations, as plain functions: ``adain`` (StyleGAN) and
   ``modulated_conv2d`` (StyleGAN2's weight modulation/demodulation),
   ``truncate`` and ``mix_styles``.
2. The generator: ``MappingNetwork`` (z -> w, with the running w_avg),
   ``SynthesisLayer`` (one styled 3x3 convolution with its noise input),
   ``ToRGB``, ``SynthesisNetwork`` (4x4 constant -> 8 -> 16 -> 32) and
   ``StyleGANGenerator`` (both, plus truncation).
3. The discriminator: residual blocks of equalized convolutions, minibatch
   standard deviation, a linear head (``StyleGANDiscriminator``).
4. The objective: the non-saturating logistic loss and the R1 penalty.
5. Pictures of the claims: ``style_mixing_grid``, ``truncation_sweep``,
   ``noise_variation`` (Figures 3 and 4 of Karras et al. 2019).
6. The training step: ``sample_styles`` (with style-mixing regularization),
   ``discriminator_step`` (lazy R1 every ``r1_every`` steps),
   ``generator_step`` (updates w_avg) and ``train_step`` (one of each).

Resolution.  The synthesis doubles the side from a 4x4 constant, so it draws
32 x 32 images; the MNIST digits (28 x 28) are padded by 2 background pixels on
every side for training (as Progressive GAN and StyleGAN pad small data sets to
a power of two) and samples are cropped back to the central 28 x 28.

Two ways of injecting the style (``style_mode``), otherwise the same network:

    "adain"      StyleGAN (Karras, Laine & Aila 2019): conv -> + noise -> + bias ->
                 LeakyReLU -> AdaIN(x, s) = s_scale * (x - mu(x)) / sigma(x) + s_bias
    "modulated"  StyleGAN2 (Karras et al. 2020): the style scales the conv's
                 input channels (modulation), each output channel is then
                 rescaled to unit expected variance (demodulation); no
                 normalisation of the activations, so no "droplet" artifacts.

Settings.  lr multiplier 0.01 of the mapping network, w_avg decay 0.995,
style mixing probability 0.9, Adam betas (0, 0.99) and lazy R1 every 16
steps are the authors' (NVlabs/stylegan, NVlabs/stylegan2).  The small-data
choices: a 2-layer mapping network as in Karras et al. 2020b's CIFAR-10 setup,
and R1 weight gamma = 1 (their heuristic 0.0002 R^2 / B would give 0.0064
here; gamma = 0.01 let D win within a few hundred steps).

One departure from the authors, for MNIST: the summed image goes through a
tanh (``output="tanh"``).  With the authors' linear output every setting we
tried collapsed to a single digit shape within ~1,000 steps (README): the
generator starts with a large w-dependent output (std over z ~1.2) on images
that are exactly -1 on 80% of their pixels, and the quickest way for it to
remove that output was to make its styles the same for every w (their mean
grew from 1 to 2-2.6 at an unchanged spread, so demodulation left w little
influence), from which it did not recover.  Under a tanh a large negative
output is already background, and the samples stayed varied (std over z of
the EMA generator's images 0.28 at step 600, against 0.10-0.11 for the
linear output at steps 800-1,276).

Both use StyleGAN2's "skip" output (a toRGB at every resolution, summed after
upsampling), so that the two modes differ only in how the style enters.  Layers use the equalized learning rate of Progressive GAN
(``nn.EqualizedLinear`` / ``nn.EqualizedConv2d``, notes §3.3 (Progressive GAN)).

Shapes: z, w (B, w_dim) [z: (B, z_dim)]; per-layer styles ws (B, num_ws, w_dim);
images (B, C, 32, 32) in [-1, 1] (tanh output; about [-1, 1] with output="linear"); logits (B, 1).

References: Karras, Laine & Aila 2019, "A Style-Based Generator Architecture for
Generative Adversarial Networks" (mapping network, AdaIN, noise inputs, style
mixing with probability 0.9, truncation trick, w_avg as a moving average);
Karras, Laine, Aittala, Hellsten, Lehtinen & Aila 2020, "Analyzing and Improving
the Image Quality of StyleGAN" (weight demodulation, lazy regularization, the
residual discriminator); Mescheder, Geiger & Nowozin 2018, "Which Training
Methods for GANs do actually Converge?" (R1); Huang & Belongie 2017, "Arbitrary
Style Transfer in Real-time with Adaptive Instance Normalization" (AdaIN);
Karras, Aila, Laine & Lehtinen 2018, "Progressive Growing of GANs" (equalized
learning rate, minibatch standard deviation); Karras, Aittala, Hellsten, Laine,
Lehtinen & Aila 2020b, "Training Generative Adversarial Networks with Limited
Data" (small-data settings, the R1 heuristic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import backend, nn
from .. import functional as F
from ..autograd import Tensor, grad, no_grad
from .gan import discriminator_loss, frozen, generator_loss, mean_probability_on_device

__all__ = ["StyleGANConfig", "STYLE_MODES", "NOISE_MODES", "OUTPUTS", "adain", "modulated_conv2d", "truncate", "mix_styles",
           "MappingNetwork", "SynthesisLayer", "ToRGB", "SynthesisNetwork", "StyleGANGenerator",
           "DiscriminatorBlock", "StyleGANDiscriminator", "build_stylegan", "r1_penalty", "style_mixing_grid",
           "truncation_sweep", "noise_variation", "sample_styles",
           "discriminator_step", "generator_step", "train_step"]

STYLE_MODES = ("modulated", "adain")
OUTPUTS = ("tanh", "linear")
NOISE_MODES = ("random", "const", "none")


# ----------------------------------------------------------------------------
# 0. the config
# ----------------------------------------------------------------------------

@dataclass
class StyleGANConfig:
    """Architecture and objective of a StyleGAN (the run options live in minigen/families/stylegan.py)."""

    z_dim: int = 128                  # size of the latent z ~ N(0, I)
    w_dim: int = 128                  # size of the intermediate latent w (the style space)
    mapping_layers: int = 2           # layers of f: z -> w (8 for faces; 2 in Karras et al. 2020b's CIFAR-10 setup)
    mapping_lr_mul: float = 0.01      # learning-rate multiplier of the mapping network (Karras et al. 2019)
    style_mode: str = "modulated"     # "modulated" (StyleGAN2 weight demodulation) or "adain" (StyleGAN)
    channels: tuple = (64, 64, 32, 16)  # feature maps at 4, 8, 16, 32 pixels (G); D mirrors them
    style_mixing_prob: float = 0.9    # probability that a training minibatch mixes two w's
    w_avg_beta: float = 0.995         # decay of the moving average w_avg of w (for truncation)
    r1_gamma: float = 1.0             # R1 weight: gamma/2 E||grad_x D(x)||^2 on reals (0: off); see Settings above
    r1_every: int = 16                # lazy regularization: R1 on every k-th D step, weighted by k
    mbstd_group: int = 4              # minibatch standard deviation group size in D
    output: str = "tanh"              # "tanh" (squashes the summed image; MNIST default) or "linear" (the authors')

    def validate(self):
        """Raise ValueError("config: ...") for settings that cannot work."""
        if self.output not in OUTPUTS:
            raise ValueError(f"config: output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.style_mode not in STYLE_MODES:
            raise ValueError(f"config: style_mode must be one of {', '.join(STYLE_MODES)}, got {self.style_mode!r}")
        for name in ("z_dim", "w_dim", "mapping_layers", "r1_every", "mbstd_group"):
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"config: channels needs a positive width for 4x4 and at least one more "
                             f"resolution, got {self.channels}")
        if not 0.0 < self.mapping_lr_mul <= 1.0:
            raise ValueError(f"config: mapping_lr_mul must lie in (0, 1], got {self.mapping_lr_mul}")
        if not 0.0 <= self.style_mixing_prob <= 1.0:
            raise ValueError(f"config: style_mixing_prob must lie in [0, 1], got {self.style_mixing_prob}")
        if not 0.0 <= self.w_avg_beta < 1.0:
            raise ValueError(f"config: w_avg_beta must lie in [0, 1), got {self.w_avg_beta}")
        if not (self.r1_gamma >= 0 and math.isfinite(self.r1_gamma)):
            raise ValueError(f"config: r1_gamma must be a finite number >= 0, got {self.r1_gamma}")

    @property
    def resolution(self):
        """Side of the generated images: 4 * 2^(len(channels) - 1) (32 for four widths)."""
        return 4 * 2 ** (len(self.channels) - 1)


# ----------------------------------------------------------------------------
# 1. the style operations
# ----------------------------------------------------------------------------

def adain(x, scale, bias, eps=1e-5):
    """Adaptive instance normalization (Huang & Belongie 2017; StyleGAN's style injection).

        AdaIN(x_i, y) = y_scale,i * (x_i - mu(x_i)) / sigma(x_i) + y_bias,i

    Each feature map x_i of each sample is normalised over its pixels (instance
    norm, sigma the biased std with eps inside the square root), then takes the
    style's statistics: mean y_bias and std |y_scale|.
    x (B, C, H, W); scale, bias (B, C) -> (B, C, H, W).
    """
    B, C = x.shape[:2]
    x = F.group_norm(x, C, eps=eps)                                          # one group per channel: instance norm
    return x * scale.reshape(B, C, 1, 1) + bias.reshape(B, C, 1, 1)


def modulated_conv2d(x, weight, styles, demodulate=True, padding=0, fused=False, eps=1e-8):
    """StyleGAN2's modulated convolution: a per-sample weight made from one shared weight and the style.

        modulation    w'_{b,o,i,k} = s_{b,i} w_{o,i,k}
        demodulation  w''_{b,o,i,k} = w'_{b,o,i,k} / sqrt( sum_{i,k} w'_{b,o,i,k}^2 + eps )
        y_b = conv2d(x_b, w''_b)

    For inputs with unit variance, i.i.d. over channels and pixels, output
    channel o of conv2d(x_b, w') has variance sum_{i,k} w'^2 (Karras et al. 2020,
    §2.2), so demodulation gives every output unit expected variance; it
    replaces AdaIN's normalisation of the activations by a normalisation of
    the weights.

    x (B, C_in, H, W), weight (C_out, C_in, kh, kw) (already scaled, e.g.
    c * W of an equalized conv), styles (B, C_in) -> y (B, C_out, H', W').
    No Python loop over the batch, two equivalent batched forms:
      fused=True   the batch folded into the channels: one grouped conv2d of
                   x (1, B*C_in, H, W) with the stacked weights (B*C_out, C_in, kh, kw),
                   groups = B (the form of the authors' code);
      fused=False  by linearity, conv2d(x_b, s_b * w) = conv2d(s_b * x_b, w): scale the
                   input's channels by s, one ordinary conv2d with the shared weight,
                   then scale the output channels by the demodulation factors
                   (cheaper here: one weight, one im2col; the default).
    """
    B, C_in, H, W = x.shape
    C_out, _, kh, kw = weight.shape
    w = weight.reshape(1, C_out, C_in, kh, kw) * styles.reshape(B, 1, C_in, 1, 1)  # (B, C_out, C_in, kh, kw)
    if demodulate:
        d = ((w * w).sum(dim=(2, 3, 4)) + eps) ** -0.5                           # (B, C_out)
    if fused:
        if demodulate:
            w = w * d.reshape(B, C_out, 1, 1, 1)
        y = F.conv2d(x.reshape(1, B * C_in, H, W), w.reshape(B * C_out, C_in, kh, kw),
                     padding=padding, groups=B)                                    # (1, B*C_out, H', W')
        return y.reshape(B, C_out, y.shape[2], y.shape[3])
    y = F.conv2d(x * styles.reshape(B, C_in, 1, 1), weight, padding=padding)       # (B, C_out, H', W')
    return y * d.reshape(B, C_out, 1, 1) if demodulate else y


def truncate(w, w_avg, psi):
    """The truncation trick in W (Karras et al. 2019 §3.3):  w' = w_avg + psi (w - w_avg).

    psi = 1 leaves w alone, psi = 0 gives the average style for every z, and
    0 < psi < 1 trades variety for typicality.  w (B, w_dim) or (B, L, w_dim); w_avg (w_dim,).
    """
    return w_avg + (w - w_avg) * float(psi)


def mix_styles(w1, w2, crossover, num_ws):
    """The per-layer styles of style mixing: layers < crossover take w1, layers >= crossover take w2.

    w1, w2 (B, w_dim); 0 <= crossover <= num_ws -> ws (B, num_ws, w_dim).
    crossover = num_ws is no mixing (every layer from w1).
    """
    if not 0 <= crossover <= num_ws:
        raise ValueError(f"mix_styles: crossover must lie in [0, {num_ws}], got {crossover}")
    B, D = w1.shape
    parts = [F.broadcast_to(w.reshape(B, 1, D), (B, n, D)) for w, n in ((w1, crossover), (w2, num_ws - crossover))
             if n > 0]
    return parts[0] if len(parts) == 1 else F.concat(parts, dim=1)                 # (B, num_ws, w_dim)


# ----------------------------------------------------------------------------
# 2. the generator
# ----------------------------------------------------------------------------

class MappingNetwork(nn.Module):
    """f: z -> w, an MLP of equalized linear layers with LeakyReLU(0.2) (Karras et al. 2019 §2).

    z is pixel-normalised first (scaled to unit mean square), and every layer
    learns ``lr_mul`` = 0.01 times slower than the synthesis network.  The buffer
    ``w_avg`` (w_dim,) is the moving average of w seen in training, the centre
    of the truncation trick.  z (B, z_dim) -> w (B, w_dim).
    """

    def __init__(self, z_dim, w_dim, num_layers, lr_mul=0.01, w_avg_beta=0.995, generator=None):
        super().__init__()
        self.z_dim, self.w_dim, self.w_avg_beta = int(z_dim), int(w_dim), float(w_avg_beta)
        widths = [self.z_dim] + [self.w_dim] * num_layers
        layers = [nn.PixelNorm()]                                                      # z / rms(z)
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.EqualizedLinear(a, b, lr_mul=lr_mul, generator=generator), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)
        self.register_buffer("w_avg", Tensor(np.zeros(self.w_dim, dtype=backend.get_default_dtype())))

    def forward(self, z, psi=1.0):
        w = self.net(z)                                                               # (B, w_dim)
        return w if psi == 1 else truncate(w, self.w_avg, psi)

    def update_w_avg(self, w):
        """w_avg <- beta w_avg + (1 - beta) mean_batch(w)  (no graph; called once per generator step)."""
        with no_grad():
            mean = w.data.mean(axis=0)
            self.w_avg.data[...] = mean + self.w_avg_beta * (self.w_avg.data - mean)


class SynthesisLayer(nn.Module):
    """One styled 3x3 convolution of the synthesis network, with its noise input.

        [x2 bilinear upsampling] -> conv -> + B * noise -> + bias -> LeakyReLU(0.2) [-> AdaIN]

    "modulated": conv is ``modulated_conv2d`` with style s = A(w) (C_in,),
                 initialised around 1 (A's bias starts at 1); the LeakyReLU
                 output is multiplied by sqrt(2) to keep unit variance.
    "adain":     conv is an equalized conv, then AdaIN with
                 (scale, bias) = (1 + A(w)[:C_out], A(w)[C_out:]).
    Noise: a single-channel image, the same for all channels, scaled per
    channel by the learned ``noise_strength`` B (C_out,), initialised to 0.
    Its source (``noise_mode``): "random" (fresh N(0, 1) from ``generator``),
    "const" (the fixed buffer ``noise_const``, drawn once at construction:
    reproducible sampling), or "none".
    x (B, C_in, H, W), w (B, w_dim) -> (B, C_out, H', W'), H' = 2H if ``up`` else H.
    """

    def __init__(self, in_channels, out_channels, w_dim, resolution, style_mode="modulated", up=False,
                 generator=None):
        super().__init__()
        if style_mode not in STYLE_MODES:
            raise ValueError(f"SynthesisLayer: style_mode must be one of {STYLE_MODES}, got {style_mode!r}")
        self.style_mode, self.up, self.resolution = style_mode, bool(up), int(resolution)
        self.out_channels = int(out_channels)
        if style_mode == "modulated":
            self.affine = nn.EqualizedLinear(w_dim, in_channels, gain=1.0, bias_init=1.0, generator=generator)
            # the shared weight, stored with the equalized-lr scale (gain 1: demodulation fixes the scale anyway)
            self.conv = nn.EqualizedConv2d(in_channels, out_channels, 3, padding=1, bias=False, gain=1.0,
                                           generator=generator)
        else:
            self.conv = nn.EqualizedConv2d(in_channels, out_channels, 3, padding=1, bias=False, generator=generator)
            self.affine = nn.EqualizedLinear(w_dim, 2 * out_channels, gain=1.0, generator=generator)
        xp = backend.get_array_module("cpu")
        dtype = backend.get_default_dtype()
        self.noise_strength = nn.Parameter(xp.zeros(out_channels, dtype=dtype))
        self.bias = nn.Parameter(xp.zeros(out_channels, dtype=dtype))
        gen = generator if generator is not None else backend.default_generator("cpu")
        self.register_buffer("noise_const", Tensor(backend.to_numpy(
            gen.normal((1, 1, self.resolution, self.resolution), dtype=dtype))))

    def noise(self, batch, noise_mode, generator, like):
        """The noise image (B or 1, 1, H, W) for ``noise_mode``, or None for "none"."""
        if noise_mode == "none":
            return None
        if noise_mode == "const":
            return self.noise_const
        if noise_mode != "random":
            raise ValueError(f"SynthesisLayer: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if generator is None:
            raise ValueError("SynthesisLayer: noise_mode='random' needs an explicit generator")
        return Tensor(generator.normal((batch, 1, self.resolution, self.resolution), dtype=like.dtype))

    def forward(self, x, w, noise_mode="random", generator=None):
        B = x.shape[0]
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # (B, C_in, 2H, 2W)
        if self.style_mode == "modulated":
            x = modulated_conv2d(x, self.conv.weight * self.conv.weight_scale, self.affine(w), padding=1)
        else:
            x = self.conv(x)                                                           # (B, C_out, H, W)
        noise = self.noise(B, noise_mode, generator, x)
        if noise is not None:
            x = x + self.noise_strength.reshape(1, -1, 1, 1) * noise                  # B * noise, per channel
        x = F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), 0.2)
        if self.style_mode == "modulated":
            return x * math.sqrt(2.0)
        style = self.affine(w)                                                         # (B, 2 C_out)
        return adain(x, 1.0 + style[:, :self.out_channels], style[:, self.out_channels:])


class ToRGB(nn.Module):
    """Features to image channels with a 1x1 convolution (linear output).

    "modulated": modulated (by A(w)) but not demodulated, as in StyleGAN2;
    "adain": a plain equalized 1x1 conv, as in StyleGAN (the last AdaIN already
    carries the style).  x (B, C, H, W), w (B, w_dim) -> (B, C_img, H, W).
    """

    def __init__(self, in_channels, out_channels, w_dim, style_mode="modulated", generator=None):
        super().__init__()
        self.styled = style_mode == "modulated"
        if self.styled:
            self.affine = nn.EqualizedLinear(w_dim, in_channels, gain=1.0, bias_init=1.0, generator=generator)
        self.conv = nn.EqualizedConv2d(in_channels, out_channels, 1, bias=not self.styled, gain=1.0,
                                       generator=generator)
        if self.styled:
            self.bias = nn.Parameter(backend.get_array_module("cpu").zeros(out_channels,
                                                                            dtype=backend.get_default_dtype()))

    def forward(self, x, w=None):
        if not self.styled:
            return self.conv(x)
        y = modulated_conv2d(x, self.conv.weight * self.conv.weight_scale, self.affine(w), demodulate=False)
        return y + self.bias.reshape(1, -1, 1, 1)


class SynthesisNetwork(nn.Module):
    """g: per-layer styles -> image, from a learned 4x4 constant (Karras et al. 2019 §2).

        const (1, c_4, 4, 4)
        4x4:   SynthesisLayer(c_4 -> c_4)                               img  = ToRGB_4
        8x8:   SynthesisLayer(c_4 -> c_8, up), SynthesisLayer(c_8 -> c_8)   img  = up(img) + ToRGB_8
        ...    (one pair per doubling, widths ``channels`` = (c_4, c_8, c_16, c_32))

    The "skip" generator of StyleGAN2 (Karras et al. 2020, §4.1): every
    resolution adds its own ToRGB output to the x2 (bilinear) upsampled image
    drawn so far, so the coarse layers draw the coarse image directly.  (With
    a single ToRGB at 32 x 32 only, our small generator learned mostly closed
    loops: 0s and 8s, README.)
    Styles: layer i reads ws[:, i]; a styled ToRGB after layer i reads
    ws[:, i + 1], the index of the next resolution's first layer (as in the
    authors' code), so ``num_ws`` = number of layers + 1 in "modulated" mode
    (8 for 32 x 32) and = number of layers in "adain" mode (plain ToRGBs).
    The summed image goes through tanh (``output="tanh"``, the default here) or
    is returned as it is (``"linear"``, the authors' choice for photographs).
    ws (B, num_ws, w_dim) -> images (B, C_img, R, R), R = 4 * 2^(len(channels) - 1).
    """

    def __init__(self, w_dim, channels=(64, 64, 32, 16), img_channels=1, style_mode="modulated", output="tanh",
                 generator=None):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"SynthesisNetwork: output must be one of {OUTPUTS}, got {output!r}")
        self.output = output
        channels = [int(c) for c in channels]
        self.w_dim, self.resolution = int(w_dim), 4 * 2 ** (len(channels) - 1)
        gen = generator if generator is not None else backend.default_generator("cpu")
        self.const = nn.Parameter(backend.to_numpy(gen.normal((1, channels[0], 4, 4),
                                                              dtype=backend.get_default_dtype())))
        layers = [SynthesisLayer(channels[0], channels[0], w_dim, 4, style_mode, generator=generator)]
        to_rgbs = [ToRGB(channels[0], img_channels, w_dim, style_mode, generator=generator)]
        self.rgb_after = [0]                                    # index of the layer each ToRGB follows
        for level in range(1, len(channels)):
            res = 4 * 2 ** level
            layers.append(SynthesisLayer(channels[level - 1], channels[level], w_dim, res, style_mode, up=True,
                                         generator=generator))
            layers.append(SynthesisLayer(channels[level], channels[level], w_dim, res, style_mode,
                                         generator=generator))
            to_rgbs.append(ToRGB(channels[level], img_channels, w_dim, style_mode, generator=generator))
            self.rgb_after.append(len(layers) - 1)
        self.layers = nn.ModuleList(layers)
        self.to_rgbs = nn.ModuleList(to_rgbs)
        self.num_ws = len(layers) + (1 if to_rgbs[0].styled else 0)

    def forward(self, ws, noise_mode="random", generator=None):
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"SynthesisNetwork: ws must be (B, {self.num_ws}, {self.w_dim}), got {ws.shape}")
        B = ws.shape[0]
        x = F.broadcast_to(self.const, (B,) + self.const.shape[1:])                   # (B, c_4, 4, 4)
        img = None
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], noise_mode, generator)                              # (B, c_r, r, r)
            if i in self.rgb_after:
                to_rgb = self.to_rgbs[self.rgb_after.index(i)]
                y = to_rgb(x, ws[:, i + 1]) if to_rgb.styled else to_rgb(x)            # (B, C_img, r, r)
                img = y if img is None else F.interpolate(img, scale_factor=2, mode="bilinear",
                                                          align_corners=False) + y    # (B, C_img, r, r)
        return F.tanh(img) if self.output == "tanh" else img                          # (B, C_img, R, R)


class StyleGANGenerator(nn.Module):
    """G(z) = g(f(z)): the mapping network and the synthesis network.

    ``forward(z, psi, noise_mode, generator)``: w = f(z), truncated towards
    w_avg with ``psi``, fed to every layer.  ``styles(w)`` repeats one w for all
    layers.  z (B, z_dim) -> images (B, C_img, R, R).
    """

    def __init__(self, config, img_channels=1, generator=None):
        super().__init__()
        self.z_dim = int(config.z_dim)
        self.mapping = MappingNetwork(config.z_dim, config.w_dim, config.mapping_layers, config.mapping_lr_mul,
                                      config.w_avg_beta, generator=generator)
        self.synthesis = SynthesisNetwork(config.w_dim, tuple(config.channels), img_channels, config.style_mode,
                                          config.output, generator=generator)
        self.num_ws = self.synthesis.num_ws

    def styles(self, w):
        """w (B, w_dim) -> ws (B, num_ws, w_dim), the same style for every layer."""
        return mix_styles(w, w, self.num_ws, self.num_ws)

    def forward(self, z, psi=1.0, noise_mode="random", generator=None):
        return self.synthesis(self.styles(self.mapping(z, psi)), noise_mode, generator)


# ----------------------------------------------------------------------------
# 3. the discriminator
# ----------------------------------------------------------------------------

class DiscriminatorBlock(nn.Module):
    """Residual block of the StyleGAN2 discriminator, halving the resolution.

        main = LReLU(conv3x3 stride 2 (LReLU(conv3x3(x))))      (C_in -> C_in -> C_out)
        skip = conv1x1(avg_pool2d(x, 2))                          (no bias, linear)
        y    = (main + skip) / sqrt(2)                            (keeps the variance)
    x (B, C_in, H, W) -> (B, C_out, H/2, W/2).  (StyleGAN2 blurs before the
    strided conv; a stride-2 3x3 conv on these small images does without.)
    """

    def __init__(self, in_channels, out_channels, generator=None):
        super().__init__()
        self.conv0 = nn.EqualizedConv2d(in_channels, in_channels, 3, padding=1, generator=generator)
        self.conv1 = nn.EqualizedConv2d(in_channels, out_channels, 3, stride=2, padding=1, generator=generator)
        self.skip = nn.EqualizedConv2d(in_channels, out_channels, 1, bias=False, gain=1.0, generator=generator)

    def forward(self, x):
        h = F.leaky_relu(self.conv0(x), 0.2)                                           # (B, C_in, H, W)
        h = F.leaky_relu(self.conv1(h), 0.2)                                           # (B, C_out, H/2, W/2)
        return (h + self.skip(F.avg_pool2d(x, 2))) * (1.0 / math.sqrt(2.0))


class StyleGANDiscriminator(nn.Module):
    """D(x) as a logit: fromRGB, residual blocks down to 4x4, minibatch stddev, a linear head.

        fromRGB 1x1 (C_img -> c_R), LReLU
        DiscriminatorBlock (c_R -> c_{R/2}) ... down to 4x4 (widths mirror the generator's)
        MinibatchStdDev (+1 channel), conv3x3 (c_4 + 1 -> c_4), LReLU
        flatten -> EqualizedLinear(16 c_4 -> c_4), LReLU -> EqualizedLinear(c_4 -> 1)
    x (B, C_img, R, R) -> (B, 1).  Every op here has a differentiable backward, as
    R1 needs (the gradient of grad_x D with respect to D's weights).
    """

    def __init__(self, channels=(64, 64, 32, 16), img_channels=1, mbstd_group=4, generator=None):
        super().__init__()
        channels = [int(c) for c in channels]
        self.resolution = 4 * 2 ** (len(channels) - 1)
        self.from_rgb = nn.EqualizedConv2d(img_channels, channels[-1], 1, generator=generator)
        self.blocks = nn.ModuleList([DiscriminatorBlock(channels[i], channels[i - 1], generator=generator)
                                     for i in range(len(channels) - 1, 0, -1)])
        self.mbstd = nn.MinibatchStdDev(mbstd_group)
        self.conv = nn.EqualizedConv2d(channels[0] + 1, channels[0], 3, padding=1, generator=generator)
        self.fc = nn.EqualizedLinear(channels[0] * 16, channels[0], generator=generator)
        self.out = nn.EqualizedLinear(channels[0], 1, gain=1.0, generator=generator)

    def forward(self, x):
        if x.ndim != 4 or x.shape[2] != self.resolution or x.shape[3] != self.resolution:
            raise ValueError(f"StyleGANDiscriminator: expected images (B, C, {self.resolution}, "
                             f"{self.resolution}), got {x.shape}")
        h = F.leaky_relu(self.from_rgb(x), 0.2)                                       # (B, c_R, R, R)
        for block in self.blocks:
            h = block(h)                                                               # ... (B, c_4, 4, 4)
        h = F.leaky_relu(self.conv(self.mbstd(h)), 0.2)                                # (B, c_4, 4, 4)
        h = F.leaky_relu(self.fc(F.flatten(h, 1)), 0.2)                                # (B, c_4)
        return self.out(h)                                                             # (B, 1)


def build_stylegan(config, img_channels=1, generator=None):
    """(G, D) of a ``StyleGANConfig``; initial weights from ``generator``."""
    G = StyleGANGenerator(config, img_channels, generator=generator)
    D = StyleGANDiscriminator(tuple(config.channels), img_channels, config.mbstd_group, generator=generator)
    return G, D


# ----------------------------------------------------------------------------
# 4. the objective: non-saturating logistic loss and R1
# ----------------------------------------------------------------------------
# The logistic losses are the GAN losses of minigen/models/gan.py, written from logits l:
#     L_D = softplus(l_fake) + softplus(-l_real)     (= BCE(l_real, 1) + BCE(l_fake, 0))
#     L_G = softplus(-l_fake)                         (non-saturating, notes §3.2)
# so ``discriminator_loss`` and ``generator_loss(..., "non-saturating")`` are reused.

def r1_penalty(D, x_real):
    """R1 (Mescheder et al. 2018):  R1 = E_{x ~ p_data} || grad_x D(x) ||^2,  and D's logits on x.

    The gradient with respect to the images is taken with ``create_graph=True``,
    so the penalty itself can be differentiated with respect to D's weights (a
    second-order derivative).  x_real (B, C, H, W) -> (scalar R1, logits (B, 1)).
    """
    x = x_real.detach().requires_grad_()
    logits = D(x)
    (g,) = grad(logits.sum(), [x], create_graph=True)                                 # (B, C, H, W)
    return (g * g).sum(dim=(1, 2, 3)).mean(), logits


# ----------------------------------------------------------------------------
# 5. looking at the style space: the pictures of the notes' claims
# ----------------------------------------------------------------------------
# Each returns images in the generator's range ([-1, 1], (n, C, R, R)) without a
# graph; sample with the EMA weights swapped in (``ema.average_parameters()``).

def style_mixing_grid(G, z_coarse, z_fine, crossover, psi=1.0, noise_mode="const"):
    """Karras et al. 2019, Figure 3: coarse styles from one set of sources, fine styles from another.

    Returns ((n_fine + 1) * (n_coarse + 1), C, R, R) in row-major order for a
    grid with n_coarse + 1 columns: the top row shows the coarse sources
    G(z_coarse[j]) (after a blank corner), the left column the fine sources
    G(z_fine[i]), and cell (i, j) the image whose layers < ``crossover`` take
    w(z_coarse[j]) and layers >= ``crossover`` take w(z_fine[i]).
    z_coarse (n_coarse, z_dim), z_fine (n_fine, z_dim).
    """
    with no_grad():
        wa, wb = G.mapping(z_coarse, psi), G.mapping(z_fine, psi)                  # (na, w_dim), (nb, w_dim)
        na, nb, D = wa.shape[0], wb.shape[0], wa.shape[1]
        top = G.synthesis(G.styles(wa), noise_mode)                                 # (na, C, R, R)
        left = G.synthesis(G.styles(wb), noise_mode)                                # (nb, C, R, R)
        w1 = F.broadcast_to(wa.reshape(1, na, D), (nb, na, D)).reshape(nb * na, D)  # coarse: column j
        w2 = F.broadcast_to(wb.reshape(nb, 1, D), (nb, na, D)).reshape(nb * na, D)  # fine: row i
        cells = G.synthesis(mix_styles(w1, w2, crossover, G.num_ws), noise_mode)    # (nb * na, C, R, R)
    top, left, cells = top.numpy(), left.numpy(), cells.numpy()
    blank = np.full_like(top[:1], -1.0)                                             # background
    rows = [np.concatenate([blank, top])]
    rows += [np.concatenate([left[i:i + 1], cells[i * na:(i + 1) * na]]) for i in range(nb)]
    return np.concatenate(rows)


def truncation_sweep(G, z, psis=(0.0, 0.5, 0.7, 1.0), noise_mode="const"):
    """G(z) with w truncated by each psi, for the same z's: (len(psis) * n, C, R, R), one row per psi.

    psi = 0 draws the average style w_avg (the same image in every column);
    growing psi moves each w back out to its own style.
    """
    with no_grad():
        return np.concatenate([G(z, psi=psi, noise_mode=noise_mode).numpy() for psi in psis])


def noise_variation(G, w, n, generator):
    """One style w (1, w_dim) rendered with n fresh noise draws: (images (n, C, R, R), per-pixel std (C, R, R)).

    Karras et al. 2019, Figure 4: the noise changes only stochastic detail, so
    the std is concentrated on the strokes' edges, not on the digit's shape.
    """
    with no_grad():
        ws = G.styles(F.broadcast_to(w, (n, w.shape[1])))
        images = G.synthesis(ws, "random", generator).numpy()
    return images, images.std(axis=0)


# ----------------------------------------------------------------------------
# 6. the training step
# ----------------------------------------------------------------------------

def sample_styles(G, n, generator, mixing_prob=0.0):
    """Per-layer styles for n fakes, with style-mixing regularization (Karras et al. 2019 §3.1).

    w1 = f(z1); with probability ``mixing_prob`` (once per minibatch) a second
    w2 = f(z2) takes over from a crossover layer k ~ U{1, ..., num_ws - 1}:
    ws = mix_styles(w1, w2, k).  Returns (ws (n, num_ws, w_dim), w1, k) with
    k = num_ws when the minibatch is not mixed.  Every draw comes from ``generator``.
    """
    z1 = Tensor(generator.normal((n, G.z_dim)))
    u = float(generator.uniform((1,), device="cpu")[0])                              # host draws: nothing to read back
    k = int(generator.host_integers(1, G.num_ws, shape=(1,))[0]) if G.num_ws > 1 else G.num_ws
    w1 = G.mapping(z1)
    if u >= mixing_prob or G.num_ws < 2:
        return G.styles(w1), w1, G.num_ws
    w2 = G.mapping(Tensor(generator.normal((n, G.z_dim))))
    return mix_styles(w1, w2, k, G.num_ws), w1, k


def discriminator_step(G, D, opt_d, x_real, generator, mixing_prob=0.9, r1_gamma=0.0, lazy_r1=False,
                       r1_every=16):
    """One D step: descend the logistic loss on a real minibatch and as many fakes, plus R1 if due.

        L_D = mean softplus(D(G(z))) + mean softplus(-D(x)) [+ (gamma / 2) * r1_every * R1]

    Lazy regularization (Karras et al. 2020 §3.1): R1 is evaluated only when
    ``lazy_r1`` (every ``r1_every``-th step), weighted by r1_every so that its
    average strength is unchanged.  The fakes carry no graph.
    Returns a ``backend.StepLogs`` {"loss_d", "d_real", "d_fake"} [+ "r1"] (device scalars,
    read in one transfer when first looked at).
    """
    with no_grad():
        ws, _, _ = sample_styles(G, len(x_real), generator, mixing_prob)
        x_fake = G.synthesis(ws, "random", generator)
    opt_d.zero_grad()
    regularize = lazy_r1 and r1_gamma > 0
    if regularize:
        r1, real_logits = r1_penalty(D, x_real)                                      # one D pass for both terms
    else:
        real_logits = D(x_real)
    fake_logits = D(x_fake)
    loss_d = discriminator_loss(real_logits, fake_logits)
    total = loss_d + r1 * (0.5 * r1_gamma * r1_every) if regularize else loss_d
    total.backward()
    opt_d.step()
    logs = {"loss_d": loss_d, "d_real": mean_probability_on_device(real_logits),
            "d_fake": mean_probability_on_device(fake_logits)}
    if regularize:
        logs["r1"] = r1
    return backend.StepLogs(logs)


def generator_step(G, D, opt_g, batch_size, generator, mixing_prob=0.9):
    """One G step: descend the non-saturating loss mean softplus(-D(G(z))) through a frozen D.

    The minibatch's styles are mixed with probability ``mixing_prob``; afterwards
    w_avg moves towards the mean of this minibatch's w (for truncation).
    Returns a ``backend.StepLogs`` {"loss_g", "d_fake_g"}.
    """
    opt_g.zero_grad()
    ws, w, _ = sample_styles(G, batch_size, generator, mixing_prob)
    with frozen(D):
        fake_logits = D(G.synthesis(ws, "random", generator))
        loss_g = generator_loss(fake_logits, "non-saturating")
        loss_g.backward()
    opt_g.step()
    G.mapping.update_w_avg(w)
    return backend.StepLogs({"loss_g": loss_g, "d_fake_g": mean_probability_on_device(fake_logits)})


def train_step(G, D, opt_g, opt_d, x_real, generator, step, config):
    """One StyleGAN iteration: a discriminator step (with R1 when ``step`` % r1_every == 0), then a generator step.

    x_real (B, C, R, R) in [-1, 1]; ``step`` counts finished iterations; ``config``
    a ``StyleGANConfig``.  Returns one ``StepLogs`` of both steps and "loss" = L_D
    (log 4 ~ 1.386 when D cannot tell real from fake).
    """
    logs = discriminator_step(G, D, opt_d, x_real, generator, config.style_mixing_prob, config.r1_gamma,
                              lazy_r1=step % config.r1_every == 0, r1_every=config.r1_every).raw()
    logs.update(generator_step(G, D, opt_g, len(x_real), generator, config.style_mixing_prob).raw())
    return backend.StepLogs({**logs, "loss": logs["loss_d"]})

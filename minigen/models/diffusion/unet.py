"""The U-Net denoiser of a diffusion model, and the sinusoidal embedding of the step t.

Notes §5.6.  A denoiser maps a noisy image x_t and its step t to a prediction of
the same size (the noise eps, the clean x0 or the velocity v, §5.3):

    eps_theta(x_t, t, y) -> same shape as x_t,      x_t (B, C, H, W), t (B,), y (B,) or None.

Because input and output have the same size, the network of choice is a U-Net
(Ronneberger et al. 2015): an encoder halves the resolution level by level, a
decoder doubles it back, and skip connections hand each decoder level the
encoder's features of the same resolution, so fine detail need not squeeze
through the bottleneck.  Ho et al. (2020) added to it what a denoiser needs:

* the step t as a sinusoidal embedding (as the positions of a transformer)
  passed through a small MLP, added to every residual block's features;
* residual blocks with GroupNorm and SiLU (batch statistics would mix the
  different noise levels of a mini-batch);
* self-attention at the lowest resolution, where every pixel can see the
  whole image at little cost (Dhariwal & Nichol 2021 use more of it).

Class-conditional models (notes §4) add a learned label embedding to the time
embedding.  The table has one extra row, index ``num_classes``, the "no label"
token: training with labels dropped to it at random gives one network that is
both conditional and unconditional, which classifier-free guidance combines at
sampling time (Ho & Salimans 2022):

    eps = eps(x, t, null) + s * (eps(x, t, y) - eps(x, t, null)).

The default ``UNet()`` is exactly the network of benchmark W3
(defined in benchmarks/README.md), 641,249 parameters for 1x28x28 digits:

    temb = Linear(128,128) - SiLU - Linear(128,128) of timestep_embedding(t, 128)
    h1 = Res(32,32)(Conv3x3(1,32)(x))          32@28   (skip)
    h2 = Res(32,64)(Down(h1))                  64@14   (skip)
    h3 = Res(64,64)(Down(h2))                  64@7    (skip)
    u3 = Res(128,64)(cat[Attn(h3), h3])        64@7
    u2 = Res(128,64)(cat[Up(u3), h2])          64@14
    u1 = Res(96,32)(cat[Up(u2), h1])           32@28
    out = Conv3x3(32,1)(SiLU(GN(u1)))          1@28

and its ``state_dict`` keys are the ones of the benchmark's PyTorch twin.

References: Ronneberger et al., U-Net (2015); Ho et al., Denoising Diffusion
Probabilistic Models (2020); Dhariwal & Nichol, Diffusion Models Beat GANs on
Image Synthesis (2021); Ho & Salimans, Classifier-Free Diffusion Guidance (2022);
Vaswani et al., Attention Is All You Need (2017) for the sinusoidal embedding.
"""
from __future__ import annotations

import math

import numpy as np

from ... import backend, nn
from ... import functional as F
from ...autograd import Tensor
from ...creation import full

__all__ = ["timestep_embedding", "ResBlock", "AttnBlock", "Down", "Up", "UNet"]


# ----------------------------------------------------------------------------
# the step t as a vector
# ----------------------------------------------------------------------------

def timestep_embedding(t, dim: int, dtype=None) -> Tensor:
    """[sin(t f_0) .. sin(t f_{h-1}), cos(t f_0) .. cos(t f_{h-1})],  f_i = exp(-ln(10000) i / h),  h = dim/2.

    t: Tensor or array (B,) of steps (integers, or floats for continuous time)
    -> a constant Tensor (B, dim) on t's device, in ``dtype`` (default: the
    backend's default dtype).  The frequencies run geometrically from 1 (one
    radian per step) down to about 1/10000, so nearby steps get nearby vectors and
    every step in 0..999 a distinct one.  Computed in float64, then cast.
    """
    array = t.data if isinstance(t, Tensor) else t
    if not hasattr(array, "ndim") or array.ndim != 1:
        raise ValueError(f"timestep_embedding: t must be a 1-D Tensor or array (B,), "
                         f"got {getattr(array, 'shape', type(array).__name__)}")
    if dim < 2 or dim % 2:
        raise ValueError(f"timestep_embedding: dim must be a positive even number, got {dim}")
    xp = backend.xp_of(array)
    half = dim // 2
    freqs = xp.exp(xp.arange(half, dtype=np.float64) * (-math.log(10000.0) / half))    # (half,)
    # float64 angles: t * f_i reaches 1000 rad, where float32 rounding would move sin/cos by ~1e-4
    angles = array.astype(np.float64)[:, None] * freqs[None, :]                          # (B, half)
    emb = xp.concatenate([xp.sin(angles), xp.cos(angles)], axis=1)                       # (B, dim)
    return Tensor(emb.astype(np.dtype(dtype) if dtype is not None else backend.get_default_dtype()))


def _check_inputs(who, x, t, y, in_channels, num_classes):
    """Refuse badly shaped x / t / y with a message naming ``who``; returns the batch size B."""
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{who}: x must be a Tensor (B, {in_channels}, H, W), "
                         f"got {getattr(x, 'shape', type(x).__name__)}")
    B = x.shape[0]
    if getattr(t, "shape", None) != (B,):
        raise ValueError(f"{who}: t must have shape (B,) = ({B},) to match x, "
                         f"got {getattr(t, 'shape', type(t).__name__)}")
    if y is None:
        return B
    if num_classes is None:
        raise ValueError(f"{who}: labels y were given to an unconditional network (built with num_classes=None)")
    if getattr(y, "shape", None) != (B,):
        raise ValueError(f"{who}: y must have shape (B,) = ({B},) to match x, "
                         f"got {getattr(y, 'shape', type(y).__name__)}")
    labels = y.data if isinstance(y, Tensor) else y
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{who}: y must hold integer labels, got dtype {labels.dtype}")
    # checked where reading the values is free (host arrays); device labels were checked on the host
    if B and backend.is_host(labels) and (int(labels.min()) < 0 or int(labels.max()) > num_classes):
        raise ValueError(f"{who}: labels must lie in 0..{num_classes} ({num_classes} = no label), "
                         f"got values in {int(labels.min())}..{int(labels.max())}")
    return B


def _labels_or_null(y, B, num_classes, device):
    """y, or the null label ``num_classes`` for every image when y is None (unconditional)."""
    return y if y is not None else full((B,), num_classes, dtype=np.int64, device=device)


# ----------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------

class ResBlock(nn.Module):
    """A residual block conditioned on the time embedding (Ho et al. 2020).

        h   = Conv3x3(SiLU(GN(x))) + Linear(SiLU(temb))[:, :, None, None]
        h   = Conv3x3(Dropout(SiLU(GN(h))))
        out = h + skip(x),      skip = Conv1x1 when in_channels != out_channels, else identity

    x (B, in_channels, H, W), temb (B, time_dim) -> (B, out_channels, H, W).
    The time term is one bias per channel, the same at every pixel.  Dropout
    (off at ``dropout=0``) draws its masks from the device's default generator.
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, groups: int = 8,
                 dropout: float = 0.0, generator=None):
        super().__init__()
        kw = dict(generator=generator)
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, **kw)
        self.time_proj = nn.Linear(time_dim, out_channels, **kw)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, **kw)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))                                # (B, cout, H, W)
        h = h + self.time_proj(F.silu(temb)).reshape(h.shape[0], -1, 1, 1)   # + (B, cout, 1, 1)
        h = F.silu(self.norm2(h))
        if self.dropout is not None:
            h = self.dropout(h)
        h = self.conv2(h)
        return h + (self.skip(x) if self.skip is not None else x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W pixels of a feature map, with a residual.

        q, k, v = split(Conv1x1(GN(x)), C channels each)          each (B, C, HW)
        a       = v softmax(q^T k / sqrt(C))^T                     (B, C, HW): pixel j's output
                                                                    averages v over all pixels i
        out     = x + Conv1x1(a)

    x (B, C, H, W) -> (B, C, H, W).  The HW x HW weights cost (HW)^2, which is
    why the U-Net places it at its lowest resolution only (7x7 = 49 pixels by default).
    The product runs through ``F.scaled_dot_product_attention`` on pixels as tokens.
    """

    def __init__(self, channels: int, groups: int = 8, generator=None):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, generator=generator)
        self.proj = nn.Conv2d(channels, channels, 1, generator=generator)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3 * C, H * W)
        q, k, v = (F.transpose(part, 1, 2) for part in F.split(qkv, C, dim=1))   # 3 x (B, HW, C)
        a = F.scaled_dot_product_attention(q, k, v)                              # (B, HW, C), scale 1/sqrt(C)
        return x + self.proj(F.transpose(a, 1, 2).reshape(B, C, H, W))


class Down(nn.Conv2d):
    """Halve the resolution: Conv3x3 with stride 2, padding 1.  (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int, generator=None):
        super().__init__(channels, channels, 3, stride=2, padding=1, generator=generator)


class Up(nn.Conv2d):
    """Double the resolution: nearest-neighbour x2, then Conv3x3.  (B, C, H, W) -> (B, C, 2H, 2W).

    (Upsampling then convolving avoids the checkerboard pattern a stride-2
    transposed convolution tends to leave; Odena et al. 2016.)
    """

    def __init__(self, channels: int, generator=None):
        super().__init__(channels, channels, 3, padding=1, generator=generator)

    def forward(self, x):
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


# ----------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------

class UNet(nn.Module):
    """eps_theta(x_t, t, y): a U-Net denoiser (notes §5.6; Ho et al. 2020).

    Levels.  ``channel_mults`` gives one level per entry; level j (0-based) works at
    resolution H / 2^j with c_j = base_channels * channel_mults[j] channels:

        encoder  h = Conv3x3(x) (base_channels);  for j = 0..L-1:  [Down]  h_j = Res(h)   (skip h_j)
        middle   u = Attn(h_{L-1})  (or u = h_{L-1} with attention=False)
        decoder  for j = 0..L-1, i = L-1-j:  [Up]  u = Res(cat[u, h_i])
        output   Conv3x3(SiLU(GN(u)))  -> in_channels

    The encoder levels are ``downs[j]`` (``.down`` from j = 1 on, ``.res``), the decoder
    levels ``ups[j]`` (``.up`` from j = 1 on, ``.res``), created in the order of
    benchmark W3, whose twin uses the same state_dict keys.

    Conditioning.  temb = Linear - SiLU - Linear of ``timestep_embedding(t, time_dim)``;
    with ``num_classes`` it gains ``label_emb(y)``, an Embedding with num_classes + 1
    rows whose last row (index num_classes) is the null label of classifier-free
    guidance; ``y=None`` gives every image the null label.

    Shapes: x (B, in_channels, H, W) with H and W divisible by 2^(L-1);
    t (B,) integer steps; y (B,) integer labels in 0..num_classes, or None
    -> (B, in_channels, H, W).  ``groups`` is the GroupNorm group count (it must
    divide every level's channels); ``generator`` draws the initial weights.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults=(1, 2, 2), time_dim: int = 128,
                 groups: int = 8, attention: bool = True, num_classes=None, dropout: float = 0.0, generator=None):
        super().__init__()
        chans = [base_channels * int(m) for m in channel_mults]      # c_1 .. c_L
        if not chans or min(chans) < 1 or base_channels < 1:
            raise ValueError(f"UNet: need base_channels >= 1 and at least one positive channel multiplier, "
                             f"got base_channels={base_channels}, channel_mults={tuple(channel_mults)}")
        bad = [c for c in [base_channels] + chans if c % groups]
        if bad:
            raise ValueError(f"UNet: groups ({groups}) must divide every level's channel count, "
                             f"got channels {[base_channels] + chans}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"UNet: num_classes must be a positive int or None, got {num_classes}")
        self.in_channels, self.time_dim, self.num_classes = in_channels, time_dim, num_classes
        self.levels = L = len(chans)
        kw = dict(generator=generator)
        res = dict(time_dim=time_dim, groups=groups, dropout=dropout, **kw)

        # Creation order = the W3 benchmark's, so one generator gives both the same weights.
        self.time_fc1 = nn.Linear(time_dim, time_dim, **kw)
        self.time_fc2 = nn.Linear(time_dim, time_dim, **kw)
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + 1, time_dim, **kw)   # row num_classes = no label
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1, **kw)
        # encoder: downs[j] works at resolution H / 2^j; from level 1 on it first halves the image
        self.downs = nn.ModuleList()
        c_prev = base_channels
        for j, c in enumerate(chans):
            level = nn.Module()
            if j > 0:
                level.down = Down(c_prev, **kw)
            level.res = ResBlock(c_prev, c, **res)
            self.downs.append(level)
            c_prev = c
        self.attn = AttnBlock(chans[-1], groups, **kw) if attention else None
        # decoder: ups[j] works at resolution H / 2^(L-1-j); from level 1 on it first doubles the image,
        # and each level's input is the skip of the encoder level at the same resolution concatenated on
        self.ups = nn.ModuleList()
        for j in range(L):
            i = L - 1 - j                                                    # the encoder level it mirrors
            level = nn.Module()
            if j == 0:
                level.res = ResBlock(2 * chans[-1], chans[-1], **res)
            else:
                level.up = Up(chans[i + 1], **kw)
                level.res = ResBlock(chans[i + 1] + chans[i], chans[i], **res)
            self.ups.append(level)
        self.norm_out = nn.GroupNorm(groups, chans[0])
        self.conv_out = nn.Conv2d(chans[0], in_channels, 3, padding=1, **kw)

    def forward(self, x, t, y=None):
        B = _check_inputs("UNet", x, t, y, self.in_channels, self.num_classes)
        factor = 2 ** (self.levels - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"UNet: with {self.levels} levels, H and W must be divisible by {factor}, "
                             f"got {x.shape[2]}x{x.shape[3]}")
        temb = self.time_fc2(F.silu(self.time_fc1(timestep_embedding(t, self.time_dim, x.dtype))))  # (B, time_dim)
        if self.num_classes is not None:
            temb = temb + self.label_emb(_labels_or_null(y, B, self.num_classes, x.device))

        h, skips = self.conv_in(x), []                                        # (B, base, H, W)
        for j, level in enumerate(self.downs):
            if j > 0:
                h = level.down(h)                                             # (B, c_{j-1}, H/2^j, W/2^j)
            h = level.res(h, temb)                                            # (B, c_j, H/2^j, W/2^j)
            skips.append(h)
        u = self.attn(h) if self.attn is not None else h                      # (B, c_{L-1}, ..)
        for j, level in enumerate(self.ups):
            if j > 0:
                u = level.up(u)                                               # doubled: the skip's resolution
            u = level.res(F.cat([u, skips[-1 - j]], dim=1), temb)             # (B, c_i, ..), i = L-1-j
        return self.conv_out(F.silu(self.norm_out(u)))                       # (B, in_channels, H, W)

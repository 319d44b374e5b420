"""The Diffusion Transformer (DiT): a ViT denoiser with adaLN-Zero conditioning.

Notes §5.6.  Instead of a U-Net, cut the image into p x p patches, treat each
patch as a token, and run a transformer over the sequence (Peebles & Xie 2023):

    patchify     x (B, C, H, W) -> tokens (B, N, D),  N = (H/p)(W/p),  one Linear of each patch's C p^2 pixels
    + pos        a fixed 2-D sin-cos embedding of each patch's (row, column)     (N, D)
    condition    c = MLP(timestep_embedding(t, D)) + label_emb(y)                (B, D)
    blocks       depth x DiTBlock(tokens, c)                                     (B, N, D)
    final        adaLN (shift, scale) of a LayerNorm, Linear D -> p^2 C          (B, N, p^2 C)
    unpatchify   tokens -> (B, C, H, W)

Every token attends to every other one from the first block on, so the model
sees global structure directly; the price is N^2 attention weights per head,
which is why DiT works on patches (and, in latent diffusion, on a VAE's small
latent grid) rather than on pixels.

adaLN-Zero.  The step and the label enter every block through adaptive layer
norm: a Linear of SiLU(c) produces per-channel shift, scale and gate vectors,

    (shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(c)),
    modulate(h, shift, scale) = h * (1 + scale) + shift,
    x = x + gate1 * Attn(modulate(LN(x), shift1, scale1)),
    x = x + gate2 * MLP(modulate(LN(x), shift2, scale2)),

with LayerNorms that have no weights of their own.  That Linear starts at zero,
so each gate is 0 and each block is the identity at initialisation; the final
layers start at zero too, so the untrained network outputs 0 (a valid
"predict no noise" guess).  Peebles & Xie found this zero start trains better
than cross-attention or in-context tokens for the conditioning.

The label embedding has num_classes + 1 rows; row ``num_classes`` is the null
label of classifier-free guidance (Ho & Salimans 2022), as in the U-Net.

References: Peebles & Xie, Scalable Diffusion Models with Transformers (2023);
Dosovitskiy et al., An Image is Worth 16x16 Words (2021) for patches as tokens;
Vaswani et al., Attention Is All You Need (2017); Ho et al. (2020);
Ho & Salimans, Classifier-Free Diffusion Guidance (2022).
"""
from __future__ import annotations

import math

import numpy as np

from ... import backend, nn
from ... import functional as F
from ...autograd import Tensor
from .unet import _check_inputs, _labels_or_null, timestep_embedding

__all__ = ["sincos_pos_embed_2d", "modulate", "DiTBlock", "FinalLayer", "DiT"]


def sincos_pos_embed_2d(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
    """Fixed 2-D position embedding: [emb(row, dim/2), emb(col, dim/2)] for each patch, row-major.

    emb(pos, d) is ``timestep_embedding`` of the coordinate (d/2 frequencies,
    [sin, cos]); the first half of each vector encodes the patch's row, the
    second half its column.  -> float64 array (grid_h * grid_w, dim); token
    n = row * grid_w + col.  ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"sincos_pos_embed_2d: dim must be divisible by 4, got {dim}")
    rows = np.repeat(np.arange(grid_h), grid_w)                                   # (N,) 0 0 .. 1 1 ..
    cols = np.tile(np.arange(grid_w), grid_h)                                     # (N,) 0 1 .. 0 1 ..
    return np.concatenate([timestep_embedding(rows, dim // 2, np.float64).data,
                           timestep_embedding(cols, dim // 2, np.float64).data], axis=1)   # (N, dim)


def modulate(h, shift, scale):
    """h * (1 + scale) + shift, one shift/scale per sample and channel.  h (B, N, D), shift, scale (B, D)."""
    B, D = shift.shape
    return h * (1.0 + scale.reshape(B, 1, D)) + shift.reshape(B, 1, D)


def _xavier_linear(layer, generator):
    """Xavier-uniform weight, zero bias: DiT's initialisation of its transformer's Linear layers."""
    nn.init.xavier_uniform_(layer.weight, generator=generator)
    nn.init.zeros_(layer.bias)


class DiTBlock(nn.Module):
    """A pre-LN transformer block with adaLN-Zero conditioning (Peebles & Xie 2023).

        (shift1, scale1, gate1, shift2, scale2, gate2) = adaLN(SiLU(c))     6 x (B, D)
        x = x + gate1 * MHSA(modulate(LN(x), shift1, scale1))
        x = x + gate2 * MLP(modulate(LN(x), shift2, scale2)),    MLP = Linear(D, rD) - GELU_tanh - Linear(rD, D)

    x (B, N, D), c (B, D) -> (B, N, D).  LN has no affine weights (adaLN
    supplies them).  ``adaLN`` starts at zero, so the block starts as the identity.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, generator=None):
        super().__init__()
        kw = dict(generator=generator)
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = nn.MultiheadSelfAttention(dim, heads, **kw)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.fc1 = nn.Linear(dim, hidden, **kw)
        self.fc2 = nn.Linear(hidden, dim, **kw)
        self.adaLN = nn.Linear(dim, 6 * dim, **kw)
        for layer in (self.attn.qkv, self.attn.proj, self.fc1, self.fc2):
            _xavier_linear(layer, generator)
        nn.init.zeros_(self.adaLN.weight)   # adaLN-Zero: every gate starts at 0
        nn.init.zeros_(self.adaLN.bias)

    def forward(self, x, c):
        B, N, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = F.chunk(self.adaLN(F.silu(c)), 6, dim=1)  # 6 x (B, D)
        x = x + gate1.reshape(B, 1, D) * self.attn(modulate(self.norm1(x), shift1, scale1))
        h = self.fc2(F.gelu(self.fc1(modulate(self.norm2(x), shift2, scale2)), approximate="tanh"))
        return x + gate2.reshape(B, 1, D) * h


class FinalLayer(nn.Module):
    """out = Linear(modulate(LN(x), shift, scale)),  (shift, scale) = adaLN(SiLU(c)).

    x (B, N, D), c (B, D) -> (B, N, out_features).  Both Linear layers start at
    zero, so the untrained DiT predicts exactly 0.
    """

    def __init__(self, dim: int, out_features: int, generator=None):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.adaLN = nn.Linear(dim, 2 * dim, generator=generator)
        self.linear = nn.Linear(dim, out_features, generator=generator)
        for layer in (self.adaLN, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, c):
        shift, scale = F.chunk(self.adaLN(F.silu(c)), 2, dim=1)              # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """eps_theta(x_t, t, y): a Diffusion Transformer over p x p patches (notes §5.6; Peebles & Xie 2023).

    Stages and shapes (g = image_size / patch_size, N = g^2 tokens, D = dim):

        x (B, C, H, W) -> patch_embed, a Conv2d with kernel = stride = p -> (B, D, g, g)
          -> (B, N, D) row-major tokens, + pos_embed (N, D)
        c = time_fc2(SiLU(time_fc1(timestep_embedding(t, D)))) [+ label_emb(y)]   (B, D)
        depth x DiTBlock -> FinalLayer -> (B, N, p^2 C) -> unpatchify -> (B, C, H, W)

    Patchify: a convolution whose kernel equals its stride sees each patch once
    and applies the same Linear(C p^2 -> D) to it, i.e. it is "reshape into
    patches + Linear", with its weight already in the (D, C, p, p) layout of a
    kernel.  Unpatchify is the inverse reshape: token (r, s)'s p^2 C outputs,
    read as (C, p, p), fill the pixels of patch (r, s).

    The position embedding is a constant (``sincos_pos_embed_2d``, a
    non-persistent buffer: it moves with the model but is not saved).  Init as
    DiT: Xavier-uniform Linear layers with zero biases in the blocks, N(0, 0.02)
    for the time MLP and the label table, zeros for every adaLN and the output
    layer.  ``generator`` draws the initial weights.

    Shapes: x (B, in_channels, image_size, image_size); t (B,) integer steps;
    y (B,) integer labels in 0..num_classes (num_classes = no label), or None
    -> (B, in_channels, image_size, image_size).
    """

    def __init__(self, image_size: int = 28, in_channels: int = 1, patch_size: int = 4, dim: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, num_classes=None, generator=None):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"DiT: image_size ({image_size}) must be divisible by patch_size ({patch_size})")
        if dim % heads:
            raise ValueError(f"DiT: dim ({dim}) must be divisible by heads ({heads})")
        if dim % 4:
            raise ValueError(f"DiT: dim ({dim}) must be divisible by 4 (the 2-D sin-cos position embedding)")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"DiT: num_classes must be a positive int or None, got {num_classes}")
        self.image_size, self.in_channels, self.patch_size = image_size, in_channels, patch_size
        self.dim, self.num_classes = dim, num_classes
        self.grid = image_size // patch_size
        kw = dict(generator=generator)

        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size, **kw)
        fan_in, fan_out = in_channels * patch_size ** 2, dim    # Xavier of the (D, C p^2) Linear it is
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(self.patch_embed.weight, -bound, bound, generator=generator)
        nn.init.zeros_(self.patch_embed.bias)
        pos = sincos_pos_embed_2d(self.grid, self.grid, dim)[None]                      # (1, N, D)
        self.register_buffer("pos_embed", Tensor(pos.astype(backend.get_default_dtype())), persistent=False)

        self.time_fc1 = nn.Linear(dim, dim, **kw)
        self.time_fc2 = nn.Linear(dim, dim, **kw)
        for layer in (self.time_fc1, self.time_fc2):
            nn.init.normal_(layer.weight, std=0.02, generator=generator)
            nn.init.zeros_(layer.bias)
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + 1, dim, **kw)                # row num_classes = no label
            nn.init.normal_(self.label_emb.weight, std=0.02, generator=generator)
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, mlp_ratio, **kw) for _ in range(depth)])
        self.final = FinalLayer(dim, patch_size ** 2 * in_channels, **kw)

    def patchify(self, x):
        """(B, C, H, W) -> (B, N, D) tokens, row-major over the g x g patches, plus positions."""
        h = self.patch_embed(x)                                               # (B, D, g, g)
        B, D = h.shape[:2]
        return F.transpose(h.reshape(B, D, -1), 1, 2) + self.pos_embed        # (B, N, D)

    def unpatchify(self, tokens):
        """(B, N, p^2 C) -> (B, C, H, W): token (r, s)'s vector, read as (C, p, p), is patch (r, s)."""
        B, g, p, C = tokens.shape[0], self.grid, self.patch_size, self.in_channels
        x = tokens.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5)        # (B, C, r, i, s, j)
        return x.reshape(B, C, g * p, g * p)

    def forward(self, x, t, y=None):
        B = _check_inputs("DiT", x, t, y, self.in_channels, self.num_classes)
        if x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"DiT: built for {self.image_size}x{self.image_size} images, "
                             f"got {x.shape[2]}x{x.shape[3]}")
        c = self.time_fc2(F.silu(self.time_fc1(timestep_embedding(t, self.dim, x.dtype))))   # (B, D)
        if self.num_classes is not None:
            c = c + self.label_emb(_labels_or_null(y, B, self.num_classes, x.device))
        h = self.patchify(x)                                                  # (B, N, D)
        for block in self.blocks:
            h = block(h, c)                                                   # (B, N, D)
        return self.unpatchify(self.final(h, c))                              # (B, C, H, W)

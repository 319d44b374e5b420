"""Multi-head self-attention (Vaswani et al. 2017), as used by transformer blocks and the DiT.

    q, k, v = split(x W_qkv^T + b_qkv)                 one fused Linear, E -> 3E
    head_h  = softmax(q_h k_h^T / sqrt(d)) v_h          per head, d = E / num_heads
    y       = concat(head_1 .. head_H) W_proj^T + b_proj

Naming differs from PyTorch's ``nn.MultiheadAttention``: there the fused input
projection is ``in_proj_weight`` / ``in_proj_bias`` and the output projection
``out_proj.weight`` / ``out_proj.bias``; here they are the two Linear layers
``qkv`` and ``proj`` (so state_dict keys are ``qkv.weight``, ``proj.bias`` ...).
The numbers match: copy ``in_proj_weight`` into ``qkv.weight`` and
``out_proj.weight`` into ``proj.weight``.  The forward returns only the output,
not the attention weights.
"""
from __future__ import annotations

from .. import functional as F
from . import init
from .layers import Linear
from .module import Module

__all__ = ["MultiheadSelfAttention"]


class MultiheadSelfAttention(Module):
    """Self-attention over a sequence of tokens.

    x (B, T, E) with ``batch_first=True`` (else (T, B, E)) -> y of the same shape.
    ``attn_mask`` (T, T) boolean (True = may attend) or additive float, and
    ``is_causal`` are passed to ``F.scaled_dot_product_attention``.  (Careful:
    ``nn.MultiheadAttention`` reads a boolean mask the other way round, True =
    masked out; here it means what it means for the functional.)  ``dropout``
    drops attention weights in training mode, with the generator given at
    construction (or the device default).
    Init as PyTorch's MultiheadAttention: qkv.weight Xavier-uniform, both biases 0.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = True, device=None, dtype=None, generator=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadSelfAttention: embed_dim ({embed_dim}) must be divisible by "
                             f"num_heads ({num_heads})")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim = embed_dim // num_heads
        self.dropout, self.batch_first, self.generator = float(dropout), batch_first, generator
        self.qkv = Linear(embed_dim, 3 * embed_dim, bias=bias, device=device, dtype=dtype, generator=generator)
        self.proj = Linear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype, generator=generator)
        init.xavier_uniform_(self.qkv.weight, generator=generator)
        if bias:
            init.zeros_(self.qkv.bias)
            init.zeros_(self.proj.bias)

    def forward(self, x, attn_mask=None, is_causal: bool = False):
        if x.ndim != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiheadSelfAttention: expected input (B, T, {self.embed_dim}) "
                             f"(batch_first={self.batch_first}), got shape {x.shape}")
        if not self.batch_first:
            x = x.transpose(0, 1)                                 # (T, B, E) -> (B, T, E)
        B, T, E = x.shape
        H, D = self.num_heads, self.head_dim
        q, k, v = F.chunk(self.qkv(x), 3, dim=-1)                 # 3 x (B, T, E)
        q, k, v = [F.reshape(t, (B, T, H, D)).transpose(1, 2) for t in (q, k, v)]  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=is_causal, generator=self.generator)
        y = F.reshape(y.transpose(1, 2), (B, T, E))               # (B, T, H, D) -> (B, T, E)
        y = self.proj(y)
        return y if self.batch_first else y.transpose(0, 1)

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"batch_first={self.batch_first}")

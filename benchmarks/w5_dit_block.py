"""W5: forward+backward of one pre-LN transformer block (the block of a DiT), x (64, 49, 128).

    x = x + Proj(MHSA_4heads(LN(x)))     qkv = Linear(128, 384), head dim 32,
                                         softmax(q k^T / sqrt(32)) v, Proj = Linear(128, 128)
    x = x + Linear(512, 128)(GELU_tanh(Linear(128, 512)(LN(x))))

fwd+bwd with a fixed upstream gradient gy (64, 49, 128): the gradients of
<block(x), gy> for x and every parameter (mg.grad / torch.autograd.grad).
Two variants, each against the same variant in PyTorch:

    "sdpa"      F.scaled_dot_product_attention (PyTorch: its fused kernel)
    "explicit"  softmax(q @ k^T * scale) @ v written out with matmuls

49 tokens of 7x7 patches: the matrices are small, so per-op overhead, the
reshapes between (B, N, C) and (B, heads, N, d), LayerNorm and GELU count.
"""
from __future__ import annotations

import math

import minigen as mg
import minigen.functional as F
from minigen import nn

from .common import Case, Row, rel_err

NAME = "W5"
TITLE = "DiT block fwd+bwd"
DIM, HEADS, TOKENS = 128, 4, 49


class Block(nn.Module):
    """x + Proj(MHSA(LN(x))), then x + MLP(LN(x)) with a tanh-GELU MLP of width 4C."""

    def __init__(self, dim=DIM, heads=HEADS, explicit=False, generator=None):
        super().__init__()
        kw = dict(generator=generator)
        self.heads, self.explicit = heads, explicit
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, **kw)
        self.proj = nn.Linear(dim, dim, **kw)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim, **kw)
        self.fc2 = nn.Linear(4 * dim, dim, **kw)

    def attention(self, x):
        B, N, C = x.shape
        d = C // self.heads
        q, k, v = (F.transpose(t.reshape(B, N, self.heads, d), 1, 2)        # (B, h, N, d)
                   for t in F.split(self.qkv(x), C, dim=-1))
        if self.explicit:
            scores = q @ F.transpose(k, -1, -2) * (1.0 / math.sqrt(d))       # (B, h, N, N)
            a = F.softmax(scores, dim=-1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        return self.proj(F.transpose(a, 1, 2).reshape(B, N, C))              # (B, N, C)

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


def _setup(settings):
    batch = 2 if settings.quick else 64
    g = mg.Generator(settings.seed, "cpu")
    x_host, gy_host = g.normal((batch, TOKENS, DIM)), g.normal((batch, TOKENS, DIM))
    return x_host, gy_host, batch


def _flops(batch, n=TOKENS, c=DIM, heads=HEADS):
    """Matmul FLOPs: the four linear layers and the two attention products; bwd = 2x fwd."""
    fwd = batch * n * (2 * c * 3 * c + 2 * c * c + 2 * 2 * c * 4 * c) + 2 * 2 * batch * heads * n * n * (c // heads)
    return 3 * fwd


def build(settings, twins=None, torch_device=None) -> Case:
    x_host, gy_host, batch = _setup(settings)
    dev = settings.device
    x = mg.tensor(x_host, device=dev, requires_grad=True)
    gy = mg.tensor(gy_host, device=dev)
    engines, rows = {}, []
    for variant, explicit in (("sdpa", False), ("explicit", True)):
        block = Block(explicit=explicit, generator=mg.Generator(settings.seed + 1, "cpu")).to(dev)
        inputs = [x] + list(block.parameters())

        def fwd_bwd(block=block, inputs=inputs):
            return mg.grad(block(x), inputs, grad_outputs=gy)

        engines["minigen-" + variant] = fwd_bwd
        row = Row(variant, "minigen-" + variant, flop=_flops(batch), target=1.0 if variant == "sdpa" else None)
        if twins is not None:
            twin = twins.load_minigen_weights(twins.Block(explicit=explicit), block, torch_device)
            engines["torch-" + variant] = twins.block_call(
                twin, twins.tensor(x_host, torch_device, requires_grad=True), twins.tensor(gy_host, torch_device))
            row.torch = "torch-" + variant
        rows.append(row)
    return Case(engines, rows, info={"batch": batch, "tokens": TOKENS, "dim": DIM})


def check(settings, twins, torch_device):
    """Block output, dx and every parameter gradient against PyTorch, both variants."""
    x_host, gy_host, batch = _setup(settings)
    dev = settings.device
    out = []
    for variant, explicit in (("sdpa", False), ("explicit", True)):
        block = Block(explicit=explicit, generator=mg.Generator(settings.seed + 1, "cpu")).to(dev)
        twin = twins.load_minigen_weights(twins.Block(explicit=explicit), block, torch_device)
        x = mg.tensor(x_host, device=dev, requires_grad=True)
        y = block(x)
        params = list(block.named_parameters())
        grads = mg.grad(y, [x] + [p for _, p in params], grad_outputs=mg.tensor(gy_host, device=dev))
        tx = twins.tensor(x_host, torch_device, requires_grad=True)
        ty = twin(tx)
        tparams = dict(twin.named_parameters())
        tgrads = twins.torch.autograd.grad(ty, [tx] + [tparams[n] for n, _ in params],
                                           twins.tensor(gy_host, torch_device))
        out.append((f"{variant} y", rel_err(y.numpy(), twins.to_numpy(ty)), 1e-5))
        for (name, _), ours, theirs in zip([("x", None)] + params, grads, tgrads):
            out.append((f"{variant} grad {name}", rel_err(ours.numpy(), twins.to_numpy(theirs)), 1e-4))
    return out

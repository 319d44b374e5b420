"""Oracle: the diffusion denoisers against PyTorch with identical weights and inputs.

* a DiT block (adaLN-Zero, with its zero weights moved so nothing is trivial) against a
  PyTorch block written here from Peebles & Xie (2023): output and every gradient;
* the whole DiT: output against the PyTorch blocks plus a PyTorch patchify / unpatchify;
* the default UNet against the PyTorch twin of benchmark W3 (tests/torch_twins.py).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

import minigen as mg  # noqa: E402
from minigen.models.diffusion.dit import DiT  # noqa: E402
from minigen.models.diffusion.unet import UNet  # noqa: E402

pytestmark = pytest.mark.oracle


def _perturb_zero_init(model, seed=1, scale=0.3):
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        if not np.any(p.numpy()):
            p.data = mg.tensor(scale * rng.standard_normal(p.shape), dtype=p.dtype).data


class _TorchAttention(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)


class _TorchDiTBlock(torch.nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.heads = heads
        self.attn = _TorchAttention(dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, dim)
        self.adaLN = torch.nn.Linear(dim, 6 * dim)

    def forward(self, x, c):
        B, N, D = x.shape
        s1, a1, g1, s2, a2, g2 = (v[:, None] for v in self.adaLN(TF.silu(c)).chunk(6, dim=1))
        h = TF.layer_norm(x, (D,), eps=1e-6) * (1 + a1) + s1
        q, k, v = (u.reshape(B, N, self.heads, -1).transpose(1, 2) for u in self.attn.qkv(h).split(D, dim=-1))
        x = x + g1 * self.attn.proj(TF.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))
        h = TF.layer_norm(x, (D,), eps=1e-6) * (1 + a2) + s2
        return x + g2 * self.fc2(TF.gelu(self.fc1(h), approximate="tanh"))


def _copy_into(twin, state):
    ours = {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in state.items()}
    twin.load_state_dict(ours, strict=True)
    return twin


def _small_dit():
    model = DiT(image_size=8, patch_size=2, dim=16, depth=2, heads=4, mlp_ratio=2.0, num_classes=3,
                generator=mg.Generator(0, "cpu"))
    _perturb_zero_init(model)
    return model.to(dtype=np.float64)


def test_dit_block_matches_torch():
    block = _small_dit().blocks[0]
    twin = _copy_into(_TorchDiTBlock(16, 4, 32).double(), block.state_dict())
    rng = np.random.default_rng(0)
    x_np, c_np, gy = rng.standard_normal((3, 16, 16)), rng.standard_normal((3, 16)), rng.standard_normal((3, 16, 16))
    x, c = mg.tensor(x_np, requires_grad=True), mg.tensor(c_np, requires_grad=True)
    out = block(x, c)
    names, params = zip(*block.named_parameters())
    grads = mg.grad(out, [x, c, *params], grad_outputs=mg.tensor(gy))
    tx, tc = torch.tensor(x_np, requires_grad=True), torch.tensor(c_np, requires_grad=True)
    tout = twin(tx, tc)
    tparams = dict(twin.named_parameters())
    tgrads = torch.autograd.grad(tout, [tx, tc] + [tparams[n] for n in names], torch.tensor(gy))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, g, tg in zip(("x", "c") + names, grads, tgrads):
        np.testing.assert_allclose(g.numpy(), tg.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_dit_forward_matches_torch():
    model = _small_dit()
    state = {k: torch.from_numpy(v.numpy()) for k, v in model.state_dict().items()}
    blocks = []
    for i in range(2):
        prefix = f"blocks.{i}."
        blocks.append(_copy_into(_TorchDiTBlock(16, 4, 32).double(),
                                 {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}))
    rng = np.random.default_rng(1)
    x_np, t_np, y_np = rng.standard_normal((2, 1, 8, 8)), np.array([4, 700]), np.array([3, 1])
    out = model(mg.tensor(x_np), mg.tensor(t_np), mg.tensor(y_np)).numpy()

    x, t = torch.tensor(x_np), torch.tensor(t_np, dtype=torch.float64)
    half = 8
    angles = t[:, None] * torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    temb = torch.cat([angles.sin(), angles.cos()], dim=1)
    c = TF.linear(TF.silu(TF.linear(temb, state["time_fc1.weight"], state["time_fc1.bias"])),
                  state["time_fc2.weight"], state["time_fc2.bias"]) + state["label_emb.weight"][torch.tensor(y_np)]
    h = TF.conv2d(x, state["patch_embed.weight"], state["patch_embed.bias"], stride=2)   # (B, D, 4, 4)
    h = h.flatten(2).transpose(1, 2) + torch.from_numpy(model.pos_embed.numpy())
    for block in blocks:
        h = block(h, c)
    shift, scale = TF.linear(TF.silu(c), state["final.adaLN.weight"], state["final.adaLN.bias"]).chunk(2, dim=1)
    h = TF.layer_norm(h, (16,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    h = TF.linear(h, state["final.linear.weight"], state["final.linear.bias"])          # (B, 16, 4)
    want = TF.fold(h.transpose(1, 2), (8, 8), kernel_size=2, stride=2)                  # (B, 1, 8, 8)
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-9, atol=1e-11)


def test_default_unet_matches_the_w3_torch_twin():
    twins = pytest.importorskip("tests.torch_twins")
    model = UNet(generator=mg.Generator(3, "cpu"))
    twin = twins.load_minigen_weights(twins.UNet(), model)
    rng = np.random.default_rng(2)
    x_np, t_np = rng.standard_normal((2, 1, 28, 28)).astype(np.float32), np.array([17, 940])
    x = mg.tensor(x_np, requires_grad=True)
    out = model(x, mg.tensor(t_np))
    (out ** 2).sum().backward()
    tx = torch.tensor(x_np, requires_grad=True)
    tout = twin(tx, torch.tensor(t_np))
    (tout ** 2).sum().backward()
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-3, atol=1e-4)
    tgrads = twins.grads_by_name(twin)
    for name, p in model.named_parameters():
        err = np.linalg.norm(p.grad.numpy() - tgrads[name]) / np.linalg.norm(tgrads[name])
        assert err < 1e-4, name

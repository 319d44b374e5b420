"""Diffusion denoisers: the U-Net and the DiT (notes §5.6).

What is checked:
* ``timestep_embedding`` and the 2-D sin-cos position table against their formulas;
* the default ``UNet()`` is the W3 benchmark network (benchmarks/README.md), written out
  independently below: same weights from the same generator, same state_dict
  keys, same parameter count, same output;
* output shapes over non-default configurations, and that the output depends on
  t and on the label (the null label included) -- the conditioning is wired in;
* the adaLN-Zero claim of Peebles & Xie: at initialisation every DiT block is the
  identity and the network outputs exactly 0; once the zero-initialised weights
  move, the output depends on t and y;
* float64 gradient checks of tiny networks w.r.t. the input and some parameters;
* clear errors for bad inputs, and that a few Adam steps fit a fixed batch.
"""
import math

import numpy as np
import pytest

import minigen as mg
import minigen.functional as F
from minigen import nn, optim
from minigen.models.diffusion.dit import DiT, modulate, sincos_pos_embed_2d
from minigen.models.diffusion.unet import UNet, timestep_embedding
from minigen.testing import gradcheck


def _normal(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _steps(values, device="cpu"):
    return mg.tensor(np.asarray(values, dtype=np.int64), device=device)


def _tiny_unet(**kw):
    cfg = dict(base_channels=8, channel_mults=(1, 2), time_dim=16, groups=4, generator=mg.Generator(0, "cpu"))
    cfg.update(kw)
    return UNet(**cfg)


def _tiny_dit(**kw):
    cfg = dict(image_size=8, patch_size=4, dim=16, depth=2, heads=2, generator=mg.Generator(0, "cpu"))
    cfg.update(kw)
    return DiT(**cfg)


def _perturb_zero_init(model, seed=1, scale=0.3):
    """Give every all-zero parameter (adaLN, final layer, biases) random values, so the DiT is no longer trivial."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        if not np.any(p.numpy()):
            p.data = mg.tensor(scale * rng.standard_normal(p.shape), dtype=p.dtype, device=p.device).data


# ----------------------------------------------------------------------------
# embeddings
# ----------------------------------------------------------------------------

def test_timestep_embedding_matches_the_formula(device):
    t = np.array([0, 1, 7, 500, 999])
    emb = timestep_embedding(_steps(t, device), 10)
    assert emb.shape == (5, 10) and emb.dtype == np.float32 and emb.device == device
    assert not emb.requires_grad
    i = np.arange(5)
    freqs = np.exp(-math.log(10000.0) * i / 5)
    want = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(emb.numpy(), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(timestep_embedding(_steps(t, device), 10, np.float64).numpy(), want,
                               rtol=0, atol=1e-12)
    # float steps (continuous time) use the same formula
    t_float = mg.tensor(np.array([0.5, 2.25]), device=device)
    np.testing.assert_allclose(timestep_embedding(t_float, 4, np.float64).numpy()[:, 0], np.sin([0.5, 2.25]))


def test_timestep_embedding_refuses_bad_arguments():
    with pytest.raises(ValueError, match="dim must be a positive even number"):
        timestep_embedding(_steps([1, 2]), 7)
    with pytest.raises(ValueError, match=r"t must be a 1-D Tensor or array \(B,\)"):
        timestep_embedding(_steps([[1, 2]]), 8)


def test_sincos_pos_embed_2d_rows_then_columns():
    table = sincos_pos_embed_2d(2, 3, 8)                               # 6 tokens, row-major
    assert table.shape == (6, 8)
    rows, cols = np.repeat(np.arange(2), 3), np.tile(np.arange(3), 2)
    freqs = np.exp(-math.log(10000.0) * np.arange(2) / 2)
    for half, coord in ((table[:, :4], rows), (table[:, 4:], cols)):
        want = np.concatenate([np.sin(coord[:, None] * freqs), np.cos(coord[:, None] * freqs)], axis=1)
        np.testing.assert_allclose(half, want, atol=1e-15)
    assert len({tuple(r) for r in table.round(12)}) == 6             # every patch gets its own vector
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(2, 2, 6)


def test_dit_position_embedding_is_a_constant_buffer():
    model = _tiny_dit()
    np.testing.assert_allclose(model.pos_embed.numpy()[0], sincos_pos_embed_2d(2, 2, 16), atol=1e-7)
    assert "pos_embed" not in model.state_dict()
    assert all(p is not model.pos_embed for p in model.parameters())


# ----------------------------------------------------------------------------
# the default UNet is the W3 benchmark network
# ----------------------------------------------------------------------------
# Written out from the W3 definition (benchmarks/README.md) on its own: explicit
# matmul-softmax attention and its own sinusoid, so it shares no code with unet.py.

def _sinusoid(t, dim=128):
    half = dim // 2
    angles = t.numpy().astype(np.float64)[:, None] * np.exp(-math.log(10000.0) * np.arange(half) / half)
    return mg.tensor(np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32))


class _W3Res(nn.Module):
    def __init__(self, cin, cout, g):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, generator=g)
        self.time_proj = nn.Linear(128, cout, generator=g)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, generator=g)
        self.skip = nn.Conv2d(cin, cout, 1, generator=g) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x))) + self.time_proj(F.silu(temb)).reshape(x.shape[0], -1, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


class _W3Attn(nn.Module):
    def __init__(self, c, g):
        super().__init__()
        self.norm = nn.GroupNorm(8, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1, generator=g)
        self.proj = nn.Conv2d(c, c, 1, generator=g)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = F.split(self.qkv(self.norm(x)).reshape(B, 3 * C, H * W), C, dim=1)
        w = F.softmax(F.transpose(q, 1, 2) @ k / math.sqrt(C), dim=-1)           # (B, HW, HW)
        return x + self.proj((v @ F.transpose(w, 1, 2)).reshape(B, C, H, W))


class _W3UNet(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.time_fc1, self.time_fc2 = nn.Linear(128, 128, generator=g), nn.Linear(128, 128, generator=g)
        self.conv_in = nn.Conv2d(1, 32, 3, padding=1, generator=g)

        def level(**mods):
            m = nn.Module()
            for name, mod in mods.items():
                setattr(m, name, mod)
            return m

        self.downs = nn.ModuleList([
            level(res=_W3Res(32, 32, g)),
            level(down=nn.Conv2d(32, 32, 3, stride=2, padding=1, generator=g), res=_W3Res(32, 64, g)),
            level(down=nn.Conv2d(64, 64, 3, stride=2, padding=1, generator=g), res=_W3Res(64, 64, g))])
        self.attn = _W3Attn(64, g)
        self.ups = nn.ModuleList([
            level(res=_W3Res(128, 64, g)),
            level(up=nn.Conv2d(64, 64, 3, padding=1, generator=g), res=_W3Res(128, 64, g)),
            level(up=nn.Conv2d(64, 64, 3, padding=1, generator=g), res=_W3Res(96, 32, g))])
        self.norm_out = nn.GroupNorm(8, 32)
        self.conv_out = nn.Conv2d(32, 1, 3, padding=1, generator=g)

    def forward(self, x, t):
        temb = self.time_fc2(F.silu(self.time_fc1(_sinusoid(t))))
        d, u = self.downs, self.ups
        h1 = d[0].res(self.conv_in(x), temb)
        h2 = d[1].res(d[1].down(h1), temb)
        h3 = d[2].res(d[2].down(h2), temb)
        u3 = u[0].res(F.cat([self.attn(h3), h3], dim=1), temb)
        u2 = u[1].res(F.cat([u[1].up(F.interpolate(u3, scale_factor=2)), h2], dim=1), temb)
        u1 = u[2].res(F.cat([u[2].up(F.interpolate(u2, scale_factor=2)), h1], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(u1)))


def test_default_unet_is_the_w3_benchmark_network():
    ours, ref = UNet(generator=mg.Generator(7, "cpu")), _W3UNet(mg.Generator(7, "cpu"))
    assert sum(p.size for p in ours.parameters()) == sum(p.size for p in ref.parameters()) == 641_249
    # same creation order: one generator gives both the same weights under the same keys
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    # other weights, copied across: the same function
    ours = UNet(generator=mg.Generator(8, "cpu"))
    ref.load_state_dict(ours.state_dict())
    x, t = mg.tensor(_normal((2, 1, 28, 28))), _steps([3, 871])
    with mg.no_grad():
        want, got = ref(x, t).numpy(), ours(x, t).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want).max() > 0.1


def test_w3_benchmark_uses_the_library_unet():
    # read (not imported: the tests do not depend on the benchmarks package) from its source
    import ast
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "w3_ddpm.py")
    if not os.path.exists(path):
        pytest.skip("no benchmarks/ next to the tests")
    imports = {(node.module, alias.name) for node in ast.walk(ast.parse(open(path).read()))
               if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert ("minigen.models.diffusion.unet", "UNet") in imports or ("minigen.models.diffusion", "UNet") in imports


# ----------------------------------------------------------------------------
# UNet: shapes and conditioning
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("cfg, shape", [
    (dict(), (2, 1, 8, 8)),
    (dict(channel_mults=(1, 2, 3)), (2, 1, 8, 12)),                # three levels, non-square
    (dict(channel_mults=(1,), attention=False), (1, 1, 6, 6)),     # one level, no attention: any size
    (dict(in_channels=3, num_classes=5, base_channels=4, channel_mults=(2, 2)), (3, 3, 4, 4)),
    (dict(dropout=0.2), (2, 1, 4, 4)),
])
def test_unet_output_has_the_input_shape(device, cfg, shape):
    model = _tiny_unet(**cfg).to(device)
    out = model(mg.tensor(_normal(shape), device=device), _steps(np.arange(shape[0]) * 100, device))
    assert out.shape == shape and out.device == device and out.dtype == np.float32
    assert np.all(np.isfinite(out.numpy()))


def test_unet_levels_have_the_configured_channels():
    model = _tiny_unet(channel_mults=(1, 2, 3))
    assert [level.res.conv1.out_channels for level in model.downs] == [8, 16, 24]
    assert not hasattr(model.downs[0], "down") and not hasattr(model.ups[0], "up")
    assert [level.res.conv1.in_channels for level in model.ups] == [48, 24 + 16, 16 + 8]
    assert model.conv_out.in_channels == 8
    assert _tiny_unet(attention=False).attn is None


def _check_conditioning(model, device):
    """The output of a 3-class denoiser moves with t and with y, and y=None is the null label 3.

    Returns the output for (t=5, y=0/1) so callers can check more."""
    x = mg.tensor(_normal((2, 1, 8, 8)), device=device)
    t, labels = _steps([5, 5], device), _steps([0, 1], device)
    with mg.no_grad():
        base = model(x, t, labels).numpy()
        other_t = model(x, _steps([6, 700], device), labels).numpy()
        other_y = model(x, t, _steps([2, 2], device)).numpy()
        null = model(x, t).numpy()
        null_explicit = model(x, t, _steps([3, 3], device)).numpy()
    for other in (other_t, other_y, null):
        assert np.all(np.abs(other - base).reshape(2, -1).max(axis=1) > 1e-4)   # per image
    np.testing.assert_array_equal(null, null_explicit)                            # y=None is the null label
    return base


def test_unet_output_depends_on_t_and_on_the_label(device):
    model = _tiny_unet(num_classes=3).to(device)
    _check_conditioning(model, device)
    assert model.label_emb.weight.shape == (4, 16)


def test_unet_dropout_is_active_in_training_only():
    model = _tiny_unet(dropout=0.5)
    x, t = mg.tensor(_normal((2, 1, 4, 4))), _steps([1, 2])
    with mg.no_grad():
        assert not np.allclose(model(x, t).numpy(), model(x, t).numpy())
        model.eval()
        np.testing.assert_array_equal(model(x, t).numpy(), model(x, t).numpy())


# ----------------------------------------------------------------------------
# DiT: adaLN-Zero, shapes and conditioning
# ----------------------------------------------------------------------------

def test_dit_blocks_are_the_identity_and_the_output_zero_at_init(device):
    model = _tiny_dit(num_classes=4).to(device)
    x = mg.tensor(_normal((3, 1, 8, 8)), device=device)
    out = model(x, _steps([1, 50, 999], device), _steps([0, 3, 4], device))
    assert out.shape == (3, 1, 8, 8)
    assert not np.any(out.numpy())                                       # exactly 0
    h = mg.tensor(_normal((3, 4, 16), seed=1), device=device)
    c = mg.tensor(_normal((3, 16), seed=2), device=device)
    for block in model.blocks:
        np.testing.assert_array_equal(block(h, c).numpy(), h.numpy())  # gates are exactly 0
    # the block is not the identity once its adaLN weights move
    _perturb_zero_init(model)
    assert np.abs(model.blocks[0](h, c).numpy() - h.numpy()).max() > 1e-3


def test_modulate_is_scale_then_shift():
    h = mg.tensor(_normal((2, 3, 4)))
    shift, scale = mg.tensor(_normal((2, 4), 1)), mg.tensor(_normal((2, 4), 2))
    want = h.numpy() * (1 + scale.numpy()[:, None]) + shift.numpy()[:, None]
    np.testing.assert_allclose(modulate(h, shift, scale).numpy(), want, rtol=1e-6)


def test_dit_output_depends_on_t_and_on_the_label_once_trained_away_from_zero(device):
    model = _tiny_dit(num_classes=3)
    _perturb_zero_init(model)
    model.to(device)
    base = _check_conditioning(model, device)
    assert np.abs(base).max() > 1e-2


@pytest.mark.parametrize("cfg, shape", [
    (dict(in_channels=3, patch_size=2, depth=1), (2, 3, 8, 8)),
    (dict(image_size=12, patch_size=3, heads=4, mlp_ratio=2.0), (1, 1, 12, 12)),
])
def test_dit_output_has_the_input_shape(cfg, shape):
    model = _tiny_dit(**cfg)
    _perturb_zero_init(model)
    out = model(mg.tensor(_normal(shape)), _steps(np.arange(shape[0])))
    assert out.shape == shape and np.abs(out.numpy()).max() > 0
    assert model.blocks[0].fc1.out_features == int(16 * cfg.get("mlp_ratio", 4.0))


def test_dit_unpatchify_inverts_the_patch_layout():
    """Token (r, s) with output vector (C, p, p) lands on patch (r, s): check against explicit loops."""
    model = _tiny_dit(in_channels=2, image_size=6, patch_size=3)
    tokens = _normal((1, 4, 18))
    img = model.unpatchify(mg.tensor(tokens)).numpy()
    want = np.zeros((1, 2, 6, 6), np.float32)
    for r in range(2):
        for s in range(2):
            want[0, :, 3 * r:3 * r + 3, 3 * s:3 * s + 3] = tokens[0, 2 * r + s].reshape(2, 3, 3)
    np.testing.assert_array_equal(img, want)


def test_dit_patchify_is_a_linear_map_of_each_patch():
    """Token (r, s) = W vec(patch (r, s)) + b + pos[(r, s)]: the conv with kernel = stride is reshape + Linear."""
    model = _tiny_dit(image_size=8, patch_size=4)
    x = _normal((1, 1, 8, 8))
    tokens = model.patchify(mg.tensor(x)).numpy()
    W, b = model.patch_embed.weight.numpy().reshape(16, -1), model.patch_embed.bias.numpy()
    pos = model.pos_embed.numpy()[0]
    patch = x[0, :, 4:8, 0:4].reshape(-1)                              # row 1, column 0 -> token 2
    np.testing.assert_allclose(tokens[0, 2], W @ patch + b + pos[2], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# gradients (float64, central differences)
# ----------------------------------------------------------------------------

def _with_parameters(model, names, t, y=None):
    """f(x, *ws) = model(x, t, y) with the named parameters replaced by the tensors ws.

    A value in a module's instance __dict__ shadows its registered Parameter
    (Module.__getattr__ is only consulted when normal lookup fails), so the graph
    runs through ws and gradcheck can differentiate w.r.t. them.
    """
    modules = dict(model.named_modules())
    slots = [(modules[name.rpartition(".")[0]], name.rpartition(".")[2]) for name in names]

    def fn(x, *ws):
        for (module, attr), w in zip(slots, ws):
            module.__dict__[attr] = w
        try:
            return model(x, t, y)
        finally:
            for module, attr in slots:
                del module.__dict__[attr]
    return fn


def _values(model, names):
    params = dict(model.named_parameters())
    return [params[n].numpy().copy() for n in names]


def _assert_routed_through(fn, inputs, device):
    """Every input gets a non-zero gradient, so the check below differentiates the real weights."""
    ts = [mg.tensor(a, device=device, requires_grad=True) for a in inputs]
    grads = mg.grad((fn(*ts) ** 2).sum(), ts)
    assert all(np.abs(g.numpy()).max() > 1e-8 for g in grads)


def test_unet_gradcheck(device):
    model = UNet(base_channels=4, channel_mults=(1, 2), time_dim=8, groups=2, num_classes=3,
                 generator=mg.Generator(0, "cpu")).to(device, np.float64)
    names = ["conv_in.weight", "downs.0.res.time_proj.weight", "attn.qkv.weight", "ups.1.up.weight",
             "ups.1.res.skip.bias", "label_emb.weight", "conv_out.bias"]
    t, y = _steps([3, 900], device), _steps([1, 3], device)
    fn, inputs = _with_parameters(model, names, t, y), [_normal((2, 1, 4, 4), 5, np.float64)] + _values(model, names)
    _assert_routed_through(fn, inputs, device)
    gradcheck(fn, inputs, device=device, max_elementwise=40, rtol=1e-5, atol=1e-8)


def test_dit_gradcheck(device):
    model = DiT(image_size=4, patch_size=2, dim=8, depth=1, heads=2, num_classes=3, generator=mg.Generator(0, "cpu"))
    _perturb_zero_init(model)
    model.to(device, np.float64)
    names = ["patch_embed.weight", "time_fc1.weight", "blocks.0.adaLN.weight", "blocks.0.attn.qkv.weight",
             "blocks.0.fc2.bias", "label_emb.weight", "final.linear.weight"]
    t, y = _steps([3, 900], device), _steps([0, 2], device)
    fn, inputs = _with_parameters(model, names, t, y), [_normal((2, 1, 4, 4), 5, np.float64)] + _values(model, names)
    _assert_routed_through(fn, inputs, device)
    gradcheck(fn, inputs, device=device, max_elementwise=40, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------

def test_unet_refuses_bad_inputs():
    model = _tiny_unet(num_classes=3)
    x, t = mg.tensor(_normal((2, 1, 8, 8))), _steps([1, 2])
    with pytest.raises(ValueError, match=r"UNet: x must be a Tensor \(B, 1, H, W\)"):
        model(mg.tensor(_normal((2, 8, 8))), t)
    with pytest.raises(ValueError, match=r"UNet: x must be a Tensor \(B, 1, H, W\), got \(2, 3, 8, 8\)"):
        model(mg.tensor(_normal((2, 3, 8, 8))), t)
    with pytest.raises(ValueError, match="H and W must be divisible by 2"):
        model(mg.tensor(_normal((2, 1, 8, 7))), t)
    with pytest.raises(ValueError, match=r"t must have shape \(B,\) = \(2,\)"):
        model(x, _steps([1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in 0..3"):
        model(x, t, _steps([0, 4]))
    with pytest.raises(ValueError, match=r"labels must lie in 0..3"):
        model(x, t, _steps([-1, 0]))
    with pytest.raises(TypeError, match="y must hold integer labels"):
        model(x, t, mg.tensor(np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match=r"y must have shape \(B,\)"):
        model(x, t, _steps([0]))
    with pytest.raises(ValueError, match="labels y were given to an unconditional network"):
        _tiny_unet()(x, t, _steps([0, 1]))
    with pytest.raises(ValueError, match="groups .4. must divide every level's channel count"):
        _tiny_unet(base_channels=6)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        _tiny_unet(num_classes=0)


def test_dit_refuses_bad_inputs():
    model = _tiny_dit(num_classes=2)
    t = _steps([1, 2])
    with pytest.raises(ValueError, match=r"DiT: built for 8x8 images, got 12x12"):
        model(mg.tensor(_normal((2, 1, 12, 12))), t)
    with pytest.raises(ValueError, match=r"DiT: x must be a Tensor \(B, 1, H, W\)"):
        model(mg.tensor(_normal((2, 2, 8, 8))), t)
    with pytest.raises(ValueError, match=r"DiT: t must have shape"):
        model(mg.tensor(_normal((2, 1, 8, 8))), _steps([[1], [2]]))
    with pytest.raises(ValueError, match=r"DiT: labels must lie in 0..2"):
        model(mg.tensor(_normal((2, 1, 8, 8))), t, _steps([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        _tiny_dit()(mg.tensor(_normal((2, 1, 8, 8))), t, _steps([0, 1]))
    with pytest.raises(ValueError, match=r"image_size \(10\) must be divisible by patch_size \(4\)"):
        _tiny_dit(image_size=10)
    with pytest.raises(ValueError, match=r"dim \(16\) must be divisible by heads \(3\)"):
        _tiny_dit(heads=3)
    with pytest.raises(ValueError, match="divisible by 4"):
        _tiny_dit(dim=18, heads=2)


# ----------------------------------------------------------------------------
# training sanity
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: _tiny_unet(num_classes=2), lambda: _tiny_dit(num_classes=2)],
                         ids=["unet", "dit"])
def test_a_few_adam_steps_fit_a_fixed_batch(make):
    model = make()
    opt = optim.Adam(model.parameters(), lr=3e-3)
    x, target = mg.tensor(_normal((4, 1, 8, 8), 1)), mg.tensor(_normal((4, 1, 8, 8), 2))
    t, y = _steps([0, 10, 100, 999]), _steps([0, 1, 2, 1])
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.mse_loss(model(x, t, y), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses

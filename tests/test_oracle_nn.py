"""Oracle tests: minigen's layers and optimizers against PyTorch with identical weights.

Weights go from the torch module into the minigen module through state_dict, so
the keys and shapes must match exactly (strict loading).  Everything runs in
float64; forward outputs, input gradients and parameter gradients are compared.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import minigen as mg  # noqa: E402
from minigen import nn, optim  # noqa: E402

TOL = dict(rtol=1e-9, atol=1e-11)


def copy_weights(tmod, mmod):
    """Load a torch module's state_dict into a minigen module (keys must match)."""
    mmod.load_state_dict({k: v.detach().numpy() for k, v in tmod.state_dict().items()}, strict=True)


def compare_modules(tmod, mmod, x, seed=0, tol=TOL):
    """Same weights, same input, same upstream gradient: outputs and gradients must agree."""
    copy_weights(tmod, mmod)
    floating = x.dtype.kind == "f"
    xt = torch.tensor(x, requires_grad=floating)
    yt = tmod(xt)
    gy = np.random.default_rng(seed).standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(gy))
    xm = mg.tensor(x, requires_grad=floating)
    ym = mmod(xm)
    ym.backward(mg.tensor(gy))
    np.testing.assert_allclose(ym.numpy(), yt.detach().numpy(), **tol)
    if floating:
        np.testing.assert_allclose(xm.grad.numpy(), xt.grad.numpy(), **tol)
    tgrads = {name: p.grad for name, p in tmod.named_parameters()}
    mgrads = {name: p.grad for name, p in mmod.named_parameters()}
    assert tgrads.keys() == mgrads.keys()
    for name in tgrads:
        np.testing.assert_allclose(mgrads[name].numpy(), tgrads[name].numpy(), err_msg=name, **tol)
    return ym, yt


def randn(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.fixture(autouse=True)
def _double():
    previous = mg.get_default_dtype()
    mg.set_default_dtype(np.float64)
    torch.manual_seed(0)
    yield
    mg.set_default_dtype(previous)


def test_linear():
    compare_modules(torch.nn.Linear(5, 3).double(), nn.Linear(5, 3), randn(2, 4, 5))
    compare_modules(torch.nn.Linear(5, 3, bias=False).double(), nn.Linear(5, 3, bias=False), randn(4, 5))


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3),
    dict(kernel_size=4, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(2, 1), dilation=2, groups=2, bias=False),
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=2, padding_mode="replicate"),
])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv2d(kw):
    compare_modules(torch.nn.Conv2d(4, 6, **kw).double(), nn.Conv2d(4, 6, **kw), randn(2, 4, 7, 8))


@pytest.mark.parametrize("kw", [
    dict(kernel_size=4, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(kernel_size=3, groups=2, dilation=2, bias=False),
])
def test_conv_transpose2d(kw):
    compare_modules(torch.nn.ConvTranspose2d(4, 6, **kw).double(), nn.ConvTranspose2d(4, 6, **kw), randn(2, 4, 5, 5))


def test_batchnorm2d_train_then_eval():
    tbn, mbn = torch.nn.BatchNorm2d(3).double(), nn.BatchNorm2d(3)
    with torch.no_grad():
        tbn.weight.uniform_(0.5, 1.5)
        tbn.bias.uniform_(-0.5, 0.5)
    compare_modules(tbn, mbn, randn(4, 3, 5, 5, seed=1) * 2 + 1)         # train: batch statistics
    for key, value in tbn.state_dict().items():                  # running stats after one step
        np.testing.assert_allclose(mbn.state_dict()[key].numpy(), value.numpy(), err_msg=key, **TOL)
    x2 = randn(4, 3, 5, 5, seed=2)
    xt = torch.tensor(x2)
    mbn(mg.tensor(x2))                                          # a second training step, both sides
    tbn(xt)
    tbn.eval()
    mbn.eval()
    compare_modules(tbn, mbn, randn(2, 3, 5, 5, seed=3))                 # eval: running statistics
    assert int(mbn.num_batches_tracked.item()) == 2


def test_batchnorm1d_momentum_none():
    tbn, mbn = torch.nn.BatchNorm1d(4, momentum=None).double(), nn.BatchNorm1d(4, momentum=None)
    for seed in range(3):
        x = randn(6, 4, seed=seed)
        tbn(torch.tensor(x))
        mbn(mg.tensor(x))
    for key, value in tbn.state_dict().items():
        np.testing.assert_allclose(mbn.state_dict()[key].numpy(), value.numpy(), err_msg=key, **TOL)


def test_groupnorm_and_layernorm():
    tgn, mgn = torch.nn.GroupNorm(2, 6).double(), nn.GroupNorm(2, 6)
    tln, mln = torch.nn.LayerNorm((5, 4)).double(), nn.LayerNorm((5, 4))
    with torch.no_grad():
        for p in list(tgn.parameters()) + list(tln.parameters()):
            p.normal_()
    compare_modules(tgn, mgn, randn(3, 6, 5, 4))
    compare_modules(tln, mln, randn(3, 6, 5, 4))


def test_embedding():
    idx = np.array([[0, 3, 3], [9, 1, 0]])
    compare_modules(torch.nn.Embedding(10, 4).double(), nn.Embedding(10, 4), idx)


def test_small_sequential():
    def build(lib):
        return lib.Sequential(lib.Conv2d(1, 4, 3, stride=2, padding=1), lib.BatchNorm2d(4), lib.LeakyReLU(0.2),
                              lib.Flatten(), lib.Linear(4 * 4 * 4, 8), lib.SiLU(), lib.Linear(8, 3), lib.Tanh())
    tmod = build(torch.nn).double()
    compare_modules(tmod, build(nn), randn(5, 1, 8, 8))


def test_dcgan_generator_state_dict_keys_and_shapes_match():
    def build(lib):
        return lib.Sequential(lib.Linear(100, 6272), lib.BatchNorm1d(6272), lib.ReLU(), lib.Unflatten(1, (128, 7, 7)),
                              lib.ConvTranspose2d(128, 64, 4, 2, 1), lib.BatchNorm2d(64), lib.ReLU(),
                              lib.ConvTranspose2d(64, 1, 4, 2, 1), lib.Tanh())
    tsd, msd = build(torch.nn).state_dict(), build(nn).state_dict()
    assert list(tsd) == list(msd)
    assert [tuple(v.shape) for v in tsd.values()] == [v.shape for v in msd.values()]


def test_multihead_self_attention_matches_torch_mha():
    E, H = 8, 2
    tmha = torch.nn.MultiheadAttention(E, H, batch_first=True).double()
    mmha = nn.MultiheadSelfAttention(E, H)
    with torch.no_grad():
        tmha.in_proj_bias.normal_()
        tmha.out_proj.bias.normal_()
    mmha.load_state_dict({"qkv.weight": tmha.in_proj_weight.detach().numpy(),
                          "qkv.bias": tmha.in_proj_bias.detach().numpy(),
                          "proj.weight": tmha.out_proj.weight.detach().numpy(),
                          "proj.bias": tmha.out_proj.bias.detach().numpy()})
    x = randn(3, 5, E)
    xt = torch.tensor(x, requires_grad=True)
    yt, _ = tmha(xt, xt, xt, need_weights=False)
    gy = randn(3, 5, E, seed=4)
    yt.backward(torch.tensor(gy))
    xm = mg.tensor(x, requires_grad=True)
    ym = mmha(xm)
    ym.backward(mg.tensor(gy))
    np.testing.assert_allclose(ym.numpy(), yt.detach().numpy(), **TOL)
    np.testing.assert_allclose(xm.grad.numpy(), xt.grad.numpy(), **TOL)
    np.testing.assert_allclose(mmha.qkv.weight.grad.numpy(), tmha.in_proj_weight.grad.numpy(), **TOL)
    np.testing.assert_allclose(mmha.proj.bias.grad.numpy(), tmha.out_proj.bias.grad.numpy(), **TOL)
    # causal masking too
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    yt_c, _ = tmha(xt, xt, xt, attn_mask=mask, need_weights=False, is_causal=True)
    np.testing.assert_allclose(mmha(xm, is_causal=True).numpy(), yt_c.detach().numpy(), **TOL)


# ----------------------------------------------------------------------------
# optimizers: trajectories against torch.optim
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.5, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, betas=(0.8, 0.9), weight_decay=0.3)),
])
def test_optimizer_trajectories_match_torch(name, kw):
    tmod = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    mmod = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    copy_weights(tmod, mmod)
    topt = getattr(torch.optim, name)(tmod.parameters(), **kw)
    mopt = getattr(optim, name)(mmod.parameters(), **kw)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, target = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
        topt.zero_grad()
        ((tmod(torch.tensor(x)) - torch.tensor(target)) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(tmod.parameters(), 0.5)
        topt.step()
        mopt.zero_grad()
        ((mmod(mg.tensor(x)) - mg.tensor(target)) ** 2).mean().backward()
        optim.clip_grad_norm_(mmod.parameters(), 0.5)
        mopt.step()
    for (key, tv), mv in zip(tmod.state_dict().items(), mmod.state_dict().values()):
        np.testing.assert_allclose(mv.numpy(), tv.numpy(), rtol=1e-10, atol=1e-12, err_msg=key)
    if name != "SGD":  # the moments are stored under PyTorch's names
        tstate = topt.state_dict()["state"][0]
        mstate = mopt.state_dict()["state"]["0"]
        assert mstate["step"] == int(tstate["step"]) == 5
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(mstate[key], tstate[key].numpy(), rtol=1e-10, atol=1e-14)


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s) for s in [(3, 4), (5,), (2, 2, 2)]]
    for norm_type in (2.0, 1.0, math.inf):
        tps = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
        mps = [nn.Parameter(mg.zeros(*g.shape)) for g in grads]
        for tp, mp, g in zip(tps, mps, grads):
            tp.grad = torch.tensor(g)
            mp.grad = mg.tensor(g)
        tn = torch.nn.utils.clip_grad_norm_(tps, 1.5, norm_type=norm_type)
        mn = optim.clip_grad_norm_(mps, 1.5, norm_type=norm_type)
        assert mn.item() == pytest.approx(tn.item(), rel=1e-12)
        for tp, mp in zip(tps, mps):
            np.testing.assert_allclose(mp.grad.numpy(), tp.grad.numpy(), rtol=1e-12)


def test_cosine_warmup_matches_torch_lambda_lr():
    tp = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.3)
    mopt = optim.SGD([nn.Parameter(mg.zeros(1))], lr=0.3)
    ms = optim.CosineWarmupLR(mopt, warmup_steps=3, total_steps=10, min_lr_ratio=0.1)
    ts = torch.optim.lr_scheduler.LambdaLR(topt, ms.factor)
    for _ in range(12):
        assert mopt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
        topt.step()
        ts.step()
        ms.step()


@pytest.mark.parametrize("make", [
    lambda lib: lib.GroupNorm(3, 6, affine=False),
    lambda lib: lib.LayerNorm(4, elementwise_affine=False),
    lambda lib: lib.LayerNorm(4, bias=False),
    lambda lib: lib.BatchNorm2d(6, affine=False, track_running_stats=False),
])
def test_norm_variants_without_affine_or_running_stats(make):
    tmod, mmod = make(torch.nn).double(), make(nn)
    compare_modules(tmod, mmod, randn(2, 6, 3, 4))
    tmod.eval()
    mmod.eval()
    compare_modules(tmod, mmod, randn(2, 6, 3, 4, seed=5))

"""W3: one DDPM training step of a small UNet, batch 64 on 1x28x28 (notes §5).

    t ~ U{0..999},  eps ~ N(0, I),  betas = linspace(1e-4, 0.02, 1000),
    alpha_bar_t = prod_{s<=t} (1 - beta_s),
    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps,
    loss = mean (eps_theta(x_t, t) - eps)^2,   then one Adam(lr=2e-4) step.

eps_theta is the small UNet defined in benchmarks/README.md (641,249 parameters):

    temb = Linear(128,128) - SiLU - Linear(128,128) of the sinusoidal embedding of t
    ResBlock(cin, cout): h = Conv3x3(SiLU(GN8(x))) + Linear(128,cout)(SiLU(temb))[:, :, None, None]
                         h = Conv3x3(SiLU(GN8(h)));  out = h + (Conv1x1(x) if cin != cout else x)
    Down(c) = Conv3x3 stride 2;  Up(c) = nearest x2 then Conv3x3
    Attn(c): single head over the 7x7 = 49 positions, GN8 -> Conv1x1(c, 3c) ->
             softmax(q^T k / sqrt(c)) -> v -> Conv1x1(c, c) -> + x

    h1 = Res(32,32)(Conv3x3(1,32)(x))           32@28   (skip)
    h2 = Res(32,64)(Down(h1))                   64@14   (skip)
    h3 = Res(64,64)(Down(h2))                   64@7    (skip)
    u3 = Res(128,64)(cat[Attn(h3), h3])         64@7
    u2 = Res(128,64)(cat[Up(u3), h2])           64@14
    u1 = Res(96,32)(cat[Up(u2), h1])            32@28
    out = Conv3x3(32,1)(SiLU(GN8(u1)))          1@28

x0 ~ U[-1, 1) is fixed.  eps_theta is the library's UNet with its defaults
(minigen/models/diffusion/unet.py), which are exactly this network: same
parameter count, same state_dict keys as the PyTorch twin, and
tests/test_diffusion_denoisers.py checks them against this definition written
out independently.  Most of its time is 3x3 convolutions at 28x28, group norms
and SiLUs.
"""
from __future__ import annotations

import numpy as np

import minigen as mg
import minigen.functional as F
from minigen import optim
from minigen.models.diffusion.unet import UNet

from .common import Case, Row, rel_err

NAME = "W3"
TITLE = "DDPM UNet step"
T_STEPS = 1000


def ddpm_schedule(device, T=T_STEPS):
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), computed in float64, stored in float32."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    return mg.tensor(np.cumprod(1.0 - betas).astype(np.float32), device=device)


def ddpm_loss(model, alpha_bar, x0, t, eps):
    """mean (eps_theta(x_t, t) - eps)^2 with x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps."""
    a = alpha_bar[t].reshape(-1, 1, 1, 1)                              # (B, 1, 1, 1)
    xt = F.sqrt(a) * x0 + F.sqrt(1.0 - a) * eps
    return F.mse_loss(model(xt, t), eps)


def _setup(settings):
    batch = 2 if settings.quick else 64
    model = UNet(generator=mg.Generator(settings.seed + 1, "cpu")).to(settings.device)
    x0_host = mg.Generator(settings.seed + 2, "cpu").uniform((batch, 1, 28, 28), -1.0, 1.0)
    return model, x0_host, batch


def build(settings, twins=None, torch_device=None) -> Case:
    model, x0_host, batch = _setup(settings)
    dev = settings.device
    x0 = mg.tensor(x0_host, device=dev)
    alpha_bar = ddpm_schedule(dev)
    opt = optim.Adam(model.parameters(), lr=2e-4)
    g = mg.Generator(settings.seed, dev)

    def step():
        t = mg.randint(0, T_STEPS, (batch,), generator=g)
        eps = mg.randn(*x0.shape, generator=g)
        opt.zero_grad()
        loss = ddpm_loss(model, alpha_bar, x0, t, eps)
        loss.backward()
        opt.step()
        return loss

    engines = {"minigen": step}
    row = Row("ddpm-unet", "minigen", target=1.5)
    if twins is not None:
        twin = twins.load_minigen_weights(twins.UNet(), model, torch_device)
        topt = twins.torch.optim.Adam(twin.parameters(), lr=2e-4)
        engines["torch"] = twins.ddpm_step(twin, topt, twins.ddpm_schedule(torch_device),
                                           twins.tensor(x0_host, torch_device))
        row.torch = "torch"
    nparam = sum(p.size for p in model.parameters())
    return Case(engines, [row], info={"batch": batch, "params": nparam})


def check(settings, twins, torch_device):
    """Same weights, x0, t and eps: the loss and every parameter gradient."""
    model, x0_host, batch = _setup(settings)
    dev = settings.device
    g = mg.Generator(settings.seed + 3, "cpu")
    t_host = g.integers(0, T_STEPS, (batch,))
    eps_host = g.normal((batch, 1, 28, 28))
    twin = twins.load_minigen_weights(twins.UNet(), model, torch_device)
    loss = ddpm_loss(model, ddpm_schedule(dev), mg.tensor(x0_host, device=dev),
                     mg.tensor(t_host, device=dev), mg.tensor(eps_host, device=dev))
    loss.backward()
    tloss = twins.ddpm_loss(twin, twins.ddpm_schedule(torch_device), twins.tensor(x0_host, torch_device),
                            twins.tensor(t_host, torch_device), twins.tensor(eps_host, torch_device))
    tloss.backward()
    out = [("loss", rel_err(loss.item(), tloss.item()), 1e-4)]
    tgrads = twins.grads_by_name(twin)
    for name, p in model.named_parameters():
        out.append((f"grad {name}", rel_err(p.grad.numpy(), tgrads[name]), 1e-3))
    return out

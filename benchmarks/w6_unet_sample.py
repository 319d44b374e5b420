"""W6: one sampling forward of the W3 UNet, batch 256 on 1x28x28, no graph.

    eps_hat = eps_theta(x_t, t),   x_t ~ N(0, I) (256, 1, 28, 28),  t ~ U{0..999} (256,)

The network is W3's (``minigen.models.diffusion.UNet()`` with its defaults, 641,249
parameters; see w3_ddpm.py), called the way a sampler calls it: minigen under
``no_grad()`` (no graph is recorded), the PyTorch twin under ``torch.inference_mode()``.
A sampler (W7) makes 50 of these calls per batch of images, so this is the
denoiser's share of sampling without the update equations around it.
"""
from __future__ import annotations

import minigen as mg
from minigen.autograd import no_grad
from minigen.models.diffusion.unet import UNet

from .common import Case, Row, rel_err

NAME = "W6"
TITLE = "UNet sampling forward"
T_STEPS = 1000


def _setup(settings):
    batch = 2 if settings.quick else 256
    model = UNet(generator=mg.Generator(settings.seed + 1, "cpu")).to(settings.device)
    g = mg.Generator(settings.seed + 2, "cpu")
    x_host = g.normal((batch, 1, 28, 28))
    t_host = g.integers(0, T_STEPS, (batch,))
    return model, x_host, t_host, batch


def _forward(model, x, t):
    def forward():
        with no_grad():
            return model(x, t)
    return forward


def build(settings, twins=None, torch_device=None) -> Case:
    model, x_host, t_host, batch = _setup(settings)
    dev = settings.device
    engines = {"minigen": _forward(model, mg.tensor(x_host, device=dev), mg.tensor(t_host, device=dev))}
    row = Row("unet-forward", "minigen", target=1.5)
    if twins is not None:
        twin = twins.load_minigen_weights(twins.UNet(), model, torch_device).eval()
        engines["torch"] = twins.unet_sample_call(twin, twins.tensor(x_host, torch_device),
                                                  twins.tensor(t_host, torch_device))
        row.torch = "torch"
    nparam = sum(p.size for p in model.parameters())
    return Case(engines, [row], info={"batch": batch, "params": nparam})


def check(settings, twins, torch_device):
    """Same weights, x_t and t: the network output."""
    model, x_host, t_host, batch = _setup(settings)
    dev = settings.device
    twin = twins.load_minigen_weights(twins.UNet(), model, torch_device).eval()
    y = _forward(model, mg.tensor(x_host, device=dev), mg.tensor(t_host, device=dev))()
    ty = twins.unet_sample_call(twin, twins.tensor(x_host, torch_device), twins.tensor(t_host, torch_device))()
    return [("eps_hat", rel_err(y.numpy(), twins.to_numpy(ty)), 1e-5)]

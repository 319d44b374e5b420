"""W7: the ``ddpm`` family's DDIM-50 sampling of 256 images with the W3 UNet (notes §5.5).

    x_T ~ N(0, I) (256, 1, 28, 28);  for the 50 timesteps tau_i = round(linspace(999, 0, 50)):
        eps_hat = eps_theta(x_t, t),  x0_hat = clip((x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t), -1, 1),
        eps_hat = (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t),
        x_t' = sqrt(ab_t') x0_hat + sqrt(1 - ab_t') eps_hat          (ab_t' = 1 after the last step)

DDIM with eta = 0 (Song, Meng & Ermon 2021, eq. 12 with sigma_t = 0).  minigen runs
the library's own sampler, ``GaussianDiffusion.ddim_sample`` (what the ``ddpm`` family's
``generate`` calls), with the family's defaults: the linear schedule over T = 1000
steps, eps-prediction, x0_hat clipped to [-1, 1], eta = 0; 50 steps instead of the
family's 100.  The PyTorch side is a loop over the twin doing the same update
equations (``tests/torch_twins.py: ddim_sample``) under ``torch.inference_mode()``.
Both draw x_T inside the call and hand back host images.  The network is W3's
UNet (w3_ddpm.py), untrained: the timing does not depend on the weights.

One call is 50 W6 forwards, minutes long on 2 cores: W7 is timed with no warm-up
call and 2 timed calls per engine unless ``--repeats`` says otherwise.
"""
from __future__ import annotations

import numpy as np

import minigen as mg
from minigen import backend
from minigen.models.diffusion import GaussianDiffusion
from minigen.models.diffusion.unet import UNet

from .common import Case, Row, rel_err

NAME = "W7"
TITLE = "DDIM-50 sampling"
T_STEPS = 1000
STEPS = 50
# float32 end to end.  Relative norm of the difference, measured on CPU: ~8e-6 after the first
# step (at t = 999, x0_hat = (x_t - s eps_hat) / a with a = 0.0064 magnifies the network's
# rounding ~150-fold before the clip), ~1e-6 after all 50.  1e-4 leaves room for other BLAS
# orders yet catches a wrong coefficient or timestep (those move the images by 1e-2 and more).
TOLERANCE = 1e-4
CHECK_BATCH = 16


def _setup(settings):
    batch, steps = (2, 3) if settings.quick else (256, STEPS)
    model = UNet(generator=mg.Generator(settings.seed + 1, "cpu")).to(settings.device)
    diffusion = GaussianDiffusion("linear", T=T_STEPS)       # the ddpm family's default process
    return model, diffusion, batch, steps


def _sampler(model, diffusion, shape, steps, seed, device):
    def sample():
        return diffusion.ddim_sample(model, shape, mg.Generator(seed, device), steps=steps, eta=0.0)
    return sample


def build(settings, twins=None, torch_device=None) -> Case:
    model, diffusion, batch, steps = _setup(settings)
    shape = (batch, 1, 28, 28)
    engines = {"minigen": _sampler(model, diffusion, shape, steps, settings.seed, settings.device)}
    row = Row("ddim-50" if not settings.quick else f"ddim-{steps}", "minigen", target=1.5)
    if twins is not None:
        twin = twins.load_minigen_weights(twins.UNet(), model, torch_device).eval()
        alpha_bar = twins.ddpm_schedule("cpu", T_STEPS, twins.torch.float64)
        engines["torch"] = twins.ddim_call(twin, alpha_bar, shape, steps, torch_device)
        row.torch = "torch"
    nparam = sum(p.size for p in model.parameters())
    return Case(engines, [row], info={"batch": batch, "steps": steps, "params": nparam},
                timing={"min_warmup": 0, "warmup_s": 0.0, "min_repeats": 2})


def check(settings, twins, torch_device):
    """Same weights and x_T (16 images): the images after the first step and after all 50."""
    model, diffusion, batch, steps = _setup(settings)
    shape = (min(batch, CHECK_BATCH), 1, 28, 28)       # all 50 steps, fewer images: seconds, not minutes
    dev = settings.device
    # ddim_sample draws x_T first from its generator: the same seed gives the twin the same x_T
    x_T = backend.to_numpy(mg.Generator(settings.seed, dev).normal(shape, dtype=np.float32, device=dev))
    twin = twins.load_minigen_weights(twins.UNet(), model, torch_device).eval()
    alpha_bar = twins.ddpm_schedule("cpu", T_STEPS, twins.torch.float64)
    out = []
    for n in sorted({1, steps}):
        ours = _sampler(model, diffusion, shape, n, settings.seed, dev)()
        theirs = twins.to_numpy(twins.ddim_sample(twin, alpha_bar, twins.tensor(x_T, torch_device), n))
        out.append((f"images after {n} step(s)", rel_err(ours, theirs), TOLERANCE))
    return out

"""Diffusion models (notes §5-5.6): the fixed forward process, the learned reverse process, samplers,
and the two denoisers.

    schedule.py   beta schedules and every derived coefficient, in float64 (§5.1)
    ddpm.py       GaussianDiffusion: q_sample, the posterior, eps/x0/v objectives, the exact bound
                  in bits/dim, ancestral (DDPM) and DDIM sampling, classifier-free guidance (§5.1-5.5)
    unet.py       the UNet denoiser with a sinusoidal time embedding (§5.6)
    dit.py        the DiT denoiser: patches as tokens, adaLN-Zero conditioning (§5.6)

Read them in the order schedule, ddpm (up to its training step, Algorithm 1 of Ho et al.), unet,
dit.  The command-line families ddpm, dit, cddpm and cdit are in ``minigen/families/diffusion.py``.
"""
from .schedule import DiffusionSchedule, extract, make_beta_schedule
from .unet import UNet, timestep_embedding
from .dit import DiT
from .ddpm import DiffusionConfig, GaussianDiffusion, build_denoiser, train_step

__all__ = ["DiffusionSchedule", "extract", "make_beta_schedule", "GaussianDiffusion", "UNet", "DiT",
           "timestep_embedding", "DiffusionConfig", "build_denoiser", "train_step"]

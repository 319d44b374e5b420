"""Latent diffusion on the command line: ``ldm`` and the class-conditional ``cldm``.

Notes §5.6 and §5.7.  The model, its sampler, its bound and both training
steps are in ``minigen/models/ldm.py``; this file says how one run drives them.

Two phases in one run (when ``first_stage`` is empty, the default):

    steps 1 .. first_stage_steps          the KL autoencoder (``ldm.first_stage_step``),
                                          on uniformly dequantized digits;
    at the first step after that          the first stage is frozen: the decoder's variance
                                          and the scale factor s = 1 / std(z) are computed
                                          from the whole training set (z ~ q(z|x), one fixed
                                          seed) and kept in the checkpoint;
    steps first_stage_steps + 1 .. steps  the latent diffusion (``ldm.latent_diffusion_step``):
                                          warm-up, Adam, gradient clipping, EMA, as ``ddpm``.

With ``--first-stage runs/NAME`` (a finished ``vae`` or ``conv-vae`` run) that
VAE is the frozen first stage instead (its vector code gets the MLP denoiser),
the run has one phase, and the images are binarized or dequantized as its
decoder expects.  An ``ldm``/``cldm`` run past its first phase serves too: its
KL autoencoder, trained once, under a new diffusion model.  The weights are
copied into this run's checkpoint, but the directory must stay where it is
(its config rebuilds the network).

Samples and evaluation use the EMA weights.  Before the diffusion phase the
sample grids show the untrained second stage (noise through the decoder).
``evaluate`` reports the two-stage bound in bits/dim (labelled ``bound``: an
upper bound on -log2 p(x), never the likelihood), the first stage's own bound
under the N(0, I) prior, its reconstruction error and the latent loss.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from .. import backend, optim
from ..autograd import Tensor, no_grad
from ..checkpoint import CheckpointError, load_tree
from ..data import transforms
from ..metrics.likelihood import bits_per_dim, dequantized_bits_per_dim
from ..models import ldm, vae
from ..models.diffusion.ddpm import GaussianDiffusion
from .base import Recipe, RunConfig, TrainingError
from .diffusion import DenoiserTrainingOptions

__all__ = ["LDMRunConfig", "LDMRecipe", "ConditionalLDMRecipe", "load_first_stage"]

TEST_DATA_SEED = 1234     # one fixed dequantization / binarization of the test images (as the vae family)
FREEZE_SEED_OFFSET = 7    # the draws z ~ q(z|x) of the scale factor come from Generator(seed + 7)
FIRST_STAGE_FAMILIES = ("vae", "conv-vae", "ldm", "cldm")


@dataclass
class LDMRunConfig(RunConfig, ldm.LDMConfig, DenoiserTrainingOptions):
    first_stage: str = ""             # a vae/conv-vae/ldm run whose first stage to reuse, frozen (empty: train one)
    first_stage_steps: int = 1000     # phase 1: KL autoencoder steps (without first_stage); the rest of `steps` diffuse
    first_stage_lr: float = 1e-3      # Adam learning rate of the autoencoder
    steps: int = 5000                 # all steps of the run: first_stage_steps, then the diffusion
    batch_size: int = 64              # images per step (both phases)
    lr: float = 5e-4                  # Adam learning rate of the denoiser after warm-up
    sample_every: int = 1000          # steps between sample grids
    checkpoint_every: int = 250       # steps between checkpoints

    def validate(self):
        super().validate()
        if not self.first_stage and self.first_stage_steps < 1:
            raise ValueError(f"config: first_stage_steps must be >= 1 when no first_stage run is given, "
                             f"got {self.first_stage_steps}")
        if not (self.first_stage_lr > 0 and math.isfinite(self.first_stage_lr)):
            raise ValueError(f"config: first_stage_lr must be a positive number, got {self.first_stage_lr}")
        if self.first_stage and not os.path.isfile(os.path.join(self.first_stage, "config.json")):
            raise ValueError(f"config: first_stage {self.first_stage!r} is not a run directory (no config.json)")


def load_first_stage(run_dir, image_shape, device):
    """(first stage, its decoder's likelihood) of a finished run, on ``device``: the VAE of a ``vae`` or
    ``conv-vae`` run, or the frozen first stage of an ``ldm``/``cldm`` run (its KL autoencoder, trained
    once and reused for another diffusion model, or the VAE it was itself given)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f)
        family = saved.get("family")
        if family not in FIRST_STAGE_FAMILIES:
            raise TrainingError(f"first_stage {run_dir}: a {family!r} run; the first stage must be one of "
                                f"{', '.join(FIRST_STAGE_FAMILIES)}")
        state = load_tree(os.path.join(run_dir, "checkpoint.npz"))
    except (OSError, ValueError, AttributeError, CheckpointError) as exc:
        raise TrainingError(f"first_stage {run_dir}: cannot read the run ({exc})") from None
    cfg = SimpleNamespace(**saved["config"])
    if family in ("ldm", "cldm"):
        if cfg.first_stage:
            return load_first_stage(cfg.first_stage, image_shape, device)
        if not int(state["recipe"].get("extra", {}).get("frozen", 0)):
            raise TrainingError(f"first_stage {run_dir}: that run has not finished its autoencoder phase")
        model = ldm.KLAutoencoder(image_shape[0], cfg.latent_channels, cfg.ae_channels, tuple(image_shape),
                                  generator=backend.Generator(0, "cpu"))
        key, likelihood = "first_stage", "gaussian"
    else:
        model = vae.build_vae(cfg, tuple(image_shape), 0, generator=backend.Generator(0, "cpu"))
        key, likelihood = "model", cfg.decoder
    try:
        model.load_state_dict(state["recipe"]["modules"][key])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"first_stage {run_dir}: the checkpoint does not fit its config ({exc})") from None
    return model.to(device), likelihood


class LDMRecipe(Recipe):
    """Latent diffusion (Rombach et al. 2022): a frozen autoencoder and a diffusion model on its codes."""

    name = "ldm"
    Config = LDMRunConfig
    description = "latent diffusion: KL autoencoder (or a vae run) + DDPM/DDIM on its codes, notes §5.6-5.7"

    def __init__(self, config, data, device, generator):
        super().__init__(config, data, device, generator)
        self.num_classes = len(data.classes) if self.conditional else None
        self.image_shape = tuple(data.images.shape[1:])       # (C, H, W)
        self.train_images = data.images                       # host (N, C, H, W): the scale factor's data
        init_gen = type(generator)(config.seed, "cpu")
        if config.first_stage:
            self.first_stage, self.likelihood = load_first_stage(config.first_stage, self.image_shape, device)
            latent_shape = getattr(self.first_stage, "latent_shape", None) or (self.first_stage.latent_dim,)
        else:
            try:
                ae = ldm.KLAutoencoder(self.image_shape[0], config.latent_channels, config.ae_channels,
                                       self.image_shape, generator=init_gen)
            except ValueError as exc:
                raise TrainingError(f"config: {exc}") from None
            self.first_stage, self.likelihood = ae.to(device), "gaussian"
            latent_shape = ae.latent_shape
            self.ae_opt = optim.Adam(self.first_stage.parameters(), lr=config.first_stage_lr)
        try:
            net = ldm.build_latent_denoiser(config, latent_shape, self.num_classes, init_gen)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        self.net = net.to(device)
        diffusion = GaussianDiffusion(config.schedule, T=config.T, objective=config.objective,
                                      variance=config.variance)
        self.ldm = ldm.LatentDiffusion(self.first_stage, self.net, diffusion, latent_shape=latent_shape)
        self.opt = optim.Adam(self.net.parameters(), lr=config.lr)
        self.lr_scheduler = (optim.CosineWarmupLR(self.opt, config.warmup, max(config.steps, config.warmup + 1))
                             if config.lr_schedule == "cosine" else optim.LinearWarmupLR(self.opt, config.warmup))
        self.ema = optim.ExponentialMovingAverage(self.net, decay=config.ema_decay, warmup=True)
        self.frozen = False
        self.first_stage_mse = float("nan")
        self.modules = {"first_stage": self.first_stage, "denoiser": self.net}
        self.optimizers = {"adam": self.opt}
        if not config.first_stage:
            self.optimizers["first_stage"] = self.ae_opt
        self.schedulers = {"lr": self.lr_scheduler}
        self.emas = {"denoiser": self.ema}

    # data --------------------------------------------------------------------
    def _observe(self, images, generator):
        """Images in [0, 1] -> what the first stage's decoder models: binary or dequantized pixels."""
        if self.likelihood == "bernoulli":
            return transforms.binarize_dynamic(images, generator)
        return transforms.dequantize(images, generator)

    def prepare(self, x, y, generator):
        return Tensor(self._observe(x.data, generator)), y

    # the phases ----------------------------------------------------------------
    @property
    def in_first_phase(self):
        """True while this run still trains its own autoencoder."""
        return not self.config.first_stage and self.step < self.config.first_stage_steps

    def freeze_first_stage(self):
        """End of phase 1: the scale factor, the reconstruction error and the decoder's variance.

        Every number comes from the whole training set and a generator of its own (seed + 7), so a
        resumed run computes exactly the same ones; the model's random stream is not touched.
        """
        gen = type(self.generator)(self.config.seed + FREEZE_SEED_OFFSET, self.device)
        obs = backend.to_numpy(self._observe(backend.to_device(self.train_images, self.device), gen))
        means, logvars = ldm.encode_dataset(self.first_stage, obs)                       # (N, *code) each
        codes = means + np.exp(0.5 * logvars) * backend.to_numpy(gen.normal(means.shape, dtype=np.float64))
        self.ldm.scale_factor = ldm.latent_scale_factor(codes)
        # the mean squared error of the decoded codes z ~ q(z|x): the first stage's measured error, and
        # (for the KL autoencoder) the variance sigma^2 of its Gaussian decoder in the bound
        self.first_stage_mse = float(np.mean((self.ldm.decode_latents(codes * self.ldm.scale_factor) - obs) ** 2))
        if isinstance(self.first_stage, ldm.KLAutoencoder):
            self.first_stage.set_decoder_variance(self.first_stage_mse)
        self.first_stage.zero_grad()
        self.frozen = True

    def train_step(self, x, y):
        c = self.config
        if self.in_first_phase:
            logs = ldm.first_stage_step(self.first_stage, self.ae_opt, x, c.kl_weight, self.generator)
            return {"loss": logs["loss"], "ae_recon": logs["recon"], "ae_kl": logs["kl"]}
        if not self.frozen:
            self.freeze_first_stage()
        return ldm.latent_diffusion_step(self.ldm, self.opt, x, y if self.conditional else None, self.generator,
                                         c.label_dropout, c.grad_clip, self.lr_scheduler, self.ema)

    def extra_state(self):
        if not self.frozen:
            return {"frozen": 0}
        return {"frozen": 1, "scale_factor": self.ldm.scale_factor, "first_stage_mse": self.first_stage_mse}

    def load_extra_state(self, state):
        self.frozen = bool(int(state.get("frozen", 0)))
        self.ldm.scale_factor = float(state.get("scale_factor", 1.0))
        self.first_stage_mse = float(state.get("first_stage_mse", float("nan")))

    # sampling ----------------------------------------------------------------
    def generate_latents(self, n, generator, labels=None, sampler=None, steps=None, eta=None, guidance_scale=None,
                         record=None):
        """n scaled codes from the EMA denoiser (host), with the config's sampler unless told otherwise."""
        cfg = self.config
        guidance = 1.0 if not self.conditional else (cfg.guidance_scale if guidance_scale is None else guidance_scale)
        with no_grad(), self.ema.average_parameters():
            return self.ldm.sample_latents(n, generator, self.sampling_labels(n, generator, labels),
                                           sampler or cfg.sampler, steps or cfg.sample_steps,
                                           cfg.eta if eta is None else eta, guidance, record=record)

    def decode_latents(self, u):
        """Decoded images of host codes u (n, *latent_shape), host (n, C, H, W) in [0, 1]."""
        return np.clip(self.ldm.decode_latents(u), 0.0, 1.0)

    def sample(self, n, generator, labels=None):
        """n images in [0, 1] (host, NCHW): the latent chain with the EMA weights, then the decoder."""
        return self.decode_latents(self.generate_latents(n, generator, labels))

    def encode_images(self, x, generator):
        """Posterior means and log-variances (host float64 (N, *code)) of host images x in [0, 1], observed
        (binarized or dequantized) with ``generator`` as the first stage's training saw them."""
        obs = self._observe(backend.to_device(np.asarray(x, dtype=np.float32), self.device), generator)
        return ldm.encode_dataset(self.first_stage, backend.to_numpy(obs))

    def reconstruct(self, x):
        """Decoder means at the posterior means of host images x (B, C, H, W) in [0, 1]."""
        means, _ = ldm.encode_dataset(self.first_stage, x)
        return self.decode_latents(means * self.ldm.scale_factor)

    # evaluation --------------------------------------------------------------
    def evaluate(self, x, y, generator, batch=100):
        """The two-stage bound and the first stage's N(0, I) bound in bits/dim (``eval_images`` test digits),
        the reconstruction error, and the latent diffusion loss (EMA weights).

        Units as in the vae family: for a Gaussian decoder (the KL autoencoder) bits/dim of the 8-bit
        digits through uniform dequantization; for a Bernoulli decoder bits/dim of binarized digits.
        """
        n = len(x) if self.config.eval_images == 0 else min(len(x), self.config.eval_images)
        obs = self._observe(np.asarray(x[:n]), backend.Generator(TEST_DATA_SEED, "cpu"))
        y = np.asarray(y[:n], dtype=np.int64)
        num_dims = int(np.prod(obs.shape[1:]))
        parts = {"total": [], "prior_kl": [], "decoder": []}
        losses = []
        with no_grad(), self.ema.average_parameters():
            for start in range(0, n, batch):
                xb = Tensor(backend.to_device(obs[start:start + batch], self.device))
                yb = Tensor(backend.to_device(y[start:start + batch], self.device)) if self.conditional else None
                out = self.ldm.two_stage_bound(xb, yb, generator, progress=self.progress,
                                               desc=f"bound, images {start + 1}-{start + len(xb)} of {n}")
                for key in parts:
                    parts[key].append(out[key])
                losses.append(self.ldm.p_losses(xb, yb, generator).item() * len(xb))
        total, prior_kl, decoder = (np.concatenate(parts[k]) for k in ("total", "prior_kl", "decoder"))

        def bpd(nll):
            if self.likelihood == "bernoulli":
                return float(bits_per_dim(nll.mean(), num_dims))
            return float(dequantized_bits_per_dim(-nll, num_dims).mean())

        recon = self.reconstruct(obs)
        return {"test_bound_bpd": bpd(total), "test_first_stage_bound_bpd": bpd(decoder + prior_kl),
                "test_recon_mse": float(np.mean((recon - obs) ** 2)), "test_latent_loss": float(np.sum(losses) / n),
                "scale_factor": self.ldm.scale_factor, "eval_images": float(n),
                **({"first_stage_mse": self.first_stage_mse} if self.frozen else {})}


class ConditionalLDMRecipe(LDMRecipe):
    """``python -m minigen train cldm``: latent diffusion with labels and classifier-free guidance."""

    name = "cldm"
    description = "class-conditional latent diffusion with classifier-free guidance, notes §4 and §5.6"
    conditional = True

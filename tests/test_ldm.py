"""Latent diffusion (notes §5.6, §5.7): the claims of minigen/models/ldm.py checked, and the ldm/cldm runs.

* the scale factor makes the training codes unit-variance;
* the first stage is frozen in the second phase: no gradient, bit-identical weights;
* decoding the encoder's mean reconstructs test digits within the first stage's measured error;
* with the exact denoiser of a Gaussian code law the latent sampler reproduces that law, never clips,
  and the decoder maps the codes back with the scale undone;
* the two-stage bound is a bound: on a linear-Gaussian model with the exact posterior as encoder and the
  exact denoiser it lies above the data's entropy and close to it; a useless denoiser is far above;
* the prior-hole statistics on codes whose law is (or is not) the prior;
* ldm and cldm through the training loop (both phases), exact resume across the phase boundary,
  evaluation, a vae run reused as first stage, bad configs.
"""
import json
import math
import os

import numpy as np
import pytest

import minigen as mg
from minigen import backend, nn
from minigen.autograd import Tensor, no_grad
from minigen.data import load_dataset
from minigen.data.datasets import IDX_FILES, Dataset
from minigen.data.idx import write_idx
from minigen.distributions import Normal
from minigen.families import FAMILIES, register
from minigen.families.base import TrainingError, make_config
from minigen.families.ldm import ConditionalLDMRecipe, LDMRecipe
from minigen.models import ldm
from minigen.models.diffusion.ddpm import GaussianDiffusion

from test_diffusion_process import MixtureOracle, _moment_errors, linear_gaussian_law

for _recipe in (LDMRecipe, ConditionalLDMRecipe):    # until the families table lists them
    if _recipe.name not in FAMILIES:
        register(_recipe)

from minigen.evaluate import evaluate_run, restore_run  # noqa: E402
from minigen.train import train  # noqa: E402

TINY = dict(steps=6, first_stage_steps=3, batch_size=8, T=20, sample_steps=5, ae_channels=8, latent_channels=2,
            base_channels=8, time_dim=16, mlp_hidden=16, mlp_depth=1, log_every=1, sample_every=0,
            checkpoint_every=3, n_samples=4, eval_samples=0, eval_images=4, warmup=2)


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


def _subset(n=256, split="train"):
    full = load_dataset("mnist", split)
    return Dataset(full.images[:n], full.labels[:n], full.name, split, full.source, full.classes)


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory):
    """A data_dir with 256 training and 64 test digits as IDX files: the runs' freeze and bound stay cheap."""
    root = tmp_path_factory.mktemp("small_mnist")
    for split, n in (("train", 256), ("test", 64)):
        data = _subset(n, split)
        images, labels = IDX_FILES[split]
        write_idx(root / images, np.round(data.images[:, 0] * 255).astype(np.uint8))
        write_idx(root / labels, data.labels.astype(np.uint8))
    return {**TINY, "data_dir": str(root)}


def _recipe(data, **overrides):
    config = make_config(LDMRecipe, {**TINY, **overrides})
    return LDMRecipe(config, data, "cpu", backend.Generator(config.seed, "cpu"))


def _train_steps(recipe, data, steps, batch=8, seed=5):
    """Drive the recipe as the loop does (prepare, train_step, step count) on batches of ``data``."""
    gen = backend.Generator(seed, "cpu")
    for _ in range(steps):
        rows = backend.to_numpy(gen.integers(0, len(data), shape=(batch,)))
        x, y = recipe.prepare(Tensor(data.images[rows]), Tensor(data.labels[rows].astype(np.int64)), gen)
        logs = recipe.train_step(x, y)
        recipe.step += 1
    return logs


# ----------------------------------------------------------------------------
# the scale factor
# ----------------------------------------------------------------------------

class ShiftedCodes(nn.Module):
    """A first stage whose codes are known: q(z | x) = N(3 x[:, :d] + 1, 0.01 I) on the first d pixels."""

    def __init__(self, d=6):
        super().__init__()
        self.latent_dim = d
        self.register_buffer("unused", Tensor(np.zeros(1, np.float32)))

    def encode(self, x, y=None):
        mean = 3.0 * x.reshape(len(x), -1)[:, 200:200 + self.latent_dim] + 1.0
        return Normal(mean, mg.tensor(np.full(mean.shape, math.log(0.01), np.float32)))


def test_scale_factor_gives_unit_variance_codes():
    images = _subset(1000).images
    stage = ShiftedCodes()
    means, logvars = ldm.encode_dataset(stage, images)
    codes = means + np.exp(0.5 * logvars) * np.random.default_rng(0).standard_normal(means.shape)
    assert abs(codes.std() - 1.0) > 0.2                       # the raw codes are not unit-variance ...
    s = ldm.latent_scale_factor(codes)
    model = ldm.LatentDiffusion(stage, None, None, scale_factor=s)
    fresh = model.encode(mg.tensor(images), backend.Generator(3, "cpu")).numpy()   # new draws of z ~ q(z|x)
    assert abs(fresh.std() - 1.0) < 0.01                      # ... the scaled ones are
    with pytest.raises(ValueError, match="standard deviation"):
        ldm.latent_scale_factor(np.ones((5, 3)))


def test_recipe_trains_the_diffusion_on_unit_variance_codes():
    data = _subset()
    recipe = _recipe(data)
    _train_steps(recipe, data, 4)                              # 3 autoencoder steps, then the first diffusion step
    assert recipe.frozen and recipe.ldm.scale_factor != 1.0
    obs = recipe._observe(data.images, backend.Generator(9, "cpu"))
    u = recipe.ldm.encode(mg.tensor(obs), backend.Generator(10, "cpu")).numpy()
    assert u.shape == (len(data), 2, 7, 7)
    assert abs(u.std() - 1.0) < 0.02


# ----------------------------------------------------------------------------
# the frozen first stage; reconstructions
# ----------------------------------------------------------------------------

def test_first_stage_is_frozen_in_the_second_phase():
    data = _subset()
    recipe = _recipe(data)
    _train_steps(recipe, data, 3)                              # phase 1: the autoencoder trains
    before = {k: v.data.copy() for k, v in recipe.first_stage.state_dict().items() if k != "decoder_logvar"}
    denoiser_before = [p.data.copy() for p in recipe.net.parameters()]
    logs = _train_steps(recipe, data, 3)                       # phase 2
    assert "grad_norm" in logs and logs["grad_norm"] > 0
    assert all(p.grad is None for p in recipe.first_stage.parameters())
    after = recipe.first_stage.state_dict()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key].data, value)
    # the denoiser did train (so the check above is not vacuous)
    assert any(not np.array_equal(p.data, b) for p, b in zip(recipe.net.parameters(), denoiser_before))


def test_decoding_the_encoder_mean_reconstructs_test_digits_within_the_measured_error():
    data = _subset(256)
    recipe = _recipe(data, first_stage_steps=100, steps=101, batch_size=32, first_stage_lr=3e-3)
    _train_steps(recipe, data, 101, batch=32)
    measured = recipe.first_stage_mse                          # training images, decoded z ~ q(z|x), at the freeze
    test = _subset(64, "test").images
    recon = recipe.reconstruct(test)                           # decoder mean at the encoder's mean
    assert recon.shape == test.shape and recon.min() >= 0.0 and recon.max() <= 1.0
    test_mse = float(np.mean((recon - test) ** 2))
    blank = float(np.mean((data.images.mean(0) - test) ** 2))  # the best constant image
    assert test_mse < 1.5 * measured, (test_mse, measured)
    assert test_mse < 0.6 * blank, (test_mse, blank)


# ----------------------------------------------------------------------------
# the sampler with the exact denoiser of a Gaussian code law
# ----------------------------------------------------------------------------

class LinearDecoder(nn.Module):
    """A first stage with a linear decoder x = A z + b (images (B, 1, 2, 2)) and codes z (B, 2)."""

    def __init__(self, A, b, dtype=np.float32):
        super().__init__()
        self.latent_dim = 2
        self.A, self.b = np.asarray(A, np.float64), np.asarray(b, np.float64)
        self.register_buffer("weight", Tensor(self.A.T.astype(dtype)))           # (2, 4)
        self.register_buffer("bias", Tensor(self.b.astype(dtype)))

    def decode(self, z, y=None):
        x = (z @ self.weight + self.bias).reshape(len(z), 1, 2, 2)
        return Normal(x, mg.zeros(x.shape, dtype=x.dtype))


CODE_MU = np.array([1.6, -1.3])                 # outside [-1, 1]: a clipping sampler would get it wrong
CODE_COV = np.array([[0.3, 0.12], [0.12, 0.2]])


@pytest.mark.parametrize("sampler,objective,steps", [("ddpm", "eps", None), ("ddim", "v", 100)])
def test_latent_sampler_reproduces_a_gaussian_code_law(sampler, objective, steps):
    n, T, s = 4000, 200, 2.5
    d = GaussianDiffusion("linear", T=T, objective=objective)
    oracle = MixtureOracle(d, [1.0], [CODE_MU], [CODE_COV])   # exact E[u_0 | u_t] for u_0 ~ N(mu, S)
    stage = LinearDecoder([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0], [-1.0, 1.0]], [0.1, 0.2, 0.3, 0.4])
    model = ldm.LatentDiffusion(stage, oracle, d, scale_factor=s)
    u = model.sample_latents(n, backend.Generator(1, "cpu"), sampler=sampler, steps=steps)
    assert u.shape == (n, 2) and oracle.calls == (T if sampler == "ddpm" else steps)
    law_mean, law_cov = linear_gaussian_law(d, CODE_MU, CODE_COV, sampler, steps)
    err_mean, err_cov = _moment_errors(u.astype(np.float64), law_mean, law_cov)
    assert err_mean.max() < 4.5 and err_cov.max() < 4.5, (u.mean(0), np.cov(u.T), law_mean, law_cov)
    np.testing.assert_allclose(law_cov, CODE_COV, rtol=0.1)     # the discretized law is the code law (DDIM: narrower)
    # the full sampler: the same chain, then x = A (u / s) + b
    x = model.sample(n, backend.Generator(1, "cpu"), sampler=sampler, steps=steps)
    assert x.shape == (n, 1, 2, 2)
    np.testing.assert_allclose(x.reshape(n, 4), (u / s) @ stage.A.T + stage.b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# the two-stage bound
# ----------------------------------------------------------------------------

class LinearGaussianFirstStage(LinearDecoder):
    """x = A z + b + sigma eps with z ~ N(mu, S): the exact posterior q(z | x) as the encoder.

    With S diagonal and A's columns orthogonal the posterior covariance (S^-1 + A^T A / sigma^2)^-1
    is diagonal, so the encoder is exact and the bound's only slack is the diffusion's.
    """

    def __init__(self, A, b, mu, S, sigma):
        super().__init__(A, b, dtype=np.float64)
        self.mu, self.S, self.sigma2 = np.asarray(mu), np.asarray(S), sigma * sigma
        self.post_cov = np.linalg.inv(np.linalg.inv(self.S) + self.A.T @ self.A / self.sigma2)
        assert np.allclose(self.post_cov, np.diag(np.diag(self.post_cov)))

    def encode(self, x, y=None):
        xs = x.numpy().reshape(len(x), 4) - self.b
        mean = (np.linalg.solve(self.S, self.mu) + xs @ self.A / self.sigma2) @ self.post_cov.T
        logvar = np.broadcast_to(np.log(np.diag(self.post_cov)), mean.shape)
        return Normal(mg.tensor(mean), mg.tensor(np.ascontiguousarray(logvar)))

    def decode(self, z, y=None):
        x = (z @ self.weight + self.bias).reshape(len(z), 1, 2, 2)
        return Normal(x, mg.full(x.shape, math.log(self.sigma2), dtype=x.dtype))

    def draw(self, n, rng):
        z = rng.multivariate_normal(self.mu, self.S, size=n)
        return z @ self.A.T + self.b + math.sqrt(self.sigma2) * rng.standard_normal((n, 4))

    def entropy(self):
        """H(x) of the data law N(A mu + b, A S A^T + sigma^2 I), in nats."""
        C = self.A @ self.S @ self.A.T + self.sigma2 * np.eye(4)
        return 0.5 * np.linalg.slogdet(2 * math.pi * math.e * C)[1]


class Zero(nn.Module):
    """A useless denoiser: predicts eps = 0 everywhere."""

    def forward(self, x, t, y=None):
        return mg.zeros(x.shape, dtype=x.dtype)


@pytest.mark.parametrize("variance,slack", [("fixed_large", 0.15), ("fixed_small", 2.5)])
def test_two_stage_bound_is_an_upper_bound_and_tight_with_exact_parts(variance, slack):
    # Codes of unit scale after s = 2 (as the scale factor makes them).  With the reverse variance
    # beta_t ("fixed_large") the exact denoiser's bound is within 0.1 nats of -log p; with the posterior's
    # beta~_t ("fixed_small") each reverse step near t = 0 is too narrow and the bound is looser by
    # about 0.5 nats per code dimension for T = 1000 (more for T = 200): a property of the fixed variance.
    mu, S, s = np.array([0.8, -0.5]), np.diag([0.25, 0.2]), 2.0
    A = np.array([[1.0, 0.0], [0.0, 1.5], [1.0, 0.0], [0.0, -1.5]])
    stage = LinearGaussianFirstStage(A, [0.1, -0.2, 0.3, 0.0], mu, S, sigma=0.3)
    d = GaussianDiffusion("linear", T=200, dtype="float64", variance=variance)
    oracle = MixtureOracle(d, [1.0], [s * mu], [s * s * S])   # exact denoiser of the scaled codes u = s z
    x = mg.tensor(stage.draw(2000, np.random.default_rng(0)).reshape(2000, 1, 2, 2))
    exact = ldm.LatentDiffusion(stage, oracle, d, scale_factor=s).two_stage_bound(x, generator=mg.Generator(1))
    np.testing.assert_allclose(exact["total"], exact["decoder"] - exact["entropy"] + exact["latent"])
    mean, se = exact["total"].mean(), exact["total"].std() / math.sqrt(len(exact["total"]))
    entropy = stage.entropy()
    # no model's bound beats the data's entropy; with every part exact the gap is the diffusion's own
    # (the scale's log-Jacobian D log s = 2 log 2 with the wrong sign, 2.8 nats too high, would show)
    assert mean > entropy - 4 * se, (mean, entropy, se)
    assert mean < entropy + slack + 4 * se, (mean, entropy, se)
    useless = ldm.LatentDiffusion(stage, Zero(), d, scale_factor=s).two_stage_bound(x, generator=mg.Generator(1))
    assert useless["total"].mean() > mean + 1.0
    # the first stage's own bound under N(0, I) (decoder + prior KL) is a bound too
    assert (exact["decoder"] + exact["prior_kl"]).mean() > entropy - 4 * se


# ----------------------------------------------------------------------------
# the prior hole
# ----------------------------------------------------------------------------

def test_gaussian_log_density_matches_the_direct_formula():
    rng = np.random.default_rng(0)
    z, means, logvars = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    direct = -0.5 * (np.log(2 * np.pi) + logvars[None] + (z[:, None] - means[None]) ** 2 / np.exp(logvars[None]))
    np.testing.assert_allclose(ldm.gaussian_log_density(z, means, logvars, chunk=3), direct.sum(-1), rtol=1e-12)


def test_prior_hole_terms_on_aggregates_with_known_answers():
    rng = np.random.default_rng(1)
    n, d = 1000, 2
    gen = backend.Generator(2, "cpu")
    # every image has the same posterior N(mu, 0.2 I): q_N is that Gaussian, I_N = 0, the KL is analytic
    mu, var = np.array([0.5, -0.3]), 0.2
    same = np.broadcast_to(mu, (n, d)), np.full((n, d), math.log(var))
    one = ldm.prior_hole(*same, *same, gen)
    exact = 0.5 * np.sum(var + mu ** 2 - 1 - math.log(var))
    np.testing.assert_allclose([one["marginal_kl"], one["moment_kl"], one["rate"]], exact, atol=0.05)
    assert abs(one["mutual_info"]) < 0.05
    # far-apart, sharp posteriors: z tells which image it came from, I_N = log N
    sharp = 5 * rng.standard_normal((n, d)), np.full((n, d), math.log(1e-6))
    assert abs(ldm.prior_hole(*sharp, *sharp, gen)["mutual_info"] - math.log(n)) < 0.05


def test_prior_hole_is_small_when_codes_fill_the_prior_and_large_when_they_do_not():
    rng = np.random.default_rng(1)
    n, d = 1000, 2
    logvar = np.full((n, d), math.log(0.05))
    gen = backend.Generator(2, "cpu")
    # codes whose aggregate is N(0, 1.05 I): almost the prior
    full = ldm.prior_hole(rng.standard_normal((n, d)), logvar, rng.standard_normal((n, d)), logvar, gen)
    # codes squeezed to a ring of radius 1.5: the centre of N(0, I) is a hole
    angle = rng.uniform(0, 2 * np.pi, (3, n))
    ring = [1.5 * np.stack([np.cos(a), np.sin(a)], 1) for a in angle]
    fresh = ring[2] + math.sqrt(0.05) * rng.standard_normal((n, d))     # new draws of the same q(z)
    holey = ldm.prior_hole(ring[0], logvar, ring[1], logvar, gen, draws={"ring": fresh})
    assert full["moment_kl"] < 0.02 and full["marginal_kl"] < 0.2 and full["in_hole_prior"] < 0.05
    assert holey["in_hole_prior"] > 0.3 and holey["marginal_kl"] > full["marginal_kl"] + 0.5
    assert holey["log_q_prior"] < holey["log_q_codes"] - 1.0
    # fresh draws of the aggregated posterior itself fall in the hole as rarely as the held-out codes
    assert holey["in_hole_ring"] < 0.05 and abs(holey["log_q_ring"] - holey["log_q_codes"]) < 0.2
    # the moment version is a lower bound on the KL (up to Monte-Carlo noise)
    assert holey["moment_kl"] < holey["marginal_kl"] + 0.05
    # the rate splits into mutual information and marginal KL (Hoffman & Johnson 2016), 0 <= I_N <= log N
    np.testing.assert_allclose(holey["rate"], holey["mutual_info"] + holey["marginal_kl"])
    assert -0.05 < holey["mutual_info"] <= holey["log_n"]
    # the prior's own density hardly tells codes from prior draws (both in its typical set); q_N does
    assert abs(holey["log_p_codes"] - holey["log_p_prior"]) < 0.5
    np.testing.assert_allclose(full["log_p_prior"], -(math.log(2 * math.pi) + 1.0), atol=0.1)


# ----------------------------------------------------------------------------
# the families through the training loop
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_mnist):
    root = tmp_path_factory.mktemp("ldm_runs")
    out = {}
    for family, cut in (("ldm", 3), ("cldm", 4)):
        out[family] = train(family, dict(small_mnist), out_dir=str(root / family), progress=False, verbose=False)
        out[f"{family}-cut"] = train(family, {**small_mnist, "steps": cut}, out_dir=str(root / f"{family}-cut"),
                                     progress=False, verbose=False)
        out[f"{family}-cut-at"] = cut
    return out


@pytest.mark.parametrize("family", ["ldm", "cldm"])
def test_families_train_sample_evaluate_and_resume_exactly(runs, family):
    full, cut = runs[family], runs[f"{family}-cut"]
    losses = _losses(full)
    assert len(losses) == 6 and np.all(np.isfinite(losses))
    rows = [json.loads(line) for line in open(os.path.join(full, "metrics.jsonl")) if '"loss"' in line]
    assert all("ae_recon" in r for r in rows[:3]) and all("grad_norm" in r for r in rows[3:])
    # resume from a checkpoint at (ldm) or after (cldm) the phase boundary: the same numbers, step for step
    train(None, {"steps": 6}, resume=cut, progress=False, verbose=False)
    np.testing.assert_array_equal(_losses(full), _losses(cut))
    a, b = restore_run(full)[0], restore_run(cut)[0]
    assert a.ldm.scale_factor == b.ldm.scale_factor and a.frozen and b.frozen
    # the first stage stayed what it was at the end of phase 1
    theirs = b.first_stage.state_dict()
    for key, value in a.first_stage.state_dict().items():
        np.testing.assert_array_equal(value.data, theirs[key].data)
    labels = [0, 3, 9] if a.conditional else None
    images = a.sample(3, mg.Generator(0), labels=labels)
    assert images.shape == (3, 1, 28, 28) and images.min() >= 0.0 and images.max() <= 1.0
    results = evaluate_run(full, eval_samples=0, verbose=False)
    assert results["eval_images"] == 4 and math.isfinite(results["test_bound_bpd"]) and results["first_stage_mse"] > 0
    assert results["test_bound_bpd"] > 0 and results["test_first_stage_bound_bpd"] > 0
    assert results["scale_factor"] == a.ldm.scale_factor


def test_a_vae_run_serves_as_the_first_stage(tmp_path, small_mnist):
    vae_run = train("vae", dict(steps=3, batch_size=8, latent_dim=5, hidden=16, log_every=1, sample_every=0,
                                checkpoint_every=3, n_samples=4, data_dir=small_mnist["data_dir"]),
                    out_dir=str(tmp_path / "vae"), progress=False, verbose=False)
    run = train("ldm", {**small_mnist, "first_stage": vae_run, "steps": 3}, out_dir=str(tmp_path / "ldm"),
                progress=False, verbose=False)
    recipe = restore_run(run)[0]
    assert isinstance(recipe.net, ldm.MLPDenoiser) and recipe.ldm.latent_shape == (5,)
    assert "first_stage" not in recipe.optimizers and recipe.likelihood == "bernoulli"
    vae_state = restore_run(vae_run)[0].model.state_dict()
    for key, value in recipe.first_stage.state_dict().items():    # frozen from step 1: the vae's own weights
        np.testing.assert_array_equal(value.data, vae_state[key].data)
    images = recipe.sample(2, mg.Generator(0))
    assert images.shape == (2, 1, 28, 28) and images.min() >= 0.0 and images.max() <= 1.0
    assert all("grad_norm" in json.loads(line) for line in open(os.path.join(run, "metrics.jsonl")) if '"loss"' in line)
    other = tmp_path / "gan"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"family": "gan", "config": {}}))
    with pytest.raises(TrainingError, match="first stage must be one of vae, conv-vae, ldm, cldm"):
        train("ldm", {**small_mnist, "first_stage": str(other)}, out_dir=str(tmp_path / "bad"), progress=False,
              verbose=False)


def test_an_ldm_runs_autoencoder_is_reused_by_a_new_diffusion_model(runs, tmp_path, small_mnist):
    run = train("ldm", {**small_mnist, "first_stage": runs["ldm"], "steps": 2, "base_channels": 16},
                out_dir=str(tmp_path / "reuse"), progress=False, verbose=False)
    old, new = restore_run(runs["ldm"])[0], restore_run(run)[0]
    assert isinstance(new.first_stage, ldm.KLAutoencoder) and "first_stage" not in new.optimizers
    theirs = old.first_stage.state_dict()
    for key, value in new.first_stage.state_dict().items():
        np.testing.assert_array_equal(value.data, theirs[key].data)
    assert new.frozen and np.isclose(new.ldm.scale_factor, old.ldm.scale_factor, rtol=1e-6)
    with pytest.raises(TrainingError, match="not finished its autoencoder phase"):
        young = train("ldm", {**small_mnist, "steps": 2}, out_dir=str(tmp_path / "young"), progress=False,
                      verbose=False)
        train("ldm", {**small_mnist, "first_stage": young}, out_dir=str(tmp_path / "x"), progress=False, verbose=False)


@pytest.mark.parametrize("bad, match", [({"kl_weight": -1.0}, "kl_weight"), ({"objective": "score"}, "objective"),
                                        ({"sample_steps": 2000}, "sample_steps"), ({"ae_channels": 7}, "even"),
                                        ({"first_stage_steps": 0}, "first_stage_steps"),
                                        ({"first_stage": "/nonexistent/run"}, "not a run directory"),
                                        ({"base_channels": 12}, "groups"),
                                        ({"lr_schedule": "step"}, "lr_schedule")])
def test_bad_configs_are_refused(tmp_path, small_mnist, bad, match):
    with pytest.raises(TrainingError, match=match):
        train("ldm", {**small_mnist, **bad}, out_dir=str(tmp_path / "x"), progress=False, verbose=False)


def test_prior_hole_example_smoke(tmp_path):
    """examples/ldm_prior_hole.py --quick trains its two tiny runs and writes the table, the JSON and the picture."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg",
               OPENBLAS_NUM_THREADS="1")
    out = tmp_path / "ldm"
    proc = subprocess.run([sys.executable, os.path.join(root, "examples", "ldm_prior_hole.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.load(open(out / "prior_hole.json"))
    assert [r["sampler"] for r in result["rows"]] == ["prior", "posterior", "gmm", "ldm"]
    assert all(math.isfinite(r["fld"]) for r in result["rows"]) and "latent diffusion" in (out / "prior_hole.md").read_text()
    with open(out / "prior_hole.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

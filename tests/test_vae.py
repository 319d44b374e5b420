"""Variational autoencoders (minigen/models/vae.py, notes §2 and §4).

The notes' claims, checked on a model whose posterior is tractable: a
linear-Gaussian decoder p(x|z) = N(W z + b, s2 I) with p(z) = N(0, I) has
p(x) = N(b, W W^T + s2 I) and, when W has orthogonal columns, a diagonal
Gaussian posterior.  There (notes §2.3):

* ELBO <= log p(x), and the gap is exactly KL(q(z|x) || p(z|x));
* with q the true posterior every importance weight equals p(x): ELBO = log p(x);
* L_k is non-decreasing in k on average and approaches log p(x).

Then the registered families: each trains a few steps through the real loop
and its loss falls; evaluation, sampling, reconstructions, interpolation, the
2-D manifold and the conditional model's labels; error paths.
"""
import json
import math
import os

import numpy as np
import pytest

import minigen as mg
from minigen import backend, nn
from minigen.distributions import Normal
from minigen.evaluate import evaluate_run
from minigen.functional import one_hot
from minigen.models.vae import VAE, VAEConfig, build_vae, importance_weighted_bound, latent_manifold, reparameterize
from minigen.testing import gradcheck
from minigen.train import TrainingError, families, make_config, train

from helpers import tensor

D, LATENT = 3, 2


def np_(x):
    return backend.to_numpy(x.data if isinstance(x, mg.Tensor) else x)


# ----------------------------------------------------------------------------
# a linear-Gaussian model with a tractable posterior
# ----------------------------------------------------------------------------

class LinearEncoder(nn.Module):
    """q(z|x) = N(A x + c, diag exp(logvar))."""

    def __init__(self, A, c, logvar):
        super().__init__()
        self.A, self.c, self.logvar = nn.Parameter(A), nn.Parameter(c), nn.Parameter(logvar)

    def forward(self, x, y=None):
        return Normal(x @ self.A.T + self.c, self.logvar)


class LinearGaussianDecoder(nn.Module):
    """p(x|z) = N(W z + b, s2 I)."""

    def __init__(self, W, b, s2):
        super().__init__()
        self.W, self.b = nn.Parameter(W), nn.Parameter(b)
        self.register_buffer("logvar", mg.Tensor(np.full(W.shape[0], math.log(s2))))

    def forward(self, z, y=None):
        return Normal(z @ self.W.T + self.b, self.logvar)


def linear_gaussian(device, shift=0.0, widen=0.0, seed=0):
    """(model, x, exact log p(x), KL(q || true posterior)) for 2 data points.

    shift/widen move q's mean and log-variance away from the true posterior.
    """
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    s, s2 = np.array([2.0, 0.7]), 0.3
    W, b = Q[:, :LATENT] * s, rng.normal(size=D)                    # orthogonal columns: W^T W = diag(s^2)
    post_var = 1.0 / (s ** 2 / s2 + 1.0)                            # (W^T W / s2 + I)^-1, diagonal
    A, c = post_var[:, None] * W.T / s2, -(post_var[:, None] * W.T / s2) @ b   # posterior mean = A x + c
    x = rng.normal(size=(2, D)) * 2.0 + b
    enc = LinearEncoder(A, c + shift, np.log(post_var) + widen)
    model = VAE(enc, LinearGaussianDecoder(W, b, s2), LATENT).to(device)
    cov = W @ W.T + s2 * np.eye(D)
    diff = x - b
    log_px = -0.5 * (D * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1]
                     + np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff))
    post_mean = x @ A.T + c
    q_mean, q_var = post_mean + shift, post_var * np.exp(widen)
    kl_to_post = 0.5 * (np.log(post_var / q_var) + (q_var + (q_mean - post_mean) ** 2) / post_var - 1).sum(-1)
    return model, tensor(x, device), log_px, kl_to_post


def test_elbo_equals_log_px_when_q_is_the_true_posterior(device):
    model, x, log_px, kl = linear_gaussian(device)
    np.testing.assert_allclose(kl, 0.0, atol=1e-12)
    # every importance weight p(x, z) / q(z|x) equals p(x): the bound is tight draw by draw
    log_w = np_(model.log_importance_weights(x, k=50, generator=mg.Generator(0, device)))
    np.testing.assert_allclose(log_w, np.broadcast_to(log_px, log_w.shape), rtol=1e-10)
    np.testing.assert_allclose(np_(model.elbo(x, generator=mg.Generator(1, device), kl="mc").elbo), log_px,
                               rtol=1e-10)
    np.testing.assert_allclose(np_(model.iwae_bound(x, k=7, generator=mg.Generator(1, device))), log_px, rtol=1e-10)
    # with the closed-form KL only E_q[log p(x|z)] is estimated: its mean over draws is log p(x)
    draws = np.stack([np_(model.elbo(x, generator=mg.Generator(i, device)).elbo) for i in range(400)])
    se = draws.std(0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - log_px) < 4 * se)


def test_elbo_gap_is_the_kl_to_the_true_posterior(device):
    model, x, log_px, kl = linear_gaussian(device, shift=0.6, widen=0.8)
    assert np.all(kl > 0.3)
    gen = mg.Generator(2, device)
    for kind in ("analytic", "mc"):
        draws = np.stack([np_(model.elbo(x, generator=gen, kl=kind).elbo) for _ in range(500)])
        se = draws.std(0, ddof=1) / np.sqrt(len(draws))
        assert np.all(draws.mean(0) < log_px)                            # ELBO <= log p(x) ...
        assert np.all(np.abs(draws.mean(0) - (log_px - kl)) < 4 * se)    # ... short by exactly the KL


def test_iwae_bound_increases_with_k_towards_log_px(device):
    model, x, log_px, kl = linear_gaussian(device, shift=0.6, widen=0.8)
    reps, ks = 300, [1, 4, 16, 64, 256]
    means, ses = [], []
    gen = mg.Generator(3, device)
    for k in ks:
        log_w = np_(model.log_importance_weights(x, k=reps * k, generator=gen)).reshape(reps, k, -1)
        lk = np.log(np.mean(np.exp(log_w - log_w.max(1, keepdims=True)), axis=1)) + log_w.max(1)   # (reps, B)
        means.append(lk.mean(0))
        ses.append(lk.std(0, ddof=1) / np.sqrt(reps))
    means, ses = np.array(means), np.array(ses)
    # E[L_k] is non-decreasing in k (within the noise of the estimates) and below log p(x)
    assert np.all(np.diff(means, axis=0) > -3 * np.sqrt(ses[1:] ** 2 + ses[:-1] ** 2))
    assert np.all(means < log_px + 3 * ses)
    assert np.all(means[-1] - means[0] > 0.5 * kl)            # most of the gap is closed ...
    np.testing.assert_allclose(means[0], log_px - kl, atol=4 * ses[0].max())   # L_1 is the ELBO
    # ... and the batched estimator with k = 5000 (in chunks of 700 codes) is within 0.05 nats
    l5000 = importance_weighted_bound(model, x, k=5000, generator=gen, max_rows=700)
    assert np.all(np.abs(l5000 - log_px) < 0.05), (l5000, log_px)
    assert np.all(l5000 > means[0])


def test_gradients_of_elbo_and_iwae_bound_through_the_reparameterization():
    model, x, _, _ = linear_gaussian("cpu", shift=0.3, widen=0.5)
    A, c, lv = (np_(p) for p in (model.encoder.A, model.encoder.c, model.encoder.logvar))

    def bound(A, c, lv, which):
        # q(z|x) built from the checked tensors themselves, so the graph reaches them
        m = VAE(lambda x, y=None: Normal(x @ A.T + c, lv), model.decoder, LATENT)
        gen = mg.Generator(4)
        if which == "elbo":
            return m.elbo(x, generator=gen).elbo
        return m.iwae_bound(x, k=3, generator=gen)

    gradcheck(lambda A, c, lv: bound(A, c, lv, "elbo"), [A, c, lv])
    gradcheck(lambda A, c, lv: bound(A, c, lv, "iwae"), [A, c, lv])


def test_reparameterize_is_the_notes_formula(device):
    mean, logvar = tensor([[0.5, -1.0]], device), tensor([[0.2, -3.0]], device)
    z = np_(reparameterize(mean, logvar, mg.Generator(11, device)))
    eps = backend.to_numpy(mg.Generator(11, device).normal((1, 2), dtype=np.float64))
    np.testing.assert_allclose(z, np_(mean) + np.exp(0.5 * np_(logvar)) * eps, rtol=1e-14)


# ----------------------------------------------------------------------------
# the image models: shapes, decoders, conditioning
# ----------------------------------------------------------------------------

def small_model(decoder="bernoulli", num_classes=0, arch="mlp", latent_dim=2, decoder_var="learned"):
    cfg = VAEConfig(arch=arch, latent_dim=latent_dim, hidden=8, decoder=decoder, decoder_var=decoder_var)
    return build_vae(cfg, (1, 28, 28), num_classes, generator=mg.Generator(0))


def test_decoders_sampling_reconstruction_interpolation_and_manifold():
    x = mg.Tensor(backend.Generator(0).uniform((3, 1, 28, 28)) > 0.5).astype(np.float32)
    for decoder, var in [("bernoulli", "learned"), ("gaussian", "learned"), ("gaussian", "fixed")]:
        model = small_model(decoder, decoder_var=var)
        names = [n for n, _ in model.named_parameters()]
        assert ("decoder.logvar" in names) == (decoder == "gaussian" and var == "learned")
        out = model.elbo(x, generator=mg.Generator(1))
        assert out.elbo.shape == (3,) and np.all(np.isfinite(np_(out.elbo)))
        np.testing.assert_allclose(np_(out.elbo), np_(out.log_px_z) - np_(out.kl), rtol=1e-6)
        assert model.sample(5, mg.Generator(2)).shape == (5, 1, 28, 28)
    model = small_model()
    strip = np_(model.interpolate(x[:2], x[1:], steps=5))
    assert strip.shape == (2, 5, 1, 28, 28)
    recon = np_(model.reconstruct(x))
    np.testing.assert_allclose(strip[:, 0], recon[:2], rtol=1e-5)    # a = 0 decodes mu(x0) ...
    np.testing.assert_allclose(strip[:, -1], recon[1:], rtol=1e-5)   # ... and a = 1 decodes mu(x1)
    grid = latent_manifold(model, n=4)
    assert grid.shape == (16, 1, 28, 28) and grid.min() >= 0 and grid.max() <= 1


def test_conditional_vae_uses_its_labels():
    model = small_model(num_classes=10)
    y0, y1 = one_hot([0, 0], 10), one_hot([7, 7], 10)
    a, b = np_(model.sample(2, mg.Generator(3), y0)), np_(model.sample(2, mg.Generator(3), y1))
    assert a.shape == (2, 1, 28, 28) and not np.allclose(a, b)   # same z, different class, different image
    x = mg.Tensor(np.ones((2, 1, 28, 28), dtype=np.float32))
    assert model.iwae_bound(x, y0, k=3, generator=mg.Generator(0)).shape == (2,)
    np.testing.assert_array_equal(np_(one_hot([2, 0], 3)), [[0, 0, 1], [1, 0, 0]])
    assert not np.allclose(latent_manifold(model, n=2, y=0), latent_manifold(model, n=2, y=7))


def test_conv_vae_shapes():
    model = small_model(arch="conv")
    x = mg.Tensor(np.zeros((2, 1, 28, 28), dtype=np.float32))
    assert model.encode(x).batch_shape == (2, 2)
    assert model.decode(model.encode(x).mean).batch_shape == (2, 1, 28, 28)


# ----------------------------------------------------------------------------
# the registered families, trained through the real loop
# ----------------------------------------------------------------------------

TINY = {"hidden": 32, "latent_dim": 4, "steps": 40, "batch_size": 32, "lr": 3e-3, "log_every": 1,
        "checkpoint_every": 40, "sample_every": 0, "n_samples": 10, "eval_samples": 0,
        "eval_k": 8, "eval_images": 30}


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


@pytest.mark.parametrize("family, extra", [
    ("vae", {}),
    ("vae", {"decoder": "gaussian", "kl": "mc", "objective": "iwae", "iwae_k": 3}),
    ("conv-vae", {"hidden": 16, "steps": 15, "checkpoint_every": 15, "batch_size": 16}),
    ("cvae", {}),
])
def test_registered_vaes_train_and_evaluate(tmp_path, family, extra):
    assert {"vae", "conv-vae", "cvae"} <= set(families())
    run = train(family, {**TINY, **extra}, out_dir=str(tmp_path / family), progress=False, verbose=False)
    losses = _losses(run)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 20, losses   # nats per image fall quickly at first
    results = evaluate_run(run, eval_samples=0, verbose=False)
    d = 28 * 28
    for key in ("test_elbo", "test_nll", "test_elbo_bits_per_dim", "test_nll_bits_per_dim", "test_kl"):
        assert np.isfinite(results[key]), key
    assert results["eval_images"] == 30 and results["eval_k"] == 8
    np.testing.assert_allclose(results["test_nll_bits_per_dim"], results["test_nll"] / (d * np.log(2)), rtol=1e-9)
    # L_8 >= ELBO on average: over 30 images the estimate should not fall far below the ELBO
    assert results["test_nll"] < -results["test_elbo"] + 1.0


# ----------------------------------------------------------------------------
# error paths
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [{"arch": "rnn"}, {"decoder": "poisson"}, {"decoder_var": "free"}, {"kl": "exact"},
                                 {"objective": "gan"}, {"latent_dim": 0}, {"iwae_k": 0}, {"eval_images": -1},
                                 {"beta": -1.0}, {"decoder_logvar": float("nan")}])
def test_bad_configs_are_refused(bad):
    with pytest.raises(TrainingError, match=next(iter(bad))):
        make_config(families()["vae"], bad)


def test_bad_inputs_are_refused():
    model, cmodel = small_model(), small_model(num_classes=10)
    x = mg.Tensor(np.zeros((2, 1, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="expected images"):
        model.elbo(mg.Tensor(np.zeros((2, 1, 32, 32), dtype=np.float32)))
    with pytest.raises(ValueError, match="needs one-hot labels"):
        cmodel.elbo(x)
    with pytest.raises(ValueError, match="not conditional"):
        model.elbo(x, one_hot([0, 1], 10))
    with pytest.raises(ValueError, match=r"shape \(2, 10\)"):
        cmodel.elbo(x, one_hot([0, 1], 3))
    with pytest.raises(ValueError, match="kl must be"):
        model.elbo(x, kl="exact")
    with pytest.raises(ValueError, match="k must be"):
        importance_weighted_bound(model, x, k=0)
    with pytest.raises(ValueError, match="2-D latent"):
        latent_manifold(small_model(latent_dim=3))
    with pytest.raises(ValueError, match="28x28"):
        build_vae(VAEConfig(arch="conv"), (1, 32, 32))
    with pytest.raises(ValueError, match="labels must lie"):
        one_hot([10], 10)

"""GANs (minigen.models.gan): the notes' claims about the game, the losses' gradients, and every recipe.

Claims of notes §3 checked numerically:
* for a fixed G the optimal discriminator is D* = p_data / (p_data + p_g)
  (a discriminator trained on two known 1-D Gaussians reaches the formula);
* V(D*, G) = 2 JS(p_data || p_g) - log 4 (exact sums over a finite set), and D* maximises V;
* §3.2: when D confidently rejects the fakes, the minimax generator loss has a
  vanishing gradient w.r.t. the discriminator logit, the non-saturating one does not.
"""
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigen as mg
import minigen.functional as F
from minigen import optim
from minigen.data import Dataset, toy
from minigen.families.gan import CGANRecipe, DCGANRecipe, GANRecipe
from minigen.models.gan import (DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, discriminator_loss, discriminator_step, gan_step,
                                generator_loss, generator_step, optimal_discriminator, value_function)
from minigen.testing import gradcheck
from minigen.train import TrainingError, make_config, train


def _gauss_pdf(x, mean, std):
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


# ----------------------------------------------------------------------------
# the value function and the optimal discriminator
# ----------------------------------------------------------------------------

def _js(p, q):
    """JS(p || q) = KL(p || m)/2 + KL(q || m)/2, m = (p + q)/2, in nats (by its definition)."""
    m = (p + q) / 2
    return 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))


_positive = st.lists(st.floats(0.05, 1.0), min_size=5, max_size=5)


@settings(max_examples=15)
@given(_positive, _positive)
def test_value_at_the_optimal_discriminator_is_2js_minus_log4(a, b):
    p_data, p_g = np.array(a) / sum(a), np.array(b) / sum(b)
    d_star = optimal_discriminator(p_data, p_g)
    np.testing.assert_allclose(d_star, p_data / (p_data + p_g))
    logits = np.log(p_data) - np.log(p_g)  # logit of D* = log(D* / (1 - D*))
    v = value_function(mg.tensor(logits), mg.tensor(logits),
                       real_weights=mg.tensor(p_data), fake_weights=mg.tensor(p_g)).item()
    assert v == pytest.approx(2 * _js(p_data, p_g) - math.log(4), abs=1e-10)
    # and D* is the maximiser: any other discriminator scores lower
    for shift in (-0.5, 0.3):
        other = logits + shift * np.arange(5)
        v_other = value_function(mg.tensor(other), mg.tensor(other),
                                 real_weights=mg.tensor(p_data), fake_weights=mg.tensor(p_g)).item()
        assert v_other < v


def test_value_is_minus_log4_at_the_equilibrium_and_the_d_loss_is_minus_v():
    p = np.full(4, 0.25)
    v = value_function(mg.zeros(4, dtype=np.float64), mg.zeros(4, dtype=np.float64),
                       real_weights=mg.tensor(p), fake_weights=mg.tensor(p)).item()
    assert v == pytest.approx(-math.log(4), abs=1e-12)  # p_g = p_data: D* = 1/2, JS = 0
    rng = np.random.default_rng(0)
    real, fake = mg.tensor(rng.normal(size=(6, 1)) * 3), mg.tensor(rng.normal(size=(5, 1)) * 3)
    assert discriminator_loss(real, fake).item() == pytest.approx(-value_function(real, fake).item(), rel=1e-12)


def test_value_function_is_finite_for_confident_logits():
    big = mg.tensor(np.array([[-200.0], [200.0]]))
    assert np.isfinite(value_function(big, big).item())


def test_trained_discriminator_reaches_the_optimal_discriminator():
    # p_data = N(0, 1) and p_g = N(1, 0.6^2): D* has a non-monotone, quadratic logit.
    gen = mg.Generator(0, "cpu")
    D = MLPDiscriminator((1,), hidden=(32, 32), generator=mg.Generator(1, "cpu"))
    opt = optim.Adam(D.parameters(), lr=3e-3)
    for _ in range(400):  # fresh minibatches of both distributions every step, as in notes §3.1
        real = mg.tensor(gen.normal((256, 1)))
        fake = mg.tensor(gen.normal((256, 1), mean=1.0, std=0.6))
        discriminator_step(D, opt, real, fake)
    xs = np.linspace(-1.5, 2.5, 41)[:, None]
    with mg.no_grad():
        d = F.sigmoid(D(mg.tensor(xs.astype(np.float32)))).numpy()
    d_star = optimal_discriminator(_gauss_pdf(xs, 0.0, 1.0), _gauss_pdf(xs, 1.0, 0.6))
    assert d_star.min() < 0.25 and d_star.max() > 0.95  # the formula's shape is not trivial here
    np.testing.assert_allclose(d, d_star, atol=0.06)
    assert np.abs(d - d_star).mean() < 0.025


# ----------------------------------------------------------------------------
# §3.2: the minimax loss saturates, the non-saturating one does not
# ----------------------------------------------------------------------------

def _grad_wrt_logits(logits, loss):
    l = mg.tensor(logits, requires_grad=True)
    generator_loss(l, loss).backward()
    return l.grad.numpy()


def test_minimax_generator_gradient_vanishes_when_d_rejects_fakes():
    logits = np.array([[-9.0], [-7.0], [-8.0], [-10.0]])  # D(G(z)) = sigmoid(l) < 1e-3: confident "fake"
    b = len(logits)
    sig = 1 / (1 + np.exp(-logits))
    g_mm, g_ns = _grad_wrt_logits(logits, "minimax"), _grad_wrt_logits(logits, "non-saturating")
    np.testing.assert_allclose(g_mm, -sig / b, rtol=1e-10)        # d/dl log(1 - sigmoid(l)) = -sigmoid(l)
    np.testing.assert_allclose(g_ns, -(1 - sig) / b, rtol=1e-10)  # d/dl -log sigmoid(l) = -(1 - sigmoid(l))
    assert np.abs(g_mm).max() < 1e-3 / b                           # saturated
    assert np.abs(g_ns).min() > 0.99 / b                           # a full-size push
    # both push the logit up (make the fakes look real); where D is fooled the roles swap
    assert (g_mm < 0).all() and (g_ns < 0).all()
    fooled = np.array([[8.0]])
    assert abs(_grad_wrt_logits(fooled, "minimax")[0, 0]) > 100 * abs(_grad_wrt_logits(fooled, "non-saturating")[0, 0])


def test_unknown_generator_loss_is_refused():
    with pytest.raises(ValueError, match="generator_loss: loss must be one of"):
        generator_loss(mg.zeros(2, 1), "wasserstein")


# ----------------------------------------------------------------------------
# gradients of the two losses through a tiny model, by finite differences
# ----------------------------------------------------------------------------

_rng = np.random.default_rng(3)
_Z = _rng.normal(size=(4, 2))          # noise, fixed
_REAL = _rng.normal(size=(4, 3))       # data points
_PARAMS = [_rng.normal(size=(5, 2)) * 0.7, _rng.normal(size=5) * 0.1, _rng.normal(size=(3, 5)) * 0.7,   # G
           _rng.normal(size=(4, 3)) * 0.7, _rng.normal(size=4) * 0.1, _rng.normal(size=(1, 4)) * 0.7]   # D


def _tiny_g(z, w1, b1, w2):
    return F.linear(F.tanh(F.linear(z, w1, b1)), w2)          # (B, 3)


def _tiny_d(x, w1, b1, w2):
    return F.linear(F.softplus(F.linear(x, w1, b1)), w2)      # (B, 1) logits


@pytest.mark.parametrize("loss", ["discriminator", "minimax", "non-saturating"])
def test_gan_losses_gradcheck_on_a_tiny_model(device, loss):
    def fn(real, gw1, gb1, gw2, dw1, db1, dw2):
        fake_logits = _tiny_d(_tiny_g(mg.tensor(_Z, device=device), gw1, gb1, gw2), dw1, db1, dw2)
        if loss == "discriminator":
            return discriminator_loss(_tiny_d(real, dw1, db1, dw2), fake_logits)
        return generator_loss(fake_logits, loss)

    gradcheck(fn, [_REAL] + _PARAMS, device=device)


# ----------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------

def test_dcgan_networks_have_the_w2_shapes_and_init():
    gen = mg.Generator(0, "cpu")
    G, D = DCGANGenerator(generator=gen), DCGANDiscriminator(generator=gen)
    shapes = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    assert shapes["fc.weight"] == (6272, 100) and shapes["deconv1.weight"] == (128, 64, 4, 4)
    assert shapes["deconv2.weight"] == (64, 1, 4, 4) and shapes["bn0.weight"] == (6272,)
    shapes = {k: tuple(v.shape) for k, v in D.state_dict().items()}
    assert shapes["conv1.weight"] == (64, 1, 4, 4) and shapes["conv2.weight"] == (128, 64, 4, 4)
    assert shapes["fc.weight"] == (1, 6272) and shapes["bn2.weight"] == (128,)
    w = G.fc.weight.numpy()
    assert abs(w.std() - 0.02) < 0.001 and abs(w.mean()) < 0.001  # N(0, 0.02), Radford et al.
    assert np.all(G.fc.bias.numpy() == 0) and abs(D.bn2.weight.numpy().mean() - 1) < 0.01
    x = G(mg.randn(3, 100, generator=gen))
    assert x.shape == (3, 1, 28, 28) and np.abs(x.numpy()).max() <= 1.0
    assert D(x).shape == (3, 1)


# ----------------------------------------------------------------------------
# recipes: each trains on tiny data; D and G change only through their own optimizers
# ----------------------------------------------------------------------------

_TINY = dict(latent_dim=8, hidden=(16, 16), channels=4, batch_size=4)
_RECIPES = [(GANRecipe, {}), (DCGANRecipe, {}), (CGANRecipe, {}), (CGANRecipe, {"arch": "mlp"}),
            (GANRecipe, {"k": 2, "g_loss": "minimax"})]


def _tiny_data(n=12):
    gen = mg.Generator(5, "cpu")
    images = gen.uniform((n, 1, 28, 28), dtype=np.float32)
    return Dataset(images, np.arange(n) % 10, "mnist", "train", "random test images", [str(i) for i in range(10)])


def _snapshot(module):
    return [p.numpy().copy() for p in module.parameters()]


def _changed(before, module):
    return [not np.array_equal(b, p.numpy()) for b, p in zip(before, module.parameters())]


@pytest.mark.parametrize("recipe_cls,options", _RECIPES,
                         ids=["gan", "dcgan", "cgan", "cgan-mlp", "gan-k2-minimax"])
def test_each_gan_recipe_trains_with_separate_optimizers(device, recipe_cls, options):
    data = _tiny_data()
    config = make_config(recipe_cls, {**_TINY, **options, "device": device})
    r = recipe_cls(config, data, device, mg.Generator(0, device))
    G, D = r.modules["generator"], r.modules["discriminator"]
    g_ids, d_ids = {id(p) for p in G.parameters()}, {id(p) for p in D.parameters()}
    assert {id(p) for group in r.opt_g.param_groups for p in group["params"]} == g_ids
    assert {id(p) for group in r.opt_d.param_groups for p in group["params"]} == d_ids
    assert not g_ids & d_ids

    x, y = r.prepare(mg.tensor(data.images[:4], device=device), mg.tensor(data.labels[:4], device=device), None)
    assert x.numpy().min() >= -1 and x.numpy().max() <= 1 and x.numpy().min() < -0.9
    cond = y if r.conditional else None
    noise = r._noise

    # a discriminator step moves D only, a generator step moves G only
    g0, d0 = _snapshot(G), _snapshot(D)
    with mg.no_grad():
        fake = G(noise(4)) if cond is None else G(noise(4), cond)
    discriminator_step(D, r.opt_d, x, fake, cond)
    assert not any(_changed(g0, G)) and all(_changed(d0, D))
    g0, d0 = _snapshot(G), _snapshot(D)
    r.opt_d.zero_grad()
    generator_step(G, D, r.opt_g, noise(4), cond, config.g_loss)
    assert not any(_changed(d0, D)) and all(_changed(g0, G))
    assert all(p.grad is None for p in D.parameters())              # D was frozen: no gradients computed
    assert all(p.requires_grad for p in D.parameters())             # ... and unfrozen afterwards

    # whole training steps through the recipe: both players move, k D-steps per G-step
    g0, d0 = _snapshot(G), _snapshot(D)
    for _ in range(2):
        logs = r.train_step(x, y)
    assert any(_changed(g0, G)) and any(_changed(d0, D))
    assert set(logs) >= {"loss", "loss_d", "loss_g", "d_real", "d_fake"} and np.isfinite(logs["loss"])
    d_steps = {s["step"] for s in r.opt_d.state.values()}
    g_steps = {s["step"] for s in r.opt_g.state.values()}
    assert d_steps == {1 + 2 * config.k} and g_steps == {3}

    r.train(False)
    labels = [0, 1, 2, 3] if r.conditional else None
    images = r.sample(4, mg.Generator(1, device), labels=labels)
    assert images.shape == (4, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    if r.conditional:  # the label reaches the generator
        z = noise(2)
        with mg.no_grad():
            a, b = G(z, mg.tensor(np.array([0, 0]), device=device)), G(z, mg.tensor(np.array([1, 1]), device=device))
        assert np.abs(a.numpy() - b.numpy()).max() > 1e-4
    metrics = r.evaluate(data.images, data.labels, mg.Generator(2, device))
    assert 0 <= metrics["test_d_accuracy"] <= 1 and metrics["test_value_function"] < 0


def test_gan_step_on_toy_data_and_k_fresh_batches(device):
    # the 2-D toy GAN: linear output, k = 3 discriminator steps each on its own minibatch
    from minigen.models.gan import MLPGenerator, sample_noise

    gen = mg.Generator(0, device)
    G = MLPGenerator(4, (2,), hidden=(8,), output="linear", generator=mg.Generator(1, "cpu")).to(device)
    D = MLPDiscriminator((2,), hidden=(8,), generator=mg.Generator(2, "cpu")).to(device)
    opt_g, opt_d = optim.Adam(G.parameters(), lr=1e-3), optim.Adam(D.parameters(), lr=1e-3)
    seen = []

    def batches(k):
        for _ in range(k):
            x = mg.tensor(toy.ring(16, gen), device=device)
            seen.append(x.numpy())
            yield x, None

    logs = gan_step(G, D, opt_g, opt_d, batches(3), lambda n: sample_noise(n, 4, gen))
    assert len(seen) == 3 and not np.array_equal(seen[0], seen[1])
    assert {s["step"] for s in opt_d.state.values()} == {3} and {s["step"] for s in opt_g.state.values()} == {1}
    assert logs["loss"] == logs["loss_d"] and np.isfinite(logs["loss_g"])
    with pytest.raises(ValueError, match="k must be at least 1"):
        gan_step(G, D, opt_g, opt_d, [], lambda n: sample_noise(n, 4, gen))


def test_bad_gan_configs_are_refused():
    with pytest.raises(TrainingError, match="g_loss must be one of"):
        make_config(GANRecipe, {"g_loss": "hinge"})
    with pytest.raises(TrainingError, match="k .* must be >= 1"):
        make_config(DCGANRecipe, {"k": 0})
    with pytest.raises(TrainingError, match="arch must be mlp or dcgan"):
        make_config(CGANRecipe, {"arch": "resnet"})
    with pytest.raises(TrainingError, match="lr_d must be positive"):
        make_config(GANRecipe, {"lr_d": 0.0})


def test_gan_run_resumes_exactly_with_k_extra_minibatches(tmp_path):
    # every random draw (noise, the k - 1 extra real minibatches) comes from the checkpointed generator
    opts = dict(_TINY, k=2, steps=4, log_every=1, checkpoint_every=2, sample_every=0, n_samples=4, eval_samples=0)
    full = train("gan", opts, out_dir=str(tmp_path / "full"), progress=False, verbose=False)
    train("gan", {**opts, "steps": 2}, out_dir=str(tmp_path / "cut"), progress=False, verbose=False)
    train(None, {"steps": 4}, resume=str(tmp_path / "cut"), progress=False, verbose=False)

    def losses(run):
        with open(os.path.join(run, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        return [(r["step"], r["loss_d"], r["loss_g"]) for r in rows]

    assert [s for s, _, _ in losses(full)] == [1, 2, 3, 4]
    assert losses(full) == losses(str(tmp_path / "cut"))

"""Progressive GAN (notes §3.3, Karras et al. 2018): growth schedule, fade-in, WGAN-GP, resume.

* the schedule is a pure function of the images shown, with the phases in order;
* at alpha = 0 a grown G equals the smaller G upsampled and a grown D equals the
  smaller D on downsampled images, bit for bit; at alpha = 1 both equal the new path alone;
* the gradient penalty's gradient with respect to D's parameters (a second-order
  derivative) passes a float64 central-difference check, and the penalty is ~0 for
  a 1-Lipschitz linear critic with unit gradient norm;
* a run resumed in the middle of a fade-in reproduces the uninterrupted run's
  losses step for step (through ``minigen.train.train``).
"""
import json
import os

import numpy as np
import pytest

import minigen as mg
from minigen.checkpoint import load_tree
from minigen.data import load_dataset
import minigen.functional as F
from minigen import backend, families, optim
from minigen.families.base import TrainingError, make_config
from minigen.families.progan import ProGANRecipe
from minigen.models import progan
from minigen.testing import gradcheck
from minigen.train import train

TINY = dict(latent_dim=8, channels=(8, 4, 4), mbstd_group=2)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def rand32(*shape, seed=0):
    """A float32 tensor: the exact-equality checks run in the dtype of training."""
    return mg.tensor(rand(*shape, seed=seed).astype(np.float32))


def tiny_nets(dtype=None, channels=(8, 4, 4), base=7, group=2):
    gen = backend.Generator(3, "cpu")
    G = progan.ProGANGenerator(8, channels, base, generator=gen)
    D = progan.ProGANDiscriminator(channels, base, mbstd_group=group, generator=gen)
    if dtype is not None:
        G.to(dtype=dtype)
        D.to(dtype=dtype)
    return G, D


# ----------------------------------------------------------------------------
# the growth schedule
# ----------------------------------------------------------------------------

def test_growth_schedule_phases():
    S, T = 100, 40
    stage = lambda n: progan.growth_stage(n, 3, S, T)  # noqa: E731
    assert stage(0) == (0, 1.0) and stage(99) == (0, 1.0)
    assert stage(100) == (1, 0.0)                           # the fade-in of level 1 starts at alpha 0
    assert stage(110) == (1, 0.25) and stage(139) == (1, 39 / 40)
    assert stage(140) == (1, 1.0) and stage(239) == (1, 1.0)
    assert stage(240) == (2, 0.0) and stage(270) == (2, 0.75)
    assert stage(280) == (2, 1.0) and stage(10 ** 9) == (2, 1.0)  # the last level stays
    assert progan.phase_boundaries(3, S, T) == [(0, 0, "stabilize"), (100, 1, "transition"),
                                                (140, 1, "stabilize"), (240, 2, "transition"),
                                                (280, 2, "stabilize")]
    # alpha rises linearly and the level never goes down
    stages = [stage(n) for n in range(0, 400, 5)]
    assert all(a[0] <= b[0] for a, b in zip(stages, stages[1:]))
    assert progan.growth_stage(12345, 1, S, T) == (0, 1.0)   # a single level never grows


# ----------------------------------------------------------------------------
# fade-in: exact equality at alpha = 0 and alpha = 1
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("level", [1, 2])
def test_generator_fade_in_is_exact_at_both_ends(level):
    G, _ = tiny_nets()
    z = rand32(4, 8)
    with mg.no_grad():
        smaller = G(z, level - 1, 1.0).numpy()                           # the network before growing
        at_zero = G(z, level, 0.0).numpy()
        at_one = G(z, level, 1.0).numpy()
        h = G.blocks[0](z)                                               # the new path, by hand
        for k in range(1, level + 1):
            h = G.blocks[k](h)
        new_path = G.to_rgb[level](h).numpy()
        halfway = G(z, level, 0.3).numpy()
    r = 7 * 2 ** level
    assert at_zero.shape == (4, 1, r, r)
    np.testing.assert_array_equal(at_zero, np.repeat(np.repeat(smaller, 2, axis=2), 2, axis=3))
    np.testing.assert_array_equal(at_one, new_path)
    assert np.abs(at_one - at_zero).max() > 1e-3                         # the new block does change the output
    np.testing.assert_allclose(halfway, 0.7 * at_zero + 0.3 * at_one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("level", [1, 2])
def test_discriminator_fade_in_is_exact_at_both_ends(level):
    _, D = tiny_nets()
    r = 7 * 2 ** level
    x = rand32(4, 1, r, r)
    with mg.no_grad():
        smaller = D(F.avg_pool2d(x, 2), level - 1, 1.0).numpy()          # the smaller D on downsampled images
        at_zero = D(x, level, 0.0).numpy()
        at_one = D(x, level, 1.0).numpy()
        h = D.blocks[level](F.leaky_relu(D.from_rgb[level](x), 0.2))     # the new path, by hand
        for k in range(level - 1, -1, -1):
            h = D.blocks[k](h)
        new_path = h.numpy()
    assert at_zero.shape == (4, 1)
    np.testing.assert_array_equal(at_zero, smaller)
    np.testing.assert_array_equal(at_one, new_path)
    assert np.abs(at_one - at_zero).max() > 1e-4


def test_real_images_are_blended_like_the_generator():
    x = rand32(2, 1, 28, 28)
    full = progan.real_images_at(x, 2, 1.0, 3).numpy()
    np.testing.assert_array_equal(full, x.numpy())
    r1 = progan.real_images_at(x, 1, 1.0, 3).numpy()
    np.testing.assert_allclose(r1, x.numpy().reshape(2, 1, 14, 2, 14, 2).mean(axis=(3, 5)), rtol=1e-6)
    # at alpha = 0 the level-2 reals are the level-1 reals upsampled, exactly
    np.testing.assert_array_equal(progan.real_images_at(x, 2, 0.0, 3).numpy(),
                                  np.repeat(np.repeat(r1, 2, axis=2), 2, axis=3))
    half = progan.real_images_at(x, 2, 0.5, 3).numpy()
    np.testing.assert_allclose(half, 0.5 * full + 0.5 * np.repeat(np.repeat(r1, 2, axis=2), 2, axis=3),
                               rtol=1e-6, atol=1e-7)


def test_networks_reject_wrong_levels_and_sizes():
    G, D = tiny_nets()
    with pytest.raises(ValueError, match="level must be in"):
        G(rand32(2, 8), 3)
    with pytest.raises(ValueError, match="level 1 needs images of 14x14"):
        D(rand32(2, 1, 28, 28), 1)


# ----------------------------------------------------------------------------
# the objective
# ----------------------------------------------------------------------------

def _substitute(module, tensors):
    """Run ``module`` with ``tensors`` in place of its parameters (same order as named_parameters)."""
    for (name, _), t in zip(list(module.named_parameters()), tensors):
        owner = module
        *path, leaf = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        owner._parameters[leaf] = t
    return module


def test_gradient_penalty_second_order_gradcheck(float64):
    # a small conv D (two levels, 2x2 -> 4x4, minibatch stddev in groups of 2), in float64
    gen = backend.Generator(5, "cpu")
    D = progan.ProGANDiscriminator(channels=(3, 2), base_resolution=2, mbstd_group=2, generator=gen)
    params = [p.numpy().copy() for p in D.parameters()]
    g = np.random.default_rng(1)
    x_real, x_fake = mg.tensor(g.standard_normal((4, 1, 4, 4))), mg.tensor(g.standard_normal((4, 1, 4, 4)))
    u = mg.tensor(g.uniform(size=(4, 1, 1, 1)))

    def penalty(*ps):
        critic = _substitute(D, ps)
        with mg.enable_grad():  # the checker's numerical probe runs under no_grad; GP needs a graph inside
            return progan.gradient_penalty(lambda t: critic(t, 1, 0.6), x_real, x_fake, u)

    assert penalty(*[mg.tensor(p) for p in params]).item() > 1e-3       # not a flat spot
    gradcheck(penalty, params, rtol=1e-5, atol=1e-8)


def test_gradient_penalty_gradcheck_catches_a_first_order_only_penalty(float64):
    # without create_graph the penalty has no path to D's weights: the check must see a wrong gradient
    gen = backend.Generator(5, "cpu")
    D = progan.ProGANDiscriminator(channels=(3, 2), base_resolution=2, mbstd_group=2, generator=gen)
    x = mg.tensor(rand(4, 1, 4, 4, seed=2))

    def detached_penalty(*ps):
        critic = _substitute(D, ps)
        with mg.enable_grad():
            x_hat = x.detach().requires_grad_(True)
            (gx,) = mg.grad(critic(x_hat, 1).sum(), [x_hat])               # no graph: a constant
            norm = ((gx * gx).sum(dim=(1, 2, 3))).sqrt()
            # keep a first-order term so the gradient is not simply zero everywhere
            return ((norm - 1.0) ** 2).mean() + 1e-3 * critic(x, 1).sum()

    with pytest.raises(AssertionError):
        gradcheck(detached_penalty, [p.numpy().copy() for p in D.parameters()], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("scale, expected", [(1.0, 0.0), (2.0, 1.0), (0.5, 0.25)])
def test_gradient_penalty_of_a_linear_critic(float64, scale, expected):
    # D(x) = <w, x> has gradient w everywhere: GP = (|w| - 1)^2, ~0 for a unit-norm w
    w = rand(1, 1, 5, 5, seed=3)
    w = mg.tensor(scale * w / np.linalg.norm(w))
    critic = lambda t: (t * w).sum(dim=(1, 2, 3)).reshape(-1, 1)  # noqa: E731
    gp = progan.gradient_penalty(critic, mg.tensor(rand(6, 1, 5, 5)), mg.tensor(rand(6, 1, 5, 5, seed=1)),
                                 mg.tensor(np.random.default_rng(2).uniform(size=(6, 1, 1, 1))))
    assert abs(gp.item() - expected) < 1e-10


def test_losses(float64):
    real, fake = mg.tensor([[1.0], [3.0]]), mg.tensor([[-1.0], [0.0]])
    # WGAN: mean D(fake) - mean D(real) + drift * mean D(real)^2 = -0.5 - 2 + 0.001 * 5
    assert progan.discriminator_loss(real, fake, "wgan-gp", 0.001).item() == pytest.approx(-2.5 + 0.005)
    assert progan.generator_loss(fake, "wgan-gp").item() == pytest.approx(0.5)
    sp = lambda v: np.log1p(np.exp(v))  # noqa: E731
    assert progan.discriminator_loss(real, fake, "non-saturating").item() == pytest.approx(
        (sp(-1) + sp(-3)) / 2 + (sp(-1) + sp(0)) / 2)
    assert progan.generator_loss(fake, "non-saturating").item() == pytest.approx((sp(1) + sp(0)) / 2)
    with pytest.raises(ValueError, match="loss must be one of"):
        progan.generator_loss(fake, "hinge")


@pytest.mark.parametrize("loss", ["wgan-gp", "non-saturating"])
def test_train_step_updates_only_the_blocks_in_use(loss):
    G, D = tiny_nets()
    opt_g = optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt_d = optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    ema = optim.ExponentialMovingAverage(G, 0.9)
    before_g = {k: v.numpy().copy() for k, v in G.state_dict().items()}
    before_d = {k: v.numpy().copy() for k, v in D.state_dict().items()}
    cfg = progan.ProGANConfig(**TINY, loss=loss)
    x = rand32(4, 1, 28, 28) * 0.5
    stats = progan.train_step(G, D, opt_g, opt_d, ema, x, 1, 0.5, backend.Generator(0, "cpu"), cfg)
    assert {"loss", "loss_d", "loss_g", "gp", "wasserstein", "level", "alpha", "resolution"} <= set(stats)
    assert stats["resolution"] == 14.0 and stats["alpha"] == 0.5
    assert all(np.isfinite(v) for v in stats.values()) and stats["gp"] > 0
    changed = lambda before, now: {k for k in now if not np.array_equal(before[k], now[k].numpy())}  # noqa: E731
    g_changed, d_changed = changed(before_g, G.state_dict()), changed(before_d, D.state_dict())
    assert any(k.startswith("blocks.1.") for k in g_changed) and any(k.startswith("to_rgb.0") for k in g_changed)
    assert not any(k.startswith(("blocks.2.", "to_rgb.2")) for k in g_changed)   # level 2 is not used yet
    assert any(k.startswith("from_rgb.1") for k in d_changed)
    assert not any(k.startswith(("blocks.2.", "from_rgb.2")) for k in d_changed)


# ----------------------------------------------------------------------------
# the family: config, sampling, resume in the middle of a fade-in
# ----------------------------------------------------------------------------

def test_config_errors():
    with pytest.raises(TrainingError, match="loss must be one of"):
        make_config(ProGANRecipe, {"loss": "hinge"})
    with pytest.raises(TrainingError, match="batch_size 6 must be a multiple"):
        make_config(ProGANRecipe, {"batch_size": 6})
    with pytest.raises(TrainingError, match="transition_images"):
        make_config(ProGANRecipe, {"transition_images": 0})
    with pytest.raises(TrainingError, match="channels"):
        make_config(ProGANRecipe, {"channels": ()})


@pytest.fixture
def no_pictures(monkeypatch):
    """Skip the end-of-run sample grid and curve plot (seconds of matplotlib; these tests read the logs)."""
    monkeypatch.setattr("minigen.train.finish", lambda run: None)


def _small_run(tmp_path, name, **overrides):
    options = dict(TINY, steps=14, batch_size=4, stabilize_images=8, transition_images=16, log_every=1,
                   checkpoint_every=100, sample_every=0, eval_samples=0, n_samples=4)
    options.update(overrides)
    return train(ProGANRecipe, overrides=options, out_dir=str(tmp_path / name), progress=False, verbose=False)


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_resume_in_the_middle_of_a_fade_in_reproduces_the_losses(tmp_path, monkeypatch, no_pictures):
    # batch 4: steps 0-1 level 0; 2-5 fade-in of level 1; 6-7 level 1; 8-11 fade-in of level 2; 12- level 2
    monkeypatch.setitem(families.FAMILIES, "progan", ProGANRecipe)   # resume looks the family up by name
    whole = _small_run(tmp_path, "whole")
    part = _small_run(tmp_path, "part", steps=10)
    state = load_tree(os.path.join(part, "checkpoint.npz"))["recipe"]["extra"]
    assert int(state["level"]) == 2 and float(state["alpha"]) == 0.5 and int(state["images_seen"]) == 40
    train(None, overrides={"steps": 14}, resume=part, progress=False, verbose=False)
    a, b = _rows(whole), _rows(part)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 15))
    assert [r["alpha"] for r in a] == [1.0, 1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    for ra, rb in zip(a, b):
        for key in ("loss", "loss_d", "loss_g", "gp", "alpha", "level"):
            assert ra[key] == rb[key], (ra["step"], key)
    wa = load_tree(os.path.join(whole, "checkpoint.npz"))["recipe"]
    wb = load_tree(os.path.join(part, "checkpoint.npz"))["recipe"]
    for group in ("modules", "emas"):
        for name, tree in wa[group].items():
            for key, value in tree.items():
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(value, wb[group][name][key])


def test_sample_uses_the_ema_generator_at_the_current_stage(tmp_path, no_pictures):
    run_dir = _small_run(tmp_path, "s", steps=3)
    recipe = ProGANRecipe(make_config(ProGANRecipe, dict(TINY, batch_size=4, stabilize_images=8,
                                                           transition_images=16)),
                          load_dataset("mnist", "train"), "cpu", backend.Generator(0, "cpu"))
    recipe.load_state_dict(load_tree(os.path.join(run_dir, "checkpoint.npz"))["recipe"])
    assert recipe.stage() == (1, 0.25)                                 # 12 images seen
    images = recipe.sample(4, backend.Generator(7, "cpu"))
    assert images.shape == (4, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    z = mg.Tensor(backend.Generator(7, "cpu").normal((4, 8)))
    with mg.no_grad(), recipe.ema.average_parameters():
        x = recipe.G(z, 1, 0.25).numpy()                                # 14x14, enlarged x2 by the recipe
    expected = np.clip((np.repeat(np.repeat(x, 2, axis=2), 2, axis=3) + 1) / 2, 0, 1)
    np.testing.assert_allclose(images, expected, rtol=1e-6)
    with mg.no_grad():
        raw = recipe.G(z, 1, 0.25).numpy()
    assert np.abs(raw - x).max() > 0                                   # the EMA weights differ from G's own


def test_evaluate_reports_the_stage_and_a_finite_estimate():
    recipe = ProGANRecipe(make_config(ProGANRecipe, dict(TINY, batch_size=4)), load_dataset("mnist", "train"),
                          "cpu", backend.Generator(0, "cpu"))
    test = load_dataset("mnist", "test")
    out = recipe.evaluate(test.images[:30], test.labels[:30], backend.Generator(1, "cpu"), chunk=8)
    assert out["level"] == 0.0 and out["resolution"] == 7.0 and np.isfinite(out["test_wasserstein"])

"""LAPGAN (minigen.models.lapgan, minigen.families.lapgan): the pyramid and the notes' claims.

Claims of notes §3.3 checked numerically:
* the Laplacian pyramid is an exact code: reconstruct(laplacian_pyramid(I)) = I
  to float rounding, for random and real images and every size the pyramid
  supports; other sizes are refused with one clear line;
* generation runs coarse -> fine, each level conditioned on the upsampled
  coarser image: the chain's level-k image is u(I~_{k+1}) + G_k(z_k, u(I~_{k+1}));
* the levels are independent: a training step of level k changes only level
  k's parameters, and no gradient reaches another level.
"""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigen as mg
from minigen import optim
from minigen.data import Dataset
from minigen.families.base import TrainingError, make_config
from minigen.families.lapgan import ConditionalLAPGANRecipe, LAPGANRecipe
from minigen.models import lapgan as L
from minigen.testing import gradcheck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# the pyramid
# ----------------------------------------------------------------------------

@st.composite
def _pyramid_case(draw):
    """An image batch whose sides are divisible by 2^(levels-1), with its levels and upsampling."""
    levels = draw(st.integers(1, 4))
    factor = 2 ** (levels - 1)
    h, w = draw(st.integers(1, 3)) * factor, draw(st.integers(1, 3)) * factor
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w)
    seed = draw(st.integers(0, 2**31 - 1))
    image = np.random.default_rng(seed).uniform(-1, 1, shape)
    return image, levels, draw(st.sampled_from(L.UPSAMPLE_MODES))


@settings(max_examples=30)
@given(_pyramid_case())
def test_reconstruct_inverts_the_laplacian_pyramid_for_every_supported_size(case):
    image, levels, mode = case
    coarse, residuals = L.laplacian_pyramid(mg.tensor(image), levels, mode)
    assert len(residuals) == levels - 1
    n, c, h, w = image.shape
    assert coarse.shape == (n, c, h // 2 ** (levels - 1), w // 2 ** (levels - 1))
    assert [r.shape for r in residuals] == [(n, c, h // 2 ** k, w // 2 ** k) for k in range(levels - 1)]
    back = L.reconstruct(coarse, residuals, mode).numpy()
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, image, rtol=0, atol=1e-14)
    if levels > 1:  # the residuals carry real information: dropping one breaks the reconstruction
        zeroed = [r * 0 for r in residuals[:1]] + residuals[1:]
        assert np.abs(L.reconstruct(coarse, zeroed, mode).numpy() - image).max() > 1e-3


@pytest.mark.parametrize("mode", L.UPSAMPLE_MODES)
def test_reconstruct_inverts_the_pyramid_of_real_digits(mode):
    from minigen.data import load_dataset

    digits = load_dataset("mnist", "test").images[:16]              # (16, 1, 28, 28) float32 in [0, 1]
    gauss = L.gaussian_pyramid(mg.tensor(digits), 3)
    assert [g.shape[2:] for g in gauss] == [(28, 28), (14, 14), (7, 7)]
    coarse, residuals = L.laplacian_pyramid(mg.tensor(digits), 3, mode)
    back = L.reconstruct(coarse, residuals, mode).numpy()
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, digits, rtol=0, atol=2e-6)
    # the 7x7 image is the mean of each 4x4 block: d(d(I)) by definition
    blocks = digits.reshape(16, 1, 7, 4, 7, 4).mean(axis=(3, 5))
    np.testing.assert_allclose(coarse.numpy(), blocks, atol=1e-6)


def test_nearest_residuals_are_band_pass():
    # with u = nearest and d = 2x2 average, d(h_k) = d(I_k) - d(u(I_{k+1})) = I_{k+1} - I_{k+1} = 0
    image = np.random.default_rng(1).uniform(-1, 1, (2, 1, 8, 8))
    _, residuals = L.laplacian_pyramid(mg.tensor(image), 3, "nearest")
    for h in residuals:
        assert np.abs(h.numpy()).max() > 0.1
        np.testing.assert_allclose(L.downsample(h).numpy(), 0.0, atol=1e-15)
    # bilinear upsampling smooths, so its residuals are not block-mean-free
    _, smooth = L.laplacian_pyramid(mg.tensor(image), 3, "bilinear")
    assert np.abs(L.downsample(smooth[0]).numpy()).max() > 1e-3


@pytest.mark.parametrize("shape,levels,message", [
    ((1, 1, 30, 28), 3, "divisible by 4; got 30x28"),
    ((1, 1, 28, 28), 4, "divisible by 8; got 28x28"),
    ((1, 1, 28, 28), 0, "levels must be a positive integer"),
    ((1, 28, 28), 2, "must be \\(B, C, H, W\\)"),
])
def test_unsupported_sizes_are_refused_with_one_line(shape, levels, message):
    with pytest.raises(ValueError, match=message):
        L.laplacian_pyramid(mg.zeros(*shape), levels)


def test_reconstruct_refuses_residuals_of_the_wrong_size():
    coarse, residuals = L.laplacian_pyramid(mg.zeros(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match="residual h_1 has shape"):
        L.reconstruct(coarse, [residuals[0], residuals[0]])
    with pytest.raises(ValueError, match="upsample: mode must be one of"):
        L.upsample(coarse, "bicubic")


@pytest.mark.parametrize("mode", L.UPSAMPLE_MODES)
def test_pyramid_gradients_in_float64(float64, mode):
    # no new op: d and u are avg_pool2d and interpolate, whose own checks live in test_ops_conv.py;
    # this checks their composition, every residual and the coarse image, w.r.t. the image
    image = np.random.default_rng(2).standard_normal((1, 2, 8, 4))

    def fn(x):
        coarse, residuals = L.laplacian_pyramid(x, 3, mode)
        return (coarse, *residuals)

    assert gradcheck(fn, [image])


@settings(max_examples=15)
@given(_pyramid_case())
def test_match_coarse_projects_onto_the_images_with_the_given_block_means(case):
    image, levels, _ = case
    if levels == 1:
        return
    gen = np.random.default_rng(image.size)
    fine = mg.tensor(image)
    coarse = mg.tensor(gen.uniform(-1, 1, image.shape[:2] + (image.shape[2] // 2, image.shape[3] // 2)))
    out = L.match_coarse(fine, coarse)
    np.testing.assert_allclose(L.downsample(out).numpy(), coarse.numpy(), rtol=0, atol=1e-14)
    # already consistent images are left alone, and the change is the least-squares one: constant per block
    np.testing.assert_allclose(L.match_coarse(out, coarse).numpy(), out.numpy(), rtol=0, atol=1e-14)
    change = (out - fine).numpy()
    np.testing.assert_allclose(change, L.upsample(L.downsample(mg.tensor(change)), "nearest").numpy(), atol=1e-14)


def test_match_coarse_gradient_in_float64(float64):
    gen = np.random.default_rng(4)
    assert gradcheck(L.match_coarse, [gen.standard_normal((1, 2, 4, 6)), gen.standard_normal((1, 2, 2, 3))])


# ----------------------------------------------------------------------------
# the networks and the sampling chain
# ----------------------------------------------------------------------------

def _tiny_model(num_classes=0, shape=(1, 8, 8), levels=3, seed=0):
    """8 -> 4 -> 2: a residual level at 8x8 and 4x4 and a 2x2 MLP level."""
    return L.LAPGAN(shape, levels, "bilinear", latent_dim=4, channels=(4,) * levels, num_classes=num_classes,
                    generator=mg.Generator(seed, "cpu"))


def _optimizers(model):
    opts_g = [optim.Adam(model.level_parameters(k)[0], lr=1e-2) for k in range(model.levels)]
    opts_d = [optim.Adam(model.level_parameters(k)[1], lr=1e-2) for k in range(model.levels)]
    return opts_g, opts_d


def test_shapes_at_every_level_of_the_mnist_model():
    model = L.LAPGAN((1, 28, 28), 3, generator=mg.Generator(0, "cpu"))
    assert model.shapes == [(1, 28, 28), (1, 14, 14), (1, 7, 7)] and model.coarsest == 2
    gen = mg.Generator(1, "cpu")
    pyramid = model.real_pyramid(mg.tensor(gen.uniform((3, 1, 28, 28), dtype=np.float32) * 2 - 1))
    for k in range(3):
        x, cond = model.level_batch(pyramid, k)
        z = model.noise(k, 3, gen)
        G, D = model.generators[k], model.discriminators[k]
        if k == 2:
            assert x.shape == (3, 1, 7, 7) and cond is None and z.shape == (3, 100)
            assert G(z).shape == (3, 1, 7, 7) and D(x).shape == (3, 1)
        else:
            low, coarse, y = cond
            side = 28 // 2 ** k
            assert x.shape == low.shape == z.shape[:1] + (1, side, side) and y is None
            assert coarse.shape == (3, 1, side // 2, side // 2)
            assert G(z, cond).shape == x.shape and D(x, cond).shape == (3, 1)
    model.eval()
    chain = model.sample_chain(5, gen)
    assert [c.shape for c in chain] == [(5, 1, 7, 7), (5, 1, 14, 14), (5, 1, 28, 28)]
    assert all(np.abs(c.numpy()).max() <= 1.0 for c in chain)


def test_chain_is_coarse_to_fine_each_level_conditioned_on_the_upsampled_coarser_sample():
    model = _tiny_model()
    model.eval()
    chain = model.sample_chain(3, mg.Generator(7, "cpu"))
    # redraw the same noise in the chain's order (z_K, z_{K-1}, ..., z_0) and rebuild it by hand
    gen = mg.Generator(7, "cpu")
    with mg.no_grad():
        image = model.generators[2](model.noise(2, 3, gen))
        np.testing.assert_array_equal(image.numpy(), chain[0].numpy())
        for k, expected in zip([1, 0], chain[1:]):
            z = model.noise(k, 3, gen)
            low = L.upsample(image, "bilinear")
            image = np.clip((low + model.generators[k](z, (low, image, None))).numpy(), -1, 1)
            np.testing.assert_allclose(image, expected.numpy(), rtol=0, atol=1e-6)
            image = mg.tensor(image)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_every_generated_level_averages_back_to_the_coarser_sample(num_classes):
    # what every real pair satisfies, d(I_k) = I_{k+1}, holds for G_k's output by construction
    model = _tiny_model(num_classes)
    model.train()                                                    # also with batch statistics
    gen = mg.Generator(6, "cpu")
    coarse = mg.tensor(gen.uniform((3, 1, 4, 4), dtype=np.float32) * 2 - 1)
    y = mg.tensor(np.array([0, 1, 2])) if num_classes else None
    for k, c in ((1, L.downsample(coarse)), (0, coarse)):
        fine = model.sample_level(k, c, model.noise(k, 3, gen), y)
        np.testing.assert_allclose(L.downsample(fine).numpy(), c.numpy(), rtol=0, atol=1e-6)
        assert np.abs((fine - model.u(c)).numpy()).max() > 1e-3     # ... while adding detail


def test_a_level_sample_is_deterministic_given_the_coarse_image_and_z():
    model = _tiny_model()
    model.eval()
    gen = mg.Generator(3, "cpu")
    coarse = mg.tensor(gen.uniform((2, 1, 4, 4), dtype=np.float32) * 2 - 1)
    z = model.noise(0, 2, gen)
    a = model.sample_level(0, coarse, z).numpy()
    mg.Generator(99, "cpu").normal((5,))  # other random draws in between change nothing
    b = model.sample_level(0, coarse, z).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 1, 8, 8)
    other_z = model.sample_level(0, coarse, model.noise(0, 2, gen)).numpy()
    other_coarse = model.sample_level(0, coarse * 0.5, z).numpy()
    assert np.abs(other_z - a).max() > 1e-4 and np.abs(other_coarse - a).max() > 1e-4
    with pytest.raises(ValueError, match="k must be a finer level"):
        model.sample_level(2, coarse, z)


def test_the_label_reaches_every_level():
    model = _tiny_model(num_classes=3)
    model.eval()
    gen = mg.Generator(4, "cpu")
    y0, y1 = mg.tensor(np.array([0, 0])), mg.tensor(np.array([2, 2]))
    with mg.no_grad():
        z = model.noise(2, 2, gen)
        assert np.abs(model.generators[2](z, y0).numpy() - model.generators[2](z, y1).numpy()).max() > 1e-5
        for k in (0, 1):
            side = 8 // 2 ** k
            low, z, h = (mg.tensor(gen.normal((2, 1, side, side), dtype=np.float32)) for _ in range(3))
            coarse = L.downsample(low)
            G, D = model.generators[k], model.discriminators[k]
            assert np.abs(G(z, (low, coarse, y0)).numpy() - G(z, (low, coarse, y1)).numpy()).max() > 1e-5
            assert np.abs(D(h, (low, coarse, y0)).numpy() - D(h, (low, coarse, y1)).numpy()).max() > 1e-6


# ----------------------------------------------------------------------------
# independence of the levels
# ----------------------------------------------------------------------------

def _params(model, k):
    G, D = model.level_parameters(k)
    return G + D


@pytest.mark.parametrize("num_classes", [0, 3])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_a_level_step_changes_only_that_level_and_sends_no_gradient_elsewhere(k, num_classes):
    model = _tiny_model(num_classes)
    opts_g, opts_d = _optimizers(model)
    gen = mg.Generator(1, "cpu")
    images = mg.tensor(gen.uniform((4, 1, 8, 8), dtype=np.float32) * 2 - 1)
    y = mg.tensor(np.array([0, 1, 2, 0])) if num_classes else None
    before = {id(p): p.numpy().copy() for p in model.parameters()}
    stats = L.train_step(model, opts_g, opts_d, images, y, gen, levels=[k])
    assert set(stats) == {"loss", f"loss_d_{k}", f"loss_g_{k}", f"d_real_{k}", f"d_fake_{k}", f"d_fake_g_{k}"}
    assert stats["loss"] == stats[f"loss_d_{k}"]
    mine = {id(p) for p in _params(model, k)}
    for p in model.parameters():
        if id(p) in mine:
            # every parameter of level k gets a gradient and moves, except where the gradient is
            # zero up to rounding (in this tiny model G's output bias: about 2e-10 against entries
            # of 3e-3 in the gradient it sums), where the order of the additions decides whether
            # it is exactly 0 and Adam leaves the parameter where it was
            assert p.grad is not None
            if np.abs(p.grad.numpy()).max() > 1e-6:
                assert not np.array_equal(before[id(p)], p.numpy())
        else:
            np.testing.assert_array_equal(before[id(p)], p.numpy())
            assert p.grad is None                                   # never in level k's graph
    for j in range(model.levels):                                   # only level k's optimizers stepped
        assert bool(opts_g[j].state) == bool(opts_d[j].state) == (j == k)
    # the parameters partition into the levels
    assert sum(not np.array_equal(before[id(p)], p.numpy()) for p in _params(model, k)) >= len(mine) - 1
    ids = [id(p) for j in range(model.levels) for p in _params(model, j)]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_a_full_step_trains_every_level_once_and_refuses_unknown_levels():
    model = _tiny_model()
    opts_g, opts_d = _optimizers(model)
    gen = mg.Generator(1, "cpu")
    images = mg.tensor(gen.uniform((4, 1, 8, 8), dtype=np.float32) * 2 - 1)
    stats = L.train_step(model, opts_g, opts_d, images, None, gen)
    assert stats["loss"] == pytest.approx(np.mean([stats[f"loss_d_{k}"] for k in range(3)]))
    assert all({s["step"] for s in opt.state.values()} == {1} for opt in opts_g + opts_d)
    with pytest.raises(ValueError, match="level 3 does not exist"):
        L.train_step(model, opts_g, opts_d, images, None, gen, levels=[3])
    with pytest.raises(ValueError, match="levels is empty"):
        L.train_step(model, opts_g, opts_d, images, None, gen, levels=[])


def test_level_k_trains_on_the_real_residual_and_its_real_low_pass_image():
    model = _tiny_model()
    images = mg.tensor(np.random.default_rng(3).uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32))
    pyramid = model.real_pyramid(images)
    coarse, residuals = L.laplacian_pyramid(images, 3)
    x, (low, coarser, _) = model.level_batch(pyramid, 0)
    np.testing.assert_array_equal(x.numpy(), residuals[0].numpy())
    np.testing.assert_array_equal(low.numpy(), L.upsample(pyramid[1]).numpy())
    np.testing.assert_array_equal(coarser.numpy(), pyramid[1].numpy())
    x2, y2 = model.level_batch(pyramid, 2)
    np.testing.assert_array_equal(x2.numpy(), coarse.numpy())
    assert y2 is None and not x.requires_grad and not low.requires_grad


# ----------------------------------------------------------------------------
# the families
# ----------------------------------------------------------------------------

_TINY = dict(latent_dim=4, channels=(4, 4, 4), batch_size=4)


def _tiny_data(n=12, side=8):
    gen = mg.Generator(5, "cpu")
    images = gen.uniform((n, 1, side, side), dtype=np.float32)
    return Dataset(images, np.arange(n) % 10, "mnist", "train", "random test images", [str(i) for i in range(10)])


def test_bad_configs_are_refused():
    with pytest.raises(TrainingError, match="level must be -1 \\(all\\) or in \\[0, 2\\], got 3"):
        make_config(LAPGANRecipe, {"level": 3})
    with pytest.raises(TrainingError, match="upsample must be one of"):
        make_config(LAPGANRecipe, {"upsample": "cubic"})
    with pytest.raises(TrainingError, match="levels must be a positive integer"):
        make_config(ConditionalLAPGANRecipe, {"levels": 0})
    with pytest.raises(TrainingError, match="g_loss must be one of"):
        make_config(LAPGANRecipe, {"g_loss": "hinge"})
    with pytest.raises(TrainingError, match="channels needs one width per level \\(3\\), got \\(4, 4\\)"):
        make_config(LAPGANRecipe, {"channels": (4, 4)})
    config = make_config(LAPGANRecipe, {**_TINY, "levels": 4, "channels": (4, 4, 4, 4)})
    with pytest.raises(TrainingError, match="divisible by 8; got 28x28"):
        LAPGANRecipe(config, _tiny_data(side=28), "cpu", mg.Generator(0, "cpu"))


@pytest.mark.parametrize("recipe_cls", [LAPGANRecipe, ConditionalLAPGANRecipe])
@pytest.mark.parametrize("level", [-1, 1])
def test_recipe_trains_the_chosen_levels_with_their_own_optimizers(device, recipe_cls, level):
    config = make_config(recipe_cls, {**_TINY, "level": level, "device": device})
    data = _tiny_data(side=8)
    r = recipe_cls(config, data, device, mg.Generator(0, device))
    assert set(r.optimizers) == {f"{role}_{k}" for role in ("generator", "discriminator") for k in range(3)}
    assert r.trained_levels == ([2, 1, 0] if level == -1 else [1])
    x, y = r.prepare(mg.tensor(data.images[:4], device=device), mg.tensor(data.labels[:4], device=device), None)
    assert x.numpy().min() >= -1 and x.numpy().min() < -0.8
    for _ in range(2):
        logs = r.train_step(x, y)
    assert np.isfinite(logs["loss"])
    for k in range(3):
        steps = {s["step"] for s in r.optimizers[f"generator_{k}"].state.values()}
        assert steps == ({2} if k in r.trained_levels else set())
    r.train(False)
    labels = [0, 1, 2, 3] if r.conditional else None
    chain = r.sample_pyramid(4, mg.Generator(1, device), labels=labels)
    assert [c.shape for c in chain] == [(4, 1, 2, 2), (4, 1, 4, 4), (4, 1, 8, 8)]
    assert all(c.min() >= 0 and c.max() <= 1 for c in chain)
    np.testing.assert_array_equal(r.sample(4, mg.Generator(1, device), labels=labels), chain[-1])


class _FakeClassifier:
    """Stands in for the reference classifier: features are the 16 4x4 block means of a 28x28 image."""

    def features_and_probs(self, images):
        images = np.asarray(images, dtype=np.float64)
        assert images.shape[1:] == (1, 28, 28)
        f = images.reshape(len(images), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(images), -1)[:, :16]
        probs = np.full((len(images), 10), 0.01)
        probs[:, 0] = 0.91
        return f, probs


def test_evaluate_reports_the_fld_of_every_level_upsampled(monkeypatch):
    import minigen.families.lapgan as family

    monkeypatch.setattr(family, "get_classifier", lambda *a, **k: _FakeClassifier())
    data = _tiny_data(n=40, side=28)
    for recipe_cls in (LAPGANRecipe, ConditionalLAPGANRecipe):
        config = make_config(recipe_cls, {**_TINY, "eval_samples": 30})
        r = recipe_cls(config, data, "cpu", mg.Generator(0, "cpu"))
        r.train(False)
        out = r.evaluate(data.images[:30], data.labels[:30], mg.Generator(2, "cpu"))
        keys = {f"fld_level_{k}" for k in range(3)} | {f"fld_level_{k}_floor" for k in range(3)}
        keys |= {"fld_level_0_given_real", "fld_level_1_given_real"}
        if r.conditional:
            keys |= {f"conditional_accuracy_level_{k}" for k in range(3)}
            assert out["conditional_accuracy_level_0"] == pytest.approx(0.1)  # the fake always says "0"
        assert set(out) == keys and all(np.isfinite(v) for v in out.values())
        # an untrained generator is far from the data; the real low-pass images are close to it
        assert all(out[f"fld_level_{k}"] > out[f"fld_level_{k}_floor"] for k in range(3))
        # these features are 4x4 block means, which a level-0 image drawn from a real I_1 keeps
        # (d(I~_0) = I_1): its FLD is the real images' own
        assert out["fld_level_0_given_real"] == pytest.approx(out["fld_level_0_floor"], abs=1e-3)
        assert out["fld_level_0"] > out["fld_level_0_given_real"] + 1e-3  # the chain's own I~_1 is not real
    config = make_config(LAPGANRecipe, {**_TINY, "eval_samples": 0})
    assert LAPGANRecipe(config, data, "cpu", mg.Generator(0, "cpu")).evaluate(data.images, data.labels, None) == {}


# ----------------------------------------------------------------------------
# end to end through the training loop, with resume
# ----------------------------------------------------------------------------

_LOOP = dict(latent_dim=4, channels=(2, 2, 2), batch_size=4, steps=4, log_every=1, checkpoint_every=4,
             sample_every=0, n_samples=10, eval_samples=0)


def _losses(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [(r["step"], r["loss"], *(r[f"loss_g_{k}"] for k in range(3))) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def loop_runs(tmp_path_factory):
    """Each family trained for 4 steps in one go ("full") and in two sittings, 2 + 2 steps ("cut")."""
    import minigen.train
    from minigen import families
    from minigen.train import train

    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(minigen.train, "_plot_curves", lambda run: None)  # matplotlib's layout is most of the time
        for recipe_cls in (LAPGANRecipe, ConditionalLAPGANRecipe):
            patch.setitem(families.FAMILIES, recipe_cls.name, recipe_cls)  # --resume finds a family by name
            base = tmp_path_factory.mktemp(recipe_cls.name)
            full = train(recipe_cls, _LOOP, out_dir=str(base / "full"), progress=False, verbose=False)
            cut = str(base / "cut")
            train(recipe_cls, {**_LOOP, "steps": 2}, out_dir=cut, progress=False, verbose=False)
            train(None, {"steps": 4}, resume=cut, progress=False, verbose=False)
            runs[recipe_cls.name] = (full, cut)
        yield runs


@pytest.mark.parametrize("family", ["lapgan", "clapgan"])
def test_training_loop_runs_and_resumes_exactly(loop_runs, family):
    full, cut = loop_runs[family]
    assert [row[0] for row in _losses(full)] == [1, 2, 3, 4]
    assert _losses(full) == _losses(cut)
    with open(os.path.join(full, "config.json")) as f:
        assert json.load(f)["family"] == family
    assert os.path.exists(os.path.join(full, "samples.png"))


def test_example_pictures_of_finished_runs(loop_runs, monkeypatch):
    import importlib.util

    from minigen import families

    for recipe_cls in (LAPGANRecipe, ConditionalLAPGANRecipe):   # the pictures reopen the runs by name
        monkeypatch.setitem(families.FAMILIES, recipe_cls.name, recipe_cls)
    spec = importlib.util.spec_from_file_location("lapgan_mnist", os.path.join(ROOT, "examples", "lapgan_mnist.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    runs = [loop_runs[family][0] for family in ("lapgan", "clapgan")]
    example.main(["--runs", *runs])
    for run in runs:
        for name in ("pyramid_strip.png", "real_pyramid.png"):
            assert os.path.exists(os.path.join(run, name)), (run, name)

"""StyleGAN (minigen.models.stylegan, minigen.families.stylegan): the style operations and the notes' claims.

Notes §3.3 (StyleGAN): z is mapped to a style w that controls every layer, and
noise adds the fine detail.  Checked here:
* AdaIN gives each feature map the style's mean and std; demodulated weights
  give unit-variance outputs for unit-variance i.i.d. inputs; the batched
  modulated convolution (both forms) equals an explicit per-sample convolution;
* truncation: psi = 0 gives w_avg for every z, psi = 1 gives w; w_avg is a moving average;
* style mixing with crossover k: layers < k see w1, layers >= k see w2 (the
  styles recorded at the layers' affine maps);
* noise: zero noise scales make G deterministic given w; the fixed noise
  buffers make sampling reproducible, fresh noise changes only the details;
* R1: its gradient with respect to D's weights (a second derivative through
  every op of D) passes the float64 check, which a planted bug fails;
* the recipe: truncation in ``sample``, configs refused, a tiny run that
  resumes to identical losses.
"""
import json
import os

import numpy as np
import pytest

import minigen as mg
import minigen.functional as F
from minigen import optim
from minigen.data import Dataset
from minigen.families.base import TrainingError, make_config
from minigen.families.stylegan import StyleGANRecipe
from minigen.models import stylegan as sg
from minigen.testing import GradcheckError, gradcheck

TINY = dict(z_dim=8, w_dim=8, mapping_layers=2, channels=(4, 4, 3))  # 16 x 16 images


def tiny_config(**kw):
    return sg.StyleGANConfig(**{**TINY, **kw})


def t(a, requires_grad=False):
    return mg.tensor(np.asarray(a), requires_grad=requires_grad)


# ----------------------------------------------------------------------------
# AdaIN and the modulated convolution
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 6, 8, 8)])
def test_adain_output_has_the_style_mean_and_std(shape, float64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3.0 + 1.5
    B, C = shape[:2]
    scale, bias = rng.uniform(0.3, 2.0, (B, C)) * rng.choice([-1, 1], (B, C)), rng.standard_normal((B, C))
    y = sg.adain(t(x), t(scale), t(bias), eps=1e-12).numpy()
    np.testing.assert_allclose(y.mean(axis=(2, 3)), bias, atol=1e-10)
    np.testing.assert_allclose(y.std(axis=(2, 3)), np.abs(scale), rtol=1e-8)
    # the statistics come from the style, not from the input
    assert not np.allclose(x.std(axis=(2, 3)), np.abs(scale), rtol=0.1)


def test_demodulated_weights_give_unit_variance_outputs(float64):
    rng = np.random.default_rng(1)
    B, C_in, C_out = 3, 16, 5
    x = rng.standard_normal((B, C_in, 40, 40))                                 # unit variance, i.i.d.
    weight = rng.standard_normal((C_out, C_in, 3, 3)) * rng.uniform(0.1, 3.0, (C_out, 1, 1, 1))
    styles = rng.uniform(0.2, 4.0, (B, C_in))
    y = sg.modulated_conv2d(t(x), t(weight), t(styles), demodulate=True).numpy()  # no padding: no zero borders
    var = y.var(axis=(2, 3))                                                    # (B, C_out)
    np.testing.assert_allclose(var.mean(), 1.0, atol=0.03)
    np.testing.assert_allclose(var, 1.0, atol=0.2)
    # without demodulation the variance is sum_{i,k} (s_i w_{o,i,k})^2, far from 1 here
    y_mod = sg.modulated_conv2d(t(x), t(weight), t(styles), demodulate=False).numpy()
    expected = ((weight[None] * styles[:, None, :, None, None]) ** 2).sum(axis=(2, 3, 4))
    np.testing.assert_allclose(y_mod.var(axis=(2, 3)) / expected, 1.0, atol=0.2)
    assert np.abs(np.log(expected)).min() > 1.0


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("padding", [0, 1])
def test_modulated_conv_equals_an_explicit_per_sample_convolution(fused, demodulate, padding, float64):
    rng = np.random.default_rng(2)
    B, C_in, C_out, k = 3, 4, 5, 3
    x, weight = rng.standard_normal((B, C_in, 6, 7)), rng.standard_normal((C_out, C_in, k, k))
    styles = rng.standard_normal((B, C_in))
    y = sg.modulated_conv2d(t(x), t(weight), t(styles), demodulate=demodulate, padding=padding, fused=fused)
    for b in range(B):                                                        # the reference: one sample at a time
        w_b = weight * styles[b][None, :, None, None]
        if demodulate:
            w_b = w_b / np.sqrt((w_b ** 2).sum(axis=(1, 2, 3), keepdims=True) + 1e-8)
        ref = F.conv2d(t(x[b:b + 1]), t(w_b), padding=padding).numpy()
        np.testing.assert_allclose(y.numpy()[b:b + 1], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True])
def test_modulated_conv_gradients(fused, float64):
    rng = np.random.default_rng(3)
    x, weight, styles = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 3, 3)), rng.uniform(0.5, 2, (2, 3))
    assert gradcheck(lambda a, w, s: sg.modulated_conv2d(a, w, s, demodulate=True, padding=1, fused=fused),
                     [x, weight, styles])


# ----------------------------------------------------------------------------
# mapping network, truncation, w_avg
# ----------------------------------------------------------------------------

def test_truncation_psi_0_gives_w_avg_and_psi_1_gives_w(float64):
    G = sg.StyleGANGenerator(tiny_config(), generator=mg.Generator(0))
    G.mapping.w_avg.data[...] = np.random.default_rng(4).standard_normal(8)    # some average style
    z = t(np.random.default_rng(5).standard_normal((6, 8)))
    w = G.mapping(z).numpy()
    np.testing.assert_allclose(G.mapping(z, psi=0.0).numpy(), np.tile(G.mapping.w_avg.numpy(), (6, 1)), atol=1e-14)
    np.testing.assert_allclose(G.mapping(z, psi=1.0).numpy(), w, atol=1e-14)
    np.testing.assert_allclose(sg.truncate(t(w), G.mapping.w_avg, 1.0).numpy(), w, atol=1e-14)
    half = sg.truncate(t(w), G.mapping.w_avg, 0.5).numpy()
    np.testing.assert_allclose(half, 0.5 * (w + G.mapping.w_avg.numpy()), atol=1e-14)
    assert np.abs(w - G.mapping.w_avg.numpy()).min() > 1e-3                  # psi really changes something


def test_w_avg_is_a_moving_average_of_w(float64):
    mapping = sg.MappingNetwork(8, 8, 2, w_avg_beta=0.9, generator=mg.Generator(0))
    rng = np.random.default_rng(6)
    expected = np.zeros(8)
    for _ in range(3):
        w = rng.standard_normal((5, 8))
        mapping.update_w_avg(t(w))
        expected = 0.9 * expected + 0.1 * w.mean(axis=0)
    np.testing.assert_allclose(mapping.w_avg.numpy(), expected, atol=1e-14)
    # and a generator step moves it
    G, D = sg.build_stylegan(tiny_config(), generator=mg.Generator(0))
    before = G.mapping.w_avg.numpy().copy()
    sg.generator_step(G, D, optim.Adam(G.parameters()), 4, mg.Generator(1))
    assert np.abs(G.mapping.w_avg.numpy() - before).max() > 1e-6


def test_mapping_network_pixel_normalises_z(float64):
    mapping = sg.MappingNetwork(8, 8, 2, generator=mg.Generator(0))
    z = np.random.default_rng(7).standard_normal((3, 8))
    np.testing.assert_allclose(mapping(t(z * 5.0)).numpy(), mapping(t(z)).numpy(), atol=1e-10)


# ----------------------------------------------------------------------------
# style mixing
# ----------------------------------------------------------------------------

def _record_styles(G):
    """Wrap every affine map A of the synthesis network; returns the list that collects (style index, input).

    The index each module reads, by the SynthesisNetwork docstring: layer i reads
    ws[:, i], a styled ToRGB after layer i reads ws[:, i + 1].
    """
    seen = []
    styled = list(enumerate(G.synthesis.layers))
    styled += [(after + 1, rgb) for after, rgb in zip(G.synthesis.rgb_after, G.synthesis.to_rgbs) if rgb.styled]
    for index, module in styled:
        affine = module.affine
        original = affine.forward

        def recording(w, index=index, original=original):
            seen.append((index, w.numpy().copy()))
            return original(w)
        object.__setattr__(affine, "forward", recording)
    return seen


@pytest.mark.parametrize("style_mode", ["modulated", "adain"])
def test_style_mixing_uses_w1_below_the_crossover_and_w2_from_it(style_mode, float64):
    G = sg.StyleGANGenerator(tiny_config(style_mode=style_mode), generator=mg.Generator(0))
    num_ws = G.num_ws
    assert num_ws == 5 + (style_mode == "modulated")                          # 1 + 2 + 2 layers (+ toRGB)
    rng = np.random.default_rng(8)
    w1, w2 = G.mapping(t(rng.standard_normal((2, 8)))), G.mapping(t(rng.standard_normal((2, 8))))
    seen = _record_styles(G)
    for k in range(num_ws + 1):
        seen.clear()
        G.synthesis(sg.mix_styles(w1, w2, k, num_ws), noise_mode="const")
        assert {i for i, _ in seen} == set(range(num_ws))                     # every style is used
        assert len(seen) == len(G.synthesis.layers) + (len(G.synthesis.to_rgbs) if style_mode == "modulated" else 0)
        for i, w in seen:
            np.testing.assert_array_equal(w, (w1 if i < k else w2).numpy())
    with pytest.raises(ValueError, match="crossover"):
        sg.mix_styles(w1, w2, num_ws + 1, num_ws)


def test_sample_styles_mixes_with_the_given_probability(float64):
    G = sg.StyleGANGenerator(tiny_config(), generator=mg.Generator(0))
    gen = mg.Generator(9)
    ks = [sg.sample_styles(G, 2, gen, mixing_prob=1.0)[2] for _ in range(40)]
    assert set(ks) == set(range(1, G.num_ws))                                  # crossover ~ U{1, ..., num_ws - 1}
    ws, w1, k = sg.sample_styles(G, 2, gen, mixing_prob=1.0)
    np.testing.assert_array_equal(ws.numpy()[:, :k], np.repeat(w1.numpy()[:, None], k, axis=1))
    assert not np.allclose(ws.numpy()[:, k], w1.numpy())
    assert {sg.sample_styles(G, 2, gen, mixing_prob=0.0)[2] for _ in range(10)} == {G.num_ws}
    mixed = [sg.sample_styles(G, 2, gen, mixing_prob=0.9)[2] < G.num_ws for _ in range(200)]
    assert 0.8 < np.mean(mixed) < 0.97


def test_skip_generator_adds_the_upsampled_images_of_the_coarser_resolutions(float64):
    G = sg.StyleGANGenerator(tiny_config(output="linear"), generator=mg.Generator(0))  # 4 -> 8 -> 16
    syn = G.synthesis
    ws = G.styles(G.mapping(t(np.random.default_rng(20).standard_normal((2, 8)))))
    full = syn(ws, "const").numpy()
    last = syn.to_rgbs[-1]
    last.conv.weight.data[...] = 0.0                                             # silence the 16 x 16 ToRGB
    x, images = F.broadcast_to(syn.const, (2,) + syn.const.shape[1:]), []
    for i in range(3):                                                           # the 4 x 4 and 8 x 8 layers
        x = syn.layers[i](x, ws[:, i], "const")
        if i in (0, 2):
            images.append(syn.to_rgbs[len(images)](x, ws[:, i + 1]))
    up = lambda a: F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=False)
    expected = up(up(images[0]) + images[1]).numpy()
    np.testing.assert_allclose(syn(ws, "const").numpy(), expected, atol=1e-12)
    assert np.abs(expected).max() > 1e-2 and np.abs(full - expected).max() > 1e-3


@pytest.mark.parametrize("style_mode", ["modulated", "adain"])
def test_tanh_output_squashes_the_linear_generators_image(style_mode, float64):
    linear = sg.StyleGANGenerator(tiny_config(style_mode=style_mode, output="linear"), generator=mg.Generator(3))
    squashed = sg.StyleGANGenerator(tiny_config(style_mode=style_mode), generator=mg.Generator(3))  # default tanh
    assert squashed.synthesis.output == "tanh"
    z = t(np.random.default_rng(21).standard_normal((3, 8)))
    a, b = linear(z, noise_mode="const").numpy(), squashed(z, noise_mode="const").numpy()
    np.testing.assert_allclose(b, np.tanh(a), atol=1e-12)
    assert np.abs(a).max() > 1.0 and np.abs(b).max() < 1.0                    # the squashing did something


def test_runs_written_before_the_output_option_keep_their_linear_output(tmp_path):
    from minigen.train import read_run_config
    for saved, expected in (({}, "linear"), ({"output": "tanh"}, "tanh"), ({"output": "linear"}, "linear")):
        run = tmp_path / f"run-{expected}-{len(saved)}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"family": "stylegan", "config": dict(TINY, **saved)}))
        assert read_run_config(str(run))[1].output == expected
    assert make_config(StyleGANRecipe, {}).output == "tanh"                   # new runs: tanh


# ----------------------------------------------------------------------------
# noise inputs
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("style_mode", ["modulated", "adain"])
def test_noise_scales_at_zero_make_g_deterministic_given_w(style_mode, float64):
    G = sg.StyleGANGenerator(tiny_config(style_mode=style_mode), generator=mg.Generator(0))
    ws = G.styles(G.mapping(t(np.random.default_rng(10).standard_normal((3, 8)))))
    for layer in G.synthesis.layers:                                          # zero, as initialised
        assert np.all(layer.noise_strength.numpy() == 0)
    a = G.synthesis(ws, "random", mg.Generator(1)).numpy()
    b = G.synthesis(ws, "random", mg.Generator(2)).numpy()
    np.testing.assert_array_equal(a, b)
    for layer in G.synthesis.layers:                                          # now let the noise in
        layer.noise_strength.data[...] = 0.5
    c = G.synthesis(ws, "random", mg.Generator(1)).numpy()
    d = G.synthesis(ws, "random", mg.Generator(2)).numpy()
    assert np.abs(c - d).max() > 1e-3
    np.testing.assert_array_equal(c, G.synthesis(ws, "random", mg.Generator(1)).numpy())


def test_fixed_noise_buffers_make_sampling_reproducible(float64):
    G = sg.StyleGANGenerator(tiny_config(), generator=mg.Generator(0))
    twin = sg.StyleGANGenerator(tiny_config(), generator=mg.Generator(0))
    for layer in list(G.synthesis.layers) + list(twin.synthesis.layers):
        layer.noise_strength.data[...] = 0.5
    ws = G.styles(G.mapping(t(np.random.default_rng(11).standard_normal((2, 8)))))
    const = G.synthesis(ws, "const").numpy()
    np.testing.assert_array_equal(const, G.synthesis(ws, "const").numpy())
    np.testing.assert_array_equal(const, twin.synthesis(ws, "const").numpy())   # the buffers come from the seed
    assert "synthesis.layers.0.noise_const" in G.state_dict()                  # and travel with checkpoints
    assert np.abs(const - G.synthesis(ws, "none").numpy()).max() > 1e-3
    with pytest.raises(ValueError, match="explicit generator"):
        G.synthesis(ws, "random")
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, "fresh", mg.Generator(0))


# ----------------------------------------------------------------------------
# the pictures
# ----------------------------------------------------------------------------

def test_style_mixing_grid_cells_mix_their_column_and_row(float64):
    G = sg.StyleGANGenerator(tiny_config(), generator=mg.Generator(0))
    rng = np.random.default_rng(18)
    za, zb = t(rng.standard_normal((3, 8))), t(rng.standard_normal((2, 8)))
    grid = sg.style_mixing_grid(G, za, zb, crossover=2)
    assert grid.shape == (3 * 4, 1, 16, 16) and np.all(grid[0] == -1.0)
    np.testing.assert_allclose(grid[1:4], G(za, noise_mode="const").numpy(), atol=1e-12)     # top row
    np.testing.assert_allclose(grid[[4, 8]], G(zb, noise_mode="const").numpy(), atol=1e-12)  # left column
    wa, wb = G.mapping(za), G.mapping(zb)
    cell = G.synthesis(sg.mix_styles(wa[2:3], wb[1:2], 2, G.num_ws), "const").numpy()
    np.testing.assert_allclose(grid[8 + 3], cell[0], atol=1e-12)                             # row 2, column 3


def test_truncation_sweep_and_noise_variation(float64):
    G = sg.StyleGANGenerator(tiny_config(), generator=mg.Generator(0))
    G.mapping.w_avg.data[...] = 0.2
    z = t(np.random.default_rng(19).standard_normal((3, 8)))
    sweep = sg.truncation_sweep(G, z, psis=(0.0, 1.0))
    assert sweep.shape == (6, 1, 16, 16)
    np.testing.assert_allclose(sweep[0], sweep[2], atol=1e-12)                 # psi = 0: w_avg for every z
    np.testing.assert_allclose(sweep[3:], G(z, noise_mode="const").numpy(), atol=1e-12)
    w = G.mapping(z[:1])
    images, std = sg.noise_variation(G, w, 4, mg.Generator(1))
    assert images.shape == (4, 1, 16, 16) and std.shape == (1, 16, 16) and std.max() == 0.0  # scales start at 0
    for layer in G.synthesis.layers:
        layer.noise_strength.data[...] = 0.3
    assert sg.noise_variation(G, w, 4, mg.Generator(1))[1].min() > 0.0


# ----------------------------------------------------------------------------
# R1 and the training step
# ----------------------------------------------------------------------------

def _r1_of_parameters(D, x):
    """R1 as a function of D's parameters (swapped in for the call), for gradcheck."""
    names = [name for name, _ in D.named_parameters()]

    def fn(*params):
        owners = []
        for name, p in zip(names, params):
            *path, leaf = name.split(".")
            module = D
            for part in path:
                module = getattr(module, part)
            owners.append((module, leaf, module._parameters[leaf]))
            module._parameters[leaf] = p
        try:
            with mg.enable_grad():                                            # the probe runs under no_grad
                return sg.r1_penalty(D, t(x))[0]
        finally:
            for module, leaf, original in owners:
                module._parameters[leaf] = original
    return fn, [p.numpy().copy() for p in D.parameters()]


def _tiny_discriminator():
    return sg.StyleGANDiscriminator(channels=(3, 2), mbstd_group=2, generator=mg.Generator(12))   # 8 x 8 images


def test_r1_gradient_wrt_d_weights_passes_the_second_order_check(float64):
    D = _tiny_discriminator()
    x = np.random.default_rng(13).standard_normal((4, 1, 8, 8))
    fn, params = _r1_of_parameters(D, x)
    assert gradcheck(fn, params, rtol=1e-5, atol=1e-8, max_elementwise=8, n_directions=2)


def test_a_planted_first_order_only_backward_fails_the_r1_check(monkeypatch, float64):
    # a leaky ReLU whose backward is not recorded (constant in the upstream gradient's graph)
    def detached_backward(self, gy):
        x = self.inputs[0].data
        return mg.Tensor(gy.data * np.where(x > 0, 1.0, self.slope))
    D = _tiny_discriminator()
    x = np.random.default_rng(13).standard_normal((4, 1, 8, 8))
    fn, params = _r1_of_parameters(D, x)
    monkeypatch.setattr(F.math.LeakyReLU, "backward", detached_backward)
    with pytest.raises(GradcheckError):
        assert gradcheck(fn, params, rtol=1e-5, atol=1e-8, max_elementwise=8, n_directions=2)


def test_r1_is_the_squared_input_gradient_of_d(float64):
    D = _tiny_discriminator()
    x = np.random.default_rng(14).standard_normal((4, 1, 8, 8))
    r1, logits = sg.r1_penalty(D, t(x))
    xt = t(x, requires_grad=True)
    (g,) = mg.grad(D(xt).sum(), [xt])
    assert r1.item() == pytest.approx(float((g.numpy() ** 2).sum(axis=(1, 2, 3)).mean()), rel=1e-12)
    np.testing.assert_allclose(logits.numpy(), D(t(x)).numpy(), atol=1e-14)


def test_lazy_r1_adds_its_weighted_gradient_to_the_discriminator_step(float64):
    cfg = tiny_config(channels=(3, 2))
    x = t(np.random.default_rng(15).standard_normal((4, 1, 8, 8)))

    def d_grads(lazy, gamma):
        G, D = sg.build_stylegan(cfg, generator=mg.Generator(0))
        D.mbstd.group_size = 2
        opt = optim.SGD(D.parameters(), lr=0.0)                              # keep the gradients, change nothing
        logs = sg.discriminator_step(G, D, opt, x, mg.Generator(1), 0.9, gamma, lazy_r1=lazy, r1_every=4)
        return [p.grad.numpy() for p in D.parameters()], logs, D

    plain, logs_plain, _ = d_grads(False, 2.0)
    lazy, logs_lazy, D = d_grads(True, 2.0)
    assert "r1" not in logs_plain and logs_lazy["r1"] > 0
    r1, _ = sg.r1_penalty(D, x)
    r1_grads = mg.grad(r1, list(D.parameters()), allow_unused=True)          # the last bias does not enter R1
    expected = [p + (0.0 if q is None else 0.5 * 2.0 * 4 * q.numpy()) for p, q in zip(plain, r1_grads)]
    assert sum(q is not None for q in r1_grads) > len(r1_grads) // 2
    for a, b in zip(lazy, expected):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_train_step_learns_something_and_reports_finite_losses():
    cfg = tiny_config()
    G, D = sg.build_stylegan(cfg, generator=mg.Generator(0))
    opt_g, opt_d = optim.Adam(G.parameters(), lr=2e-3, betas=(0, 0.99)), optim.Adam(D.parameters(), lr=2e-3,
                                                                                     betas=(0, 0.99))
    x = mg.Tensor(np.random.default_rng(16).uniform(-1, 1, (4, 1, 16, 16)).astype(np.float32))
    before = [p.numpy().copy() for p in G.parameters()]
    logs = [sg.train_step(G, D, opt_g, opt_d, x, mg.Generator(1), step, cfg) for step in range(2)]
    assert "r1" in logs[0] and "r1" not in logs[1]                          # step 0 is a lazy-R1 step
    assert all(np.isfinite(v) for row in logs for v in row.values())
    assert logs[0]["loss"] == logs[0]["loss_d"]
    moved = [np.abs(p.numpy() - b).max() for p, b in zip(G.parameters(), before)]
    assert max(moved) > 0


# ----------------------------------------------------------------------------
# the recipe
# ----------------------------------------------------------------------------

def _dataset(n=16):
    rng = np.random.default_rng(17)
    images = rng.uniform(0, 1, (n, 1, 28, 28)).astype(np.float32)
    return Dataset(images, rng.integers(0, 10, n), "mnist", "train", "random", [str(i) for i in range(10)])


def test_recipe_pads_to_32_and_samples_honour_truncation_psi():
    config = make_config(StyleGANRecipe, dict(z_dim=8, w_dim=8, mapping_layers=2, channels=(4, 4, 4, 3),
                                              batch_size=4))
    recipe = StyleGANRecipe(config, _dataset(), "cpu", mg.Generator(0))
    x, _ = recipe.prepare(mg.tensor(_dataset().images[:4]), None, None)
    assert x.shape == (4, 1, 32, 32) and np.all(x.numpy()[:, :, :2] == -1.0) and x.numpy().max() <= 1.0
    recipe.G.mapping.w_avg.data[...] = 0.3                                    # an average style away from 0
    for layer in recipe.G.synthesis.layers:
        layer.noise_strength.data[...] = 0.0
    psi0 = recipe.sample(3, mg.Generator(1), psi=0.0)
    assert psi0.shape == (3, 1, 28, 28) and 0.0 <= psi0.min() and psi0.max() <= 1.0
    np.testing.assert_allclose(psi0[0], psi0[1], atol=1e-6)                    # every z -> w_avg
    assert np.abs(recipe.sample(3, mg.Generator(1), psi=1.0)[0] - recipe.sample(3, mg.Generator(1), psi=1.0)[1]).max() > 1e-4
    recipe.config.truncation_psi = 0.0                                        # what `sample --truncation 0` sets
    np.testing.assert_allclose(recipe.sample(3, mg.Generator(2)), psi0, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"style_mode": "adaptive"}, "style_mode must be one of"),
    ({"output": "sigmoid"}, "output must be one of"),
    ({"channels": (8,)}, "channels needs"),
    ({"mapping_lr_mul": 0.0}, "mapping_lr_mul"),
    ({"style_mixing_prob": 1.5}, "style_mixing_prob"),
    ({"r1_gamma": -1.0}, "r1_gamma"),
    ({"truncation_psi": 1.5}, "truncation_psi"),
    ({"beta2": 1.0}, "beta2"),
    ({"batch_size": 6}, "mbstd_group"),
])
def test_bad_configs_are_refused_with_one_line(overrides, message):
    with pytest.raises(TrainingError, match=message):
        make_config(StyleGANRecipe, overrides)


def test_the_example_runs_quick(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
    out = tmp_path / "stylegan_mnist"
    proc = subprocess.run([sys.executable, os.path.join(root, "examples", "stylegan_mnist.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("samples", "mixing", "truncation", "noise"):
        with open(out / f"stylegan_{name}.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_tiny_run_resumes_to_identical_losses(tmp_path, monkeypatch):
    from minigen.families import FAMILIES
    from minigen.train import train
    monkeypatch.setitem(FAMILIES, "stylegan", StyleGANRecipe)                 # resume looks the family up by name
    opts = dict(z_dim=8, w_dim=8, mapping_layers=2, channels=(4, 4, 4, 3), batch_size=4, steps=6,
                r1_every=2, log_every=1, checkpoint_every=3, sample_every=0, n_samples=4, eval_samples=0)
    full = train(StyleGANRecipe, opts, out_dir=str(tmp_path / "full"), progress=False, verbose=False)
    cut = train(StyleGANRecipe, {**opts, "steps": 3}, out_dir=str(tmp_path / "cut"), progress=False, verbose=False)
    train(None, {"steps": 6}, resume=cut, progress=False, verbose=False)

    def losses(run):
        with open(os.path.join(run, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [(r["step"], r["loss_d"], r["loss_g"], r.get("r1")) for r in rows if "loss_d" in r]

    assert [s for s, *_ in losses(full)] == [1, 2, 3, 4, 5, 6]
    assert losses(full) == losses(cut)

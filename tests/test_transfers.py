"""The GPU path's transfer budget, checked on the CPU with ``backend.count_transfers``.

A GPU run is fast only if its hot loops never wait for the device: no value read
back to the host inside a training step (the logged numbers are read together,
on logging steps only), no noise drawn on the host and copied up.  The counting
mode counts the same calls on the CPU backend, so these tests guard the GPU path
on every machine (and run on the GPU too when CuPy sees one).
"""
import math

import numpy as np
import pytest

import minigen as mg
from minigen import backend, optim
from minigen.data import Dataset
from minigen.families import families
from minigen.models import gmm as gmm_module
from minigen.models.diffusion.ddpm import GaussianDiffusion
from minigen.train import NonFiniteLossError, _check_losses, make_config


def _tiny_data(n=16):
    gen = mg.Generator(5, "cpu")
    images = np.round(gen.uniform((n, 1, 28, 28), dtype=np.float32) * 255) / 255
    return Dataset(images, np.arange(n) % 10, "mnist", "train", "random test images", [str(i) for i in range(10)])


TINY = {
    "vae": dict(hidden=16, latent_dim=3, batch_size=4),
    "dcgan": dict(latent_dim=8, channels=4, batch_size=4),
    "ddpm": dict(T=20, sample_steps=5, base_channels=8, channel_mults=(1, 2), time_dim=16, batch_size=4, dropout=0.1,
                 grad_clip=1.0),
    "cddpm": dict(T=20, sample_steps=5, base_channels=8, channel_mults=(1, 2), time_dim=16, batch_size=4, grad_clip=1.0,
                  label_dropout=0.5),
    "autoencoder": dict(arch="mlp", hidden=16, latent_dim=3, batch_size=4),
    "progan": dict(batch_size=4),
    "lapgan": dict(latent_dim=8, channels=(4, 4, 4), batch_size=4),
    "stylegan": dict(z_dim=8, w_dim=8, channels=(4, 4, 4, 4), batch_size=4, r1_every=1),  # R1 on every step
}


def _recipe(name, device):
    cls = families()[name]
    data = _tiny_data()
    config = make_config(cls, {**TINY[name], "device": device})
    recipe = cls(config, data, device, mg.Generator(0, device))
    x = mg.tensor(data.images[:4], device=device)
    y = mg.tensor(data.labels[:4], device=device)
    return recipe, recipe.prepare(x, y, mg.Generator(1, "cpu"))


# ----------------------------------------------------------------------------
# the counting mode itself
# ----------------------------------------------------------------------------

def test_count_transfers_counts_every_host_read_and_upload():
    t = mg.tensor([1.0, 2.0, 3.0])
    with backend.count_transfers() as n:
        s = (t * t).sum()                       # device work: nothing counted
        assert n.reads == 0 and n.writes == 0
        s.item()
        float(s)
        bool(s > 0)
        t.numpy()
        t.tolist()
        backend.to_numpy(t.data)
        assert n.reads == 6
        backend.to_device(np.zeros(3, np.float32), t.device)
        assert n.writes == 1
        with backend.count_transfers() as inner:   # nested blocks count for both
            s.item()
        assert inner.reads == 1 and n.reads == 7
    s.item()                                        # outside the block: not counted
    assert n.reads == 7 and "reads=7" in repr(n)


def test_read_scalars_reads_many_values_in_one_transfer(device):
    xp = backend.get_array_module(device)
    values = [xp.asarray(1.5, dtype=np.float32), 2, xp.asarray([np.inf]), mg.tensor(0.25, device=device).data]
    with backend.count_transfers() as n:
        out = backend.read_scalars(values)
    assert out == [1.5, 2.0, math.inf, 0.25] and n.reads == 1
    assert all(type(v) is float for v in out)


def test_step_logs_read_lazily_and_once(device):
    loss = mg.tensor(2.0, device=device, requires_grad=True) * 3
    with backend.count_transfers() as n:
        logs = backend.StepLogs({"loss": loss, "lr": 1e-3, "kl": mg.tensor([0.5], device=device)})
        assert list(logs) == ["loss", "lr", "kl"] and len(logs) == 3 and "?" in repr(logs)
        assert "loss" in logs and "nope" not in logs and set(logs.keys()) == {"loss", "lr", "kl"}
        assert n.reads == 0
        assert dict(logs) == {"loss": 6.0, "lr": 1e-3, "kl": 0.5}
        assert logs["loss"] == 6.0 and n.reads == 1
    assert backend.is_array(logs.raw()["loss"])      # the raw values keep no graph, only the array
    with pytest.raises(ValueError, match="'x' must be one number"):
        backend.StepLogs({"x": mg.tensor([1.0, 2.0])})


def test_read_logs_reads_several_steps_at_once(device):
    steps = [backend.StepLogs({"loss": mg.tensor(float(i), device=device)}) for i in range(5)]
    with backend.count_transfers() as n:
        backend.read_logs(steps + [{"loss": 1.0}])   # plain dicts pass through
        assert [s["loss"] for s in steps] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert n.reads == 1


# ----------------------------------------------------------------------------
# one training step and one sampling step
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vae", "dcgan", "ddpm", "cddpm", "autoencoder", "progan", "lapgan", "stylegan"])
def test_a_training_step_reads_nothing_until_its_logs_are_read(device, name):
    """0 reads and 0 uploads per step; looking at the logs costs exactly one read."""
    recipe, (x, y) = _recipe(name, device)
    recipe.train(True)
    recipe.train_step(x, y)                         # first step: optimizer state, tables made
    with backend.count_transfers() as n:
        logs = recipe.train_step(x, y)
    assert (n.reads, n.writes) == (0, 0), f"{name}: {n}"
    with backend.count_transfers() as n:
        row = {k: float(v) for k, v in logs.items()}
    assert n.reads == 1 and math.isfinite(row["loss"])


def test_a_ddim_step_makes_no_transfer(device):
    """Steps cost nothing: a 3-step DDIM run makes the same transfers as a 1-step one (the start and the end)."""
    recipe, _ = _recipe("cddpm", device)
    recipe.train(False)
    counts = []
    for steps in (1, 1, 3):      # the first run makes the coefficient tables on the device
        with backend.count_transfers() as n:
            recipe.diffusion.ddim_sample(recipe.net, (2, 1, 28, 28), mg.Generator(0, device), steps=steps,
                                         eta=0.5, y=mg.tensor([1, 2], device=device), guidance_scale=2.0)
        counts.append((n.reads, n.writes))
    assert counts[1] == counts[2] and counts[1][0] <= 1


def test_deferred_losses_still_stop_at_the_bad_step(device):
    class Run:
        checkpoint_path = "ckpt.npz"

    good = [(s, backend.StepLogs({"loss": mg.tensor(1.0, device=device)})) for s in (1, 2)]
    bad = (3, backend.StepLogs({"loss": mg.tensor(float("nan"), device=device), "lr": 0.1}))
    with backend.count_transfers() as n:
        _check_losses(Run(), good, 0)
        assert n.reads == 1
        with pytest.raises(NonFiniteLossError, match=r"step 3: loss is nan.*ckpt.npz \(step 0\)"):
            _check_losses(Run(), good + [bad, (4, {"loss": 1.0})], 0)
    assert n.reads == 2


def test_the_loop_reads_only_on_logging_steps(tmp_path, monkeypatch):
    from minigen import train as train_module
    from minigen.families.autoencoder import AutoencoderRecipe
    from minigen.train import train

    real_step = AutoencoderRecipe.train_step
    reads = []

    def counted(self, x, y):
        with backend.count_transfers() as n:
            out = real_step(self, x, y)
        reads.append(n.reads)
        return out

    looks = []
    real_check = train_module._check_losses

    def check(run, unread, last_good):
        looks.append([step for step, _ in unread])
        with backend.count_transfers() as n:
            real_check(run, unread, last_good)
        assert n.reads == 1                          # every unread step's numbers in one transfer
        return None

    monkeypatch.setattr(AutoencoderRecipe, "train_step", counted)
    monkeypatch.setattr(train_module, "_check_losses", check)
    options = {"arch": "mlp", "hidden": 16, "latent_dim": 3, "steps": 6, "batch_size": 16, "log_every": 3,
               "checkpoint_every": 6, "sample_every": 0, "n_samples": 4, "eval_samples": 0}
    train("autoencoder", options, out_dir=str(tmp_path / "run"), progress=False, verbose=False)
    assert reads == [0] * 6 and looks == [[1, 2, 3], [4, 5, 6]]
    monkeypatch.setattr(train_module, "_check_losses", real_check)

    calls = {"n": 0}

    def exploding(self, x, y):
        calls["n"] += 1
        out = real_step(self, x, y)
        return backend.StepLogs({"loss": mg.tensor(float("nan"))}) if calls["n"] == 2 else out

    monkeypatch.setattr(AutoencoderRecipe, "train_step", exploding)
    with pytest.raises(NonFiniteLossError, match="step 2: loss is nan.*no checkpoint was written yet"):
        train("autoencoder", options, out_dir=str(tmp_path / "nan"), progress=False, verbose=False)


# ----------------------------------------------------------------------------
# gradient clipping
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_is_one_device_reduction_and_no_read(device, norm_type):
    gen = mg.Generator(0, device)
    params = [mg.tensor(gen.normal(shape), requires_grad=True) for shape in [(3, 4), (5,), (2, 2, 2)]]
    for p in params:
        p.grad = mg.tensor(gen.normal(p.shape) * 3)
    flat = np.concatenate([p.grad.numpy().ravel().astype(np.float64) for p in params])
    expected = np.linalg.norm(flat, ord=norm_type)
    before = [p.grad.numpy().copy() for p in params]
    with backend.count_transfers() as n:
        total = optim.clip_grad_norm_(params, 1.0, norm_type=norm_type)
    assert n.reads == 0 and total.device == device and total.shape == ()
    np.testing.assert_allclose(total.item(), expected, rtol=1e-5)
    for p, b in zip(params, before):
        np.testing.assert_allclose(p.grad.numpy(), b / (expected + 1e-6), rtol=1e-5)
    # under the limit nothing changes, bit for bit
    before = [p.grad.numpy().copy() for p in params]
    optim.clip_grad_norm_(params, 1e9, norm_type=norm_type)
    assert all(np.array_equal(p.grad.numpy(), b) for p, b in zip(params, before))


def test_clip_grad_norm_leaves_non_finite_gradients_alone_or_raises():
    p = mg.tensor([1.0, 2.0], requires_grad=True)
    p.grad = mg.tensor([np.inf, 1.0])
    total = optim.clip_grad_norm_([p], 1.0)
    assert total.item() == np.inf and p.grad.numpy().tolist() == [np.inf, 1.0]
    with pytest.raises(RuntimeError, match="total norm of the gradients is inf"):
        optim.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


# ----------------------------------------------------------------------------
# randomness drawn on the device
# ----------------------------------------------------------------------------

def test_cpu_streams_are_numpys_pcg64_unchanged():
    g = mg.Generator(3)
    ref = np.random.Generator(np.random.PCG64(3))
    assert np.array_equal(g.normal((4, 2)), ref.standard_normal((4, 2), dtype=np.float32))
    assert np.array_equal(g.uniform((3,), dtype=np.float64), ref.random(3))
    assert np.array_equal(g.integers(0, 10, shape=(5,)), ref.integers(0, 10, size=(5,)))
    assert np.array_equal(g.host_integers(0, 10, shape=(5,)), ref.integers(0, 10, size=(5,)))
    assert np.array_equal(g.uniform((2,), device="cpu"), ref.random(2, dtype=np.float32))


class _FakeDeviceRNG:
    """cupy.random.RandomState's interface on NumPy, recording the seeds it is given."""

    def __init__(self):
        self.seeds = []

    def seed(self, s):
        self.seeds.append(s)
        self._rs = np.random.RandomState(s % 2**32)

    def standard_normal(self, size, dtype):
        return self._rs.standard_normal(size).astype(dtype)

    def random_sample(self, size, dtype):
        return self._rs.random_sample(size).astype(dtype)

    def randint(self, low, high, size, dtype):
        return self._rs.randint(low, high, size=size).astype(dtype)


def test_device_draws_are_seeded_from_the_host_stream_and_resume_exactly(monkeypatch):
    """A GPU generator draws on the device; each draw takes one seed from the host PCG64, the whole state."""
    monkeypatch.setattr(backend.Generator, "_make_device_rng", lambda self: _FakeDeviceRNG())
    g = mg.Generator(7, "gpu")                  # no CuPy needed until a draw, and the fake draws
    g.normal((2, 3))
    state = g.get_state()
    after = [g.normal((2, 3)), g.uniform((4,)), g.integers(0, 5, shape=(6,)), g.bernoulli(0.5, (3,))]
    ref = np.random.Generator(np.random.PCG64(7))
    assert g._device_rng.seeds == [int(ref.integers(0, 2**63 - 1)) for _ in range(5)]
    h = mg.Generator(0, "gpu")
    h.set_state(state)
    again = [h.normal((2, 3)), h.uniform((4,)), h.integers(0, 5, shape=(6,)), h.bernoulli(0.5, (3,))]
    assert all(np.array_equal(a, b) for a, b in zip(after, again))
    assert after[0].dtype == np.float32 and after[2].dtype == np.int64 and set(after[3]) <= {0.0, 1.0}
    # a host generator asked for device numbers draws them on the device from its own stream
    c = mg.Generator(7, "cpu")
    c.uniform((2,), device="gpu")
    assert c._device_rng.seeds == g._device_rng.seeds[:1]


# ----------------------------------------------------------------------------
# crashes off the main path
# ----------------------------------------------------------------------------

def test_other_cuda_devices_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"'cuda:1'.*one GPU.*CUDA_VISIBLE_DEVICES=1") as info:
        backend.check_device("cuda:1")
    assert "\n" not in str(info.value)
    assert backend.check_device("cuda:0") == backend.check_device("cuda") == "gpu"


def test_optimizer_and_ema_built_before_a_move_follow_the_parameters():
    """``model.to(...)`` after the optimizer took steps: moments and shadows follow (dtype here, device on a GPU)."""
    model = mg.nn.Linear(3, 2, generator=mg.Generator(0))
    opt = optim.Adam(model.parameters(), lr=0.1)
    ema = optim.ExponentialMovingAverage(model, decay=0.5)
    x = mg.tensor(np.ones((4, 3), np.float32))
    for _ in range(2):
        if _ == 1:
            model.to(np.float64)
            x = x.double()
        opt.zero_grad()
        (model(x) ** 2).mean().backward()
        opt.step()
        ema.update()
    for p in model.parameters():
        assert opt.state[p]["exp_avg"].dtype == np.float64 and opt.state[p]["exp_avg_sq"].dtype == np.float64
    assert all(s.dtype == np.float64 for s in ema.shadow.values())
    ema.copy_to()


def test_gmm_reports_a_singular_covariance_when_cholesky_returns_nan(monkeypatch):
    """cupy.linalg.cholesky returns NaN instead of raising: the GMM checks the factor."""
    X = mg.Generator(0).normal((50, 2), dtype=np.float64)
    model = gmm_module.GaussianMixture(2, max_iter=2, generator=0)
    monkeypatch.setattr(np.linalg, "cholesky", lambda a: np.full_like(a, np.nan))
    with pytest.raises(ValueError, match="not positive definite"):
        model.fit(X)


def test_interpolation_matrices_are_copied_to_the_device_once(device):
    x = mg.tensor(np.ones((1, 1, 5, 7), np.float32), device=device, requires_grad=True)
    mg.functional.interpolate(x, size=(9, 4), mode="bilinear").sum().backward()
    with backend.count_transfers() as n:
        y = mg.functional.interpolate(x, size=(9, 4), mode="bilinear")
        y.sum().backward()
    assert (n.reads, n.writes) == (0, 0)
    np.testing.assert_allclose(y.numpy(), 1.0, rtol=1e-6)


def test_gaussian_diffusion_tables_stay_on_the_device(device):
    """q_sample looks its coefficients up on t's device: no read, no upload after the first call."""
    d = GaussianDiffusion("linear", T=10)
    x0 = mg.tensor(np.zeros((3, 1, 4, 4), np.float32), device=device)
    t = mg.tensor(np.array([0, 4, 9]), device=device)
    noise = mg.tensor(np.ones((3, 1, 4, 4), np.float32), device=device)
    d.q_sample(x0, t, noise)
    with backend.count_transfers() as n:
        d.q_sample(x0, t, noise)
    assert (n.reads, n.writes) == (0, 0)

"""nn: Module registration, modes, devices, state_dict / save / load, containers, layers, init."""
import collections
import copy
import math
import os

import numpy as np
import pytest

import minigen as mg
from minigen import nn
from minigen.nn import init
from minigen.testing import gradcheck


def arr(t):
    return t.numpy()


class Block(nn.Module):
    """A module with a bit of everything, registered in a known order."""

    def __init__(self, generator=None):
        super().__init__()
        self.scale = nn.Parameter(mg.ones(3))
        self.fc = nn.Linear(4, 3, generator=generator)
        self.register_buffer("steps", mg.zeros(1))
        self.register_buffer("cache", mg.zeros(2), persistent=False)
        self.bn = nn.BatchNorm1d(3)
        self.offset = nn.Parameter(mg.zeros(3))
        self.note = "not registered"

    def forward(self, x):
        return self.bn(self.fc(x)) * self.scale + self.offset


# ----------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------

def test_registration_order_and_dotted_names():
    m = Block()
    assert [n for n, _ in m.named_parameters()] == ["scale", "offset", "fc.weight", "fc.bias", "bn.weight",
                                                   "bn.bias"]
    assert [n for n, _ in m.named_buffers()] == ["steps", "cache", "bn.running_mean", "bn.running_var",
                                                "bn.num_batches_tracked"]
    assert [n for n, _ in m.named_children()] == ["fc", "bn"]
    assert [n for n, _ in m.named_modules()] == ["", "fc", "bn"]
    assert list(m.parameters())[2] is m.fc.weight
    assert m.note == "not registered" and "note" not in m._parameters
    # state_dict: own parameters, own persistent buffers, then children; the non-persistent cache is left out
    assert list(m.state_dict()) == ["scale", "offset", "steps", "fc.weight", "fc.bias", "bn.weight", "bn.bias",
                                    "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]


def test_reassignment_and_deletion_keep_one_entry():
    m = Block()
    m.fc = nn.Linear(4, 3)           # replaces the child, keeps its slot
    assert [n for n, _ in m.named_children()] == ["fc", "bn"]
    m.offset = None                  # a parameter slot can be emptied
    assert "offset" not in dict(m.named_parameters())
    del m.scale
    assert "scale" not in dict(m.named_parameters())
    with pytest.raises(AttributeError, match="scale"):
        m.scale


def test_assigning_a_plain_tensor_to_a_parameter_is_refused():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="parameter 'weight'"):
        m.weight = mg.zeros(2, 2)
    with pytest.raises(TypeError, match="buffer"):
        m.register_buffer("b", np.zeros(2))


def test_forgetting_super_init_gives_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(mg.zeros(2))

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_shared_parameters_are_listed_once():
    shared = nn.Linear(2, 2)
    m = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(m.parameters())) == 2
    assert [n for n, _ in m.named_modules()] == ["", "0", "1"]


def test_parameter_is_a_leaf_tensor_requiring_grad():
    p = nn.Parameter(mg.randn(3))
    assert isinstance(p, mg.Tensor) and p.requires_grad and p.is_leaf
    assert not hasattr(p, "__dict__")
    y = (p * 2).sum()
    assert type(y) is mg.Tensor
    y.backward()
    np.testing.assert_allclose(arr(p.grad), 2.0)
    assert repr(p).startswith("Parameter containing:")


# ----------------------------------------------------------------------------
# modes, grads, devices, copies
# ----------------------------------------------------------------------------

def test_train_and_eval_are_plain_setters():
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)))
    assert all(x.training for x in m.modules())
    assert m.eval() is m
    assert not any(x.training for x in m.modules())
    assert m.train() is m and all(x.training for x in m.modules())
    assert m.train(False) is m and not any(x.training for x in m.modules())
    assert not hasattr(m, "__enter__") and set(vars(m)) == set(vars(nn.Sequential()))   # no hidden state
    with pytest.raises(TypeError):
        m.train("no")


def test_eval_mode_restores_every_submodule_mode():
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)))
    m[1].eval()  # a partly frozen model
    before = [x.training for x in m.modules()]
    assert before == [True, True, False, False, False]
    with nn.eval_mode(m) as inside:
        assert inside is m and not any(x.training for x in m.modules())
    assert [x.training for x in m.modules()] == before
    # also when the block raises; several modules at once
    other = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="inside"):
        with nn.eval_mode(m, other):
            assert not other.training and not m[0].training
            raise RuntimeError("inside")
    assert [x.training for x in m.modules()] == before and other.training
    # dropout really is off inside: two calls agree
    d = nn.Dropout(0.5)
    x = mg.ones(8, 8)
    with nn.eval_mode(d):
        np.testing.assert_array_equal(d(x).numpy(), x.numpy())
    assert d.training
    with pytest.raises(TypeError, match="eval_mode: expected nn.Module"):
        with nn.eval_mode("model"):
            pass


def test_zero_grad_requires_grad_and_apply():
    m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    m(mg.randn(4, 3)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all(np.all(arr(p.grad) == 0) for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    m.requires_grad_(False)
    assert not m(mg.randn(4, 3)).requires_grad
    seen = []
    m.apply(lambda mod: seen.append(type(mod).__name__))
    assert seen == ["Linear", "Linear", "Sequential"]


def test_to_dtype_keeps_parameter_identity(device):
    m = Block()
    params, bufs = list(m.parameters()), list(m.buffers())
    m(mg.randn(5, 4)).sum().backward()
    assert m.to(device=device, dtype=np.float64) is m
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]
    assert [id(b) for b in m.buffers()] == [id(b) for b in bufs]
    assert all(p.dtype == np.float64 and p.device == device for p in m.parameters())
    assert all(p.grad.dtype == np.float64 and p.grad.device == device for p in m.parameters())
    assert m.bn.num_batches_tracked.dtype == np.int64          # integers are not cast
    assert m.bn.running_mean.dtype == np.float64
    y = m(mg.randn(5, 4, dtype=np.float64, device=device))
    assert y.dtype == np.float64 and y.device == device
    m.to(np.float32)                                            # dtype as the first argument
    assert m.fc.weight.dtype == np.float32


def test_deepcopy_gives_an_independent_module():
    m = Block()
    c = copy.deepcopy(m)
    c.fc.weight.data += 1
    assert not np.allclose(arr(c.fc.weight), arr(m.fc.weight))
    assert isinstance(c.fc.weight, nn.Parameter)


def test_repr_reads_like_pytorch():
    m = nn.Sequential(nn.Linear(4, 3, bias=False), nn.LeakyReLU(0.2),
                      nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)))
    assert repr(m) == (
        "Sequential(\n"
        "  (0): Linear(in_features=4, out_features=3, bias=False)\n"
        "  (1): LeakyReLU(negative_slope=0.2)\n"
        "  (2): Sequential(\n"
        "    (0): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
        "  )\n"
        ")")


# ----------------------------------------------------------------------------
# containers
# ----------------------------------------------------------------------------

def test_sequential_indexing_len_iteration():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    m = nn.Sequential(*layers)
    assert len(m) == 3 and list(m) == layers
    assert m[0] is layers[0] and m[-1] is layers[2]
    sub = m[1:]
    assert isinstance(sub, nn.Sequential) and list(sub) == layers[1:]
    x = mg.randn(4, 2)
    np.testing.assert_array_equal(arr(m(x)), arr(layers[2](layers[1](layers[0](x)))))
    with pytest.raises(IndexError, match="out of range"):
        m[3]
    named = nn.Sequential(collections.OrderedDict([("enc", nn.Linear(2, 2)), ("act", nn.Tanh())]))
    assert list(named.state_dict()) == ["enc.weight", "enc.bias"]


def test_modulelist_and_moduledict_register_their_children():
    ml = nn.ModuleList([nn.Linear(2, 2)])
    ml.append(nn.Linear(2, 3))
    ml.insert(0, nn.Identity())
    assert len(ml) == 3 and isinstance(ml[0], nn.Identity)
    assert list(ml.state_dict()) == ["1.weight", "1.bias", "2.weight", "2.bias"]
    md = nn.ModuleDict({"a": nn.Linear(1, 1)})
    md["b"] = nn.Linear(1, 2)
    assert "b" in md and list(md) == ["a", "b"] and len(md) == 2
    outer = nn.Module()
    outer.heads = md
    assert [n for n, _ in outer.named_parameters()] == ["heads.a.weight", "heads.a.bias",
                                                       "heads.b.weight", "heads.b.bias"]


# ----------------------------------------------------------------------------
# state_dict, save, load
# ----------------------------------------------------------------------------

def _trained_block(seed):
    m = Block(generator=mg.Generator(seed))
    m(mg.randn(8, 4, generator=mg.Generator(seed + 100)))  # updates BatchNorm's running stats
    m.steps.data += 3
    return m


def test_state_dict_is_a_snapshot():
    m = _trained_block(0)
    sd = m.state_dict()
    before = arr(sd["fc.weight"]).copy()
    m.fc.weight.data += 1
    np.testing.assert_array_equal(arr(sd["fc.weight"]), before)
    assert sd["bn.num_batches_tracked"].shape == () and int(sd["bn.num_batches_tracked"].item()) == 1


def test_save_then_load_into_fresh_module_gives_identical_outputs(tmp_path, device):
    m = _trained_block(0).to(device).eval()
    path = tmp_path / "weights.npz"
    m.save(path)
    fresh = Block(generator=mg.Generator(1)).to(device).eval()
    x = mg.randn(5, 4, device=device)
    assert not np.allclose(arr(fresh(x)), arr(m(x)))
    result = fresh.load(path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(arr(fresh(x)), arr(m(x)))
    np.testing.assert_array_equal(arr(fresh.bn.running_var), arr(m.bn.running_var))
    assert int(fresh.bn.num_batches_tracked.item()) == 1
    with np.load(path, allow_pickle=False) as npz:   # a plain .npz with the state_dict's keys
        assert list(npz.files) == list(m.state_dict())


def test_load_state_dict_accepts_numpy_arrays_and_copies():
    m = nn.Linear(3, 2)
    state = {"weight": np.arange(6.0).reshape(2, 3), "bias": np.array([1.0, 2.0])}
    m.load_state_dict(state)
    assert m.weight.dtype == np.float32
    np.testing.assert_array_equal(arr(m.weight), state["weight"])
    state["weight"][0, 0] = 99.0
    assert arr(m.weight)[0, 0] == 0.0


def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    m = _trained_block(0)
    m.save(path)
    good, saved_weight = path.read_bytes(), arr(m.fc.weight).copy()

    def broken_savez(file, **arrays):
        file.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    m.fc.weight.data += 1
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    assert path.read_bytes() == good                     # the old file is intact
    assert os.listdir(tmp_path) == ["model.npz"]          # and no temporary file is left behind
    monkeypatch.undo()
    fresh = Block()
    fresh.load(path)
    np.testing.assert_array_equal(arr(fresh.fc.weight), saved_weight)


def test_load_errors_name_the_file_and_the_keys(tmp_path):
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        m.load(tmp_path / "nothing.npz")
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="corrupt.npz"):
        m.load(bad)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single.npy.*single array"):
        m.load(tmp_path / "single.npy")
    np.savez(tmp_path / "objects.npz", **{"0.weight": np.array([{"code": 1}], dtype=object)})
    with pytest.raises(ValueError, match="objects.npz.*pickle"):      # never unpickled
        m.load(tmp_path / "objects.npz")

    state = m.state_dict()
    del state["1.bias"]
    state["2.weight"] = np.zeros((1, 3))
    with pytest.raises(RuntimeError, match=r"missing keys: '1.bias'") as err:
        m.load_state_dict(state)
    assert "unexpected keys: '2.weight'" in str(err.value)
    result = m.load_state_dict(state, strict=False)
    assert result.missing_keys == ["1.bias"] and result.unexpected_keys == ["2.weight"]

    before = arr(m[0].weight).copy()
    wrong = m.state_dict()
    wrong["0.weight"] = np.ones((3, 2))
    wrong["0.bias"] = np.ones((4,))
    with pytest.raises(RuntimeError, match=r"shape mismatch for '0.bias'.*\(4,\).*\(3,\)"):
        m.load_state_dict(wrong)
    np.testing.assert_array_equal(arr(m[0].weight), before)  # nothing was copied

    m2 = nn.Sequential(nn.Linear(2, 4))
    m2.save(tmp_path / "other.npz")
    with pytest.raises(RuntimeError, match="other.npz"):
        m.load(tmp_path / "other.npz")


# ----------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------

def test_linear_matches_its_formula_and_init_bound():
    m = nn.Linear(50, 40, generator=mg.Generator(0))
    bound = 1 / math.sqrt(50)
    w, b = arr(m.weight), arr(m.bias)
    assert w.shape == (40, 50) and b.shape == (40,)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(b).max() <= bound
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.05)   # U(-b, b) has std b/sqrt(3)
    x = mg.randn(2, 7, 50)
    np.testing.assert_allclose(arr(m(x)), arr(x) @ w.T + b, rtol=1e-5, atol=1e-6)
    assert nn.Linear(3, 2, bias=False).bias is None


def test_generator_makes_layers_reproducible():
    a = nn.Linear(5, 4, generator=mg.Generator(7))
    b = nn.Linear(5, 4, generator=mg.Generator(7))
    c = nn.Linear(5, 4, generator=mg.Generator(8))
    np.testing.assert_array_equal(arr(a.weight), arr(b.weight))
    assert not np.allclose(arr(a.weight), arr(c.weight))
    mg.manual_seed(3)
    d = nn.Linear(5, 4)
    mg.manual_seed(3)
    e = nn.Linear(5, 4)
    np.testing.assert_array_equal(arr(d.bias), arr(e.bias))


def test_dtype_and_device_arguments(device):
    m = nn.Conv2d(2, 3, 3, device=device, dtype=np.float64)
    assert m.weight.device == device and m.weight.dtype == np.float64


def test_layer_output_shapes(device):
    x = mg.randn(2, 4, 9, 9, device=device)
    assert nn.Flatten()(x).shape == (2, 324)
    assert nn.Unflatten(2, (9, 9))(nn.Flatten(2)(x)).shape == (2, 4, 9, 9)
    assert nn.Linear(9, 5, device=device)(x).shape == (2, 4, 9, 5)
    assert nn.Embedding(10, 6, device=device)(mg.tensor(np.array([[1, 2, 3], [0, 9, 9]]), device=device)).shape \
        == (2, 3, 6)
    for layer in (nn.BatchNorm2d(4, device=device), nn.GroupNorm(2, 4, device=device),
                  nn.LayerNorm((9, 9), device=device), nn.ReLU(), nn.LeakyReLU(0.2), nn.SiLU(), nn.GELU(),
                  nn.GELU("tanh"), nn.Tanh(), nn.Sigmoid(), nn.Softplus(), nn.Identity(7), nn.Dropout(0.3)):
        y = layer(x)
        assert y.shape == x.shape and y.device == device, layer
    assert nn.BatchNorm1d(4, device=device)(mg.randn(3, 4, 5, device=device)).shape == (3, 4, 5)
    attn = nn.MultiheadSelfAttention(8, 2, device=device)
    assert attn(mg.randn(3, 5, 8, device=device)).shape == (3, 5, 8)
    assert nn.MultiheadSelfAttention(8, 2, batch_first=False, device=device)(
        mg.randn(5, 3, 8, device=device)).shape == (5, 3, 8)


def test_conv_layer_shapes(device):
    x = mg.randn(2, 4, 9, 9, device=device)
    assert nn.Conv2d(4, 6, 3, device=device)(x).shape == (2, 6, 7, 7)
    assert nn.Conv2d(4, 6, 4, stride=2, padding=1, device=device)(x).shape == (2, 6, 4, 4)
    assert nn.Conv2d(4, 6, (3, 5), padding="same", device=device)(x).shape == (2, 6, 9, 9)
    assert nn.Conv2d(4, 6, 4, padding="same", device=device)(x).shape == (2, 6, 9, 9)      # even kernel
    assert nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", device=device)(x).shape == (2, 6, 9, 9)
    assert nn.Conv2d(4, 6, 3, groups=2, bias=False, device=device)(x).shape == (2, 6, 7, 7)
    assert nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, device=device)(x).shape == (2, 6, 18, 18)
    assert nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, device=device)(x).shape \
        == (2, 2, 18, 18)
    assert nn.Upsample(scale_factor=2)(x).shape == (2, 4, 18, 18)
    with pytest.raises(ValueError, match="divisible"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="stride 1"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")


def test_conv_same_padding_matches_explicit_padding():
    x = mg.randn(1, 2, 6, 6)
    same = nn.Conv2d(2, 3, 3, padding="same")
    explicit = nn.Conv2d(2, 3, 3, padding=1)
    explicit.load_state_dict(same.state_dict())
    np.testing.assert_allclose(arr(same(x)), arr(explicit(x)), rtol=1e-6)


def test_weight_shapes_follow_pytorch_layouts():
    assert nn.Conv2d(3, 8, (2, 5), groups=1).weight.shape == (8, 3, 2, 5)
    assert nn.ConvTranspose2d(6, 4, 3, groups=2).weight.shape == (6, 2, 3, 3)
    assert nn.MultiheadSelfAttention(8, 2).qkv.weight.shape == (24, 8)
    assert list(nn.MultiheadSelfAttention(8, 2).state_dict()) == ["qkv.weight", "qkv.bias", "proj.weight",
                                                                  "proj.bias"]


def test_batchnorm_running_statistics(device):
    bn = nn.BatchNorm2d(3, momentum=0.1, device=device, dtype=np.float64)
    bn.weight.data[...] = 2.0
    bn.bias.data[...] = 0.5
    x = mg.randn(4, 3, 5, 5, dtype=np.float64, device=device)
    xs = arr(x)
    y = bn(x)
    mean, var = xs.mean(axis=(0, 2, 3)), xs.var(axis=(0, 2, 3))
    np.testing.assert_allclose(arr(y), 2 * (xs - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) + 0.5,
                               rtol=1e-10)
    n = 4 * 5 * 5
    np.testing.assert_allclose(arr(bn.running_mean), 0.1 * mean, rtol=1e-10)
    np.testing.assert_allclose(arr(bn.running_var), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-10)  # unbiased
    assert int(bn.num_batches_tracked.item()) == 1
    bn.eval()
    rm, rv = arr(bn.running_mean), arr(bn.running_var)
    x2 = mg.randn(2, 3, 5, 5, dtype=np.float64, device=device)
    np.testing.assert_allclose(arr(bn(x2)), 2 * (arr(x2) - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5)
                               + 0.5, rtol=1e-10)
    np.testing.assert_array_equal(arr(bn.running_mean), rm)          # eval does not update
    assert int(bn.num_batches_tracked.item()) == 1


def test_batchnorm_cumulative_average_and_no_tracking():
    bn = nn.BatchNorm1d(2, momentum=None, dtype=np.float64)
    batches = [mg.randn(6, 2, dtype=np.float64) for _ in range(3)]
    for b in batches:
        bn(b)
    np.testing.assert_allclose(arr(bn.running_mean), np.mean([arr(b).mean(0) for b in batches], axis=0),
                               rtol=1e-10)
    free = nn.BatchNorm1d(2, track_running_stats=False, affine=False, dtype=np.float64).eval()
    assert list(free.state_dict()) == []
    y = arr(free(batches[0]))                                       # batch statistics even in eval
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(2\).*\(6, 3\)"):
        bn(mg.randn(6, 3))


def test_dropout_modes_and_generator():
    x = mg.ones(1000)
    d = nn.Dropout(0.25, generator=mg.Generator(0))
    y = arr(d(x))
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert 0.15 < np.mean(y == 0) < 0.35
    y2 = arr(nn.Dropout(0.25, generator=mg.Generator(0))(x))
    np.testing.assert_array_equal(y, y2)
    d.eval()
    np.testing.assert_array_equal(arr(d(x)), arr(x))


def test_multihead_attention_is_the_formula(float64):
    B, T, E, H = 2, 4, 6, 3
    attn = nn.MultiheadSelfAttention(E, H, generator=mg.Generator(0))
    attn.qkv.bias.data[...] = mg.randn(3 * E).data
    x = mg.randn(B, T, E)
    Wq, bq = arr(attn.qkv.weight), arr(attn.qkv.bias)
    qkv = arr(x) @ Wq.T + bq
    q, k, v = [a.reshape(B, T, H, E // H).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1)]
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(E // H)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    heads = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, E)
    expected = heads @ arr(attn.proj.weight).T + arr(attn.proj.bias)
    np.testing.assert_allclose(arr(attn(x)), expected, rtol=1e-10, atol=1e-12)
    assert gradcheck(lambda t: attn(t), [arr(x)])
    causal = mg.tensor(np.tril(np.ones((T, T), dtype=bool)))          # True = may attend
    np.testing.assert_allclose(arr(attn(x, attn_mask=causal)), arr(attn(x, is_causal=True)), rtol=1e-12)
    assert not np.allclose(arr(attn(x, is_causal=True)), arr(attn(x)))


# ----------------------------------------------------------------------------
# init
# ----------------------------------------------------------------------------

def test_calculate_gain_values():
    assert init.calculate_gain("linear") == 1.0 and init.calculate_gain("conv2d") == 1.0
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    with pytest.raises(ValueError, match="unknown nonlinearity"):
        init.calculate_gain("swish")


def test_init_distributions_have_their_scales():
    g = mg.Generator(0)
    w = mg.zeros(200, 100, 3, 3)                         # fan_in 900, fan_out 1800
    init.kaiming_normal_(w, nonlinearity="relu", generator=g)
    np.testing.assert_allclose(arr(w).std(), math.sqrt(2 / 900), rtol=0.02)
    init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu", generator=g)
    bound = math.sqrt(3) * math.sqrt(2 / 1800)
    assert np.abs(arr(w)).max() <= bound and np.abs(arr(w)).max() > 0.99 * bound
    init.xavier_uniform_(w, gain=2.0, generator=g)
    assert np.abs(arr(w)).max() <= 2 * math.sqrt(6 / 2700)
    init.xavier_normal_(w, generator=g)
    np.testing.assert_allclose(arr(w).std(), math.sqrt(2 / 2700), rtol=0.02)
    init.normal_(w, 3.0, 0.5, generator=g)
    np.testing.assert_allclose([arr(w).mean(), arr(w).std()], [3.0, 0.5], rtol=0.02)
    init.uniform_(w, -1, 2, generator=g)
    assert arr(w).min() >= -1 and arr(w).max() < 2
    assert np.all(arr(init.constant_(w, 0.25)) == 0.25)
    assert np.all(arr(init.zeros_(w)) == 0) and np.all(arr(init.ones_(w)) == 1)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.xavier_uniform_(mg.zeros(5))
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_uniform_(w, mode="fan_avg")

"""Bad and extreme input to the library API (issue 17, "API" and "Non-finite values").

Claims checked:
- ``F.logsumexp``'s gradient is the softmax of the input even where the input is so
  large that max + log n rounds back to max (e.g. [1e30, 1e30] -> [0.5, 0.5]);
- ``Normal.log_prob`` at the mean and the KL between equal Normals stay finite (the
  KL exactly 0) down to the smallest standard deviations a float32 logvar reaches;
- integer and bool tensors given to float ops are refused with one ValueError line
  naming the op and the dtype (no silent float64);
- a failed ``Module.load_state_dict`` leaves every tensor of the module unchanged;
- layers with zero or negative sizes, ``F.linear`` with a 1-D weight,
  ``load_state_dict({})`` on optimizers/schedulers/EMA and batch mismatches in
  ``F.matmul`` each give one ValueError line naming the layer/op and the culprit.
"""
import numpy as np
import pytest
from scipy import special as sps

import minigen as mg
import minigen.functional as F
from minigen import nn, optim
from minigen.distributions import Normal, gaussian_kl, kl_divergence
from helpers import tensor


def one_line(excinfo):
    """The error message, asserted to be a single line."""
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


# ----------------------------------------------------------------------------
# non-finite values: logsumexp's gradient, Normal at tiny std
# ----------------------------------------------------------------------------

LSE_EXTREME = {  # name: (values, dtype, dim)
    "two_equal_1e30": ([1e30, 1e30], np.float64, None),
    "four_equal_1e30_f32": ([1e30, 1e30, 1e30, 1e30], np.float32, None),
    "near_float32_max": ([3e38, 3e38], np.float32, None),
    "near_float64_max": ([1e308, 1e308, 1e308], np.float64, None),
    "large_negative": ([-1e30, -1e30], np.float64, None),
    "rows_mixed_scale": ([[1e20, 1e20, 1e20], [1.0, 2.0, 3.0]], np.float64, 1),
    "with_minus_inf": ([1e30, -np.inf, 1e30], np.float64, None),
}


@pytest.mark.parametrize("name", sorted(LSE_EXTREME))
def test_logsumexp_gradient_is_the_softmax_for_huge_inputs(name):
    values, dtype, dim = LSE_EXTREME[name]
    x = tensor(values, dtype=dtype, requires_grad=True)
    (g,) = mg.grad(F.logsumexp(x, dim).sum(), [x])
    axis = None if dim is None else dim
    expected = sps.softmax(np.asarray(values, dtype=np.float64), axis=axis)
    assert g.numpy().dtype == dtype
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-6, atol=0)


def test_logsumexp_gradient_of_all_minus_inf_row_is_zero():
    x = tensor([[-np.inf, -np.inf], [0.0, 0.0]], requires_grad=True)
    (g,) = mg.grad(F.logsumexp(x, 1).sum(), [x])
    np.testing.assert_array_equal(g.numpy(), [[0.0, 0.0], [0.5, 0.5]])


@pytest.mark.parametrize("x0", [[0.3, -1.2, 0.8], [1e6 + 0.3, 1e6 - 1.2, 1e6 + 0.8], [1e30, 1e30, 1e30]],
                         ids=["ordinary", "shift_1e6", "equal_1e30"])
def test_logsumexp_double_backward_matches_the_softmax_jacobian(x0):
    # d/dx <u, softmax(x)> = (diag(s) - s s^T) u, s = softmax(x), for any shift of x
    x0 = np.array(x0)
    u = np.array([1.0, -2.0, 0.5])
    s = sps.softmax(x0)
    expected = (np.diag(s) - np.outer(s, s)) @ u
    x = tensor(x0, requires_grad=True)
    (g,) = mg.grad(F.logsumexp(x), [x], create_graph=True)
    (gg,) = mg.grad((g * tensor(u)).sum(), [x])
    np.testing.assert_allclose(gg.numpy(), expected, rtol=1e-6, atol=1e-12)


TINY_STD_LOGVARS = {  # logvar = 2 log std
    "std_1e-20_f32": (2 * np.log(1e-20), np.float32),
    "std_1e-30_f32": (2 * np.log(1e-30), np.float32),
    "std_1e-37_f32": (2 * np.log(1e-37), np.float32),
    "std_1e-200_f64": (2 * np.log(1e-200), np.float64),
    "std_1e-300_f64": (2 * np.log(1e-300), np.float64),
}


@pytest.mark.parametrize("name", sorted(TINY_STD_LOGVARS))
def test_normal_log_prob_at_the_mean_is_finite_for_tiny_std(name):
    logvar, dtype = TINY_STD_LOGVARS[name]
    mean = tensor([0.0, 1.5, -3.0], dtype=dtype)
    lv = tensor(np.full(3, logvar), dtype=dtype)
    lp = Normal(mean, lv).log_prob(mean).numpy()
    expected = -0.5 * (np.log(2 * np.pi) + lv.numpy().astype(np.float64))  # the peak of the density
    assert np.all(np.isfinite(lp)), lp
    np.testing.assert_allclose(lp, expected, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY_STD_LOGVARS))
def test_kl_of_equal_normals_is_zero_for_tiny_std(name):
    logvar, dtype = TINY_STD_LOGVARS[name]
    mean = tensor([0.0, 1.5, -3.0], dtype=dtype)
    lv = tensor(np.full(3, logvar), dtype=dtype)
    p, q = Normal(mean, lv), Normal(mean, lv)
    np.testing.assert_array_equal(kl_divergence(p, q).numpy(), np.zeros(3, dtype))
    np.testing.assert_array_equal(gaussian_kl(mean.numpy(), lv.numpy(), mean.numpy(), lv.numpy()),
                                  np.zeros(3, dtype))


def test_kl_mean_term_is_still_right_for_small_std():
    # (d e^(-lv/2))^2 must equal d^2 / sigma^2 where that is representable
    m1, m2, lv = np.array([1e-9]), np.array([0.0]), np.array([2 * np.log(1e-10)])
    np.testing.assert_allclose(gaussian_kl(m1, lv, m2, lv), 0.5 * (1e-9 / 1e-10) ** 2, rtol=1e-9)


# ----------------------------------------------------------------------------
# integer and bool tensors into float ops
# ----------------------------------------------------------------------------

def _img(dtype):
    return mg.tensor(np.ones((1, 1, 4, 4), dtype=dtype))


def _flat(dtype):
    return mg.tensor(np.ones((2, 3), dtype=dtype))


W_CONV = mg.tensor(np.ones((2, 1, 3, 3)))
W_CONVT = mg.tensor(np.ones((1, 2, 3, 3)))
W_LIN = mg.tensor(np.ones((4, 3)))

NON_FLOAT_CASES = {  # name: (op name in the message, dtype named, call)
    "conv2d_uint8": ("conv2d", "uint8", lambda: F.conv2d(_img(np.uint8), W_CONV)),
    "conv2d_int64_weight": ("conv2d", "int64", lambda: F.conv2d(_img(np.float64), W_CONV.astype(np.int64))),
    "conv_transpose2d_int32": ("conv_transpose2d", "int32", lambda: F.conv_transpose2d(_img(np.int32), W_CONVT)),
    "linear_int64": ("linear", "int64", lambda: F.linear(_flat(np.int64), W_LIN)),
    "linear_bool": ("linear", "bool", lambda: F.linear(_flat(np.bool_), W_LIN)),
    "nn_conv2d_uint8": ("conv2d", "uint8", lambda: nn.Conv2d(1, 2, 3)(_img(np.uint8))),
    "nn_conv2d_reflect_uint8": ("conv2d", "uint8",
                                lambda: nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")(_img(np.uint8))),
    "nn_linear_int32": ("linear", "int32", lambda: nn.Linear(3, 4)(_flat(np.int32))),
    "nn_conv_transpose2d_uint8": ("conv_transpose2d", "uint8", lambda: nn.ConvTranspose2d(1, 2, 3)(_img(np.uint8))),
    "matmul_int_by_float_weight": ("matmul", "int64", lambda: F.matmul(_flat(np.int64), W_LIN.T)),
    "matmul_operator_bool": ("matmul", "bool", lambda: _flat(np.bool_) @ W_LIN.T),
}


@pytest.mark.parametrize("name", sorted(NON_FLOAT_CASES))
def test_non_float_inputs_to_float_ops_are_refused(name):
    op, dtype, call = NON_FLOAT_CASES[name]
    with pytest.raises(ValueError) as excinfo:
        call()
    text = one_line(excinfo)
    assert text.startswith(f"{op}:") and dtype in text, text


def test_float_inputs_still_work_and_keep_their_dtype():
    x = mg.tensor(np.ones((1, 1, 4, 4), dtype=np.float32))
    assert nn.Conv2d(1, 2, 3, dtype=np.float32)(x).dtype == np.float32
    assert nn.Linear(4, 2, dtype=np.float32)(x).dtype == np.float32
    a = np.arange(6).reshape(2, 3)  # integer @ integer involves no float op: allowed, stays integer
    np.testing.assert_array_equal(F.matmul(mg.tensor(a), mg.tensor(a.T)).numpy(), a @ a.T)


# ----------------------------------------------------------------------------
# Module.load_state_dict is all or nothing
# ----------------------------------------------------------------------------

BAD_VALUES = {
    "strings": lambda shape: np.full(shape, "x"),
    "objects": lambda shape: np.full(shape, None, dtype=object),
    "wrong_shape": lambda shape: np.ones(shape + (1,)),
}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_failed_load_state_dict_leaves_the_module_as_it_was(name):
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    keys = list(before)
    assert len(keys) == 4
    new = {k: np.full(v.shape, 7.0) for k, v in before.items()}
    new[keys[-1]] = BAD_VALUES[name](before[keys[-1]].shape)  # the last entry is the bad one
    with pytest.raises(RuntimeError, match=repr(keys[-1])):
        model.load_state_dict(new)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)


def test_good_load_state_dict_still_copies_everything():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    new = {k: np.full(v.shape, 7, dtype=np.int64) for k, v in model.state_dict().items()}
    model.load_state_dict(new)
    for k, v in model.state_dict().items():
        assert v.dtype == dtypes[k] and np.all(v.numpy() == 7.0), k


# ----------------------------------------------------------------------------
# impossible layer sizes, shapes and states
# ----------------------------------------------------------------------------

BAD_LAYERS = {  # name: (layer, argument, call)
    "linear_in_0": ("Linear", "in_features", lambda: nn.Linear(0, 3)),
    "linear_out_neg": ("Linear", "out_features", lambda: nn.Linear(3, -1)),
    "conv_kernel_0": ("Conv2d", "kernel_size", lambda: nn.Conv2d(1, 2, 0)),
    "conv_kernel_pair_0": ("Conv2d", "kernel_size", lambda: nn.Conv2d(1, 2, (3, 0))),
    "conv_in_0": ("Conv2d", "in_channels", lambda: nn.Conv2d(0, 2, 3)),
    "conv_groups_0": ("Conv2d", "groups", lambda: nn.Conv2d(2, 2, 3, groups=0)),
    "conv_stride_0": ("Conv2d", "stride", lambda: nn.Conv2d(1, 2, 3, stride=0)),
    "conv_padding_neg": ("Conv2d", "padding", lambda: nn.Conv2d(1, 2, 3, padding=-1)),
    "convt_out_0": ("ConvTranspose2d", "out_channels", lambda: nn.ConvTranspose2d(1, 0, 3)),
    "convt_kernel_0": ("ConvTranspose2d", "kernel_size", lambda: nn.ConvTranspose2d(1, 2, 0)),
    "convt_groups_0": ("ConvTranspose2d", "groups", lambda: nn.ConvTranspose2d(2, 2, 3, groups=0)),
    "embedding_0": ("Embedding", "num_embeddings", lambda: nn.Embedding(0, 3)),
    "batchnorm_0": ("BatchNorm2d", "num_features", lambda: nn.BatchNorm2d(0)),
    "groupnorm_groups_0": ("GroupNorm", "num_groups", lambda: nn.GroupNorm(0, 4)),
    "equalized_linear_0": ("EqualizedLinear", "in_features", lambda: nn.EqualizedLinear(0, 3)),
    "equalized_conv_kernel_0": ("EqualizedConv2d", "kernel_size", lambda: nn.EqualizedConv2d(1, 2, 0)),
}


@pytest.mark.parametrize("name", sorted(BAD_LAYERS))
def test_impossible_layer_sizes_are_refused(name):
    layer, argument, call = BAD_LAYERS[name]
    with pytest.raises(ValueError) as excinfo:
        call()
    text = one_line(excinfo)
    assert text.startswith(f"{layer}:") and argument in text, text


BAD_SHAPES = {  # name: (op, words the message must hold, call)
    "linear_1d_weight": ("linear", ["(3,)", "(2, 3)"],
                         lambda: F.linear(mg.tensor(np.ones((2, 3))), mg.tensor(np.ones(3)))),
    "linear_3d_weight": ("linear", ["(1, 4, 3)"],
                         lambda: F.linear(mg.tensor(np.ones((2, 3))), mg.tensor(np.ones((1, 4, 3))))),
    "linear_0d_input": ("linear", ["()"], lambda: F.linear(mg.tensor(np.float64(1.0)), mg.tensor(np.ones((4, 3))))),
    "linear_bias_2d": ("linear", ["(1, 4)", "(4,)"],
                       lambda: F.linear(mg.tensor(np.ones((2, 3))), mg.tensor(np.ones((4, 3))), mg.tensor(np.ones((1, 4))))),
    "linear_bias_size": ("linear", ["(5,)", "(4,)"],
                         lambda: F.linear(mg.tensor(np.ones((2, 3))), mg.tensor(np.ones((4, 3))), mg.tensor(np.ones(5)))),
    "matmul_batch_mismatch": ("matmul", ["(2, 3, 4)", "(3, 4, 5)"],
                              lambda: F.matmul(mg.tensor(np.ones((2, 3, 4))), mg.tensor(np.ones((3, 4, 5))))),
    "matmul_batch_mismatch_4d": ("matmul", ["(2, 5, 3, 4)", "(3, 1, 4, 2)"],
                                 lambda: mg.tensor(np.ones((2, 5, 3, 4))) @ mg.tensor(np.ones((3, 1, 4, 2)))),
}


@pytest.mark.parametrize("name", sorted(BAD_SHAPES))
def test_bad_shapes_name_both_shapes(name):
    op, words, call = BAD_SHAPES[name]
    with pytest.raises(ValueError) as excinfo:
        call()
    text = one_line(excinfo)
    assert text.startswith(f"{op}:") and "remapped" not in text, text
    for w in words:
        assert w in text, (w, text)


def test_matmul_batch_broadcasting_still_works():
    a, b = np.ones((2, 1, 3, 4)), np.ones((5, 4, 2))
    np.testing.assert_array_equal(F.matmul(mg.tensor(a), mg.tensor(b)).numpy(), a @ b)


def _model():
    return nn.Linear(2, 2)


BAD_STATES = {  # name: (owner, missing keys named, call)
    "adam_empty": ("Adam", ["state", "param_groups"], lambda: optim.Adam(_model().parameters()).load_state_dict({})),
    "sgd_no_groups": ("SGD", ["param_groups"],
                      lambda: optim.SGD(_model().parameters(), lr=0.1).load_state_dict({"state": {}})),
    "adamw_empty": ("AdamW", ["param_groups"], lambda: optim.AdamW(_model().parameters()).load_state_dict({})),
    "adam_list": ("Adam", ["dict"], lambda: optim.Adam(_model().parameters()).load_state_dict([])),
    "scheduler_empty": ("LinearWarmupLR", ["last_epoch", "base_lrs"],
                        lambda: optim.LinearWarmupLR(optim.Adam(_model().parameters()), 3).load_state_dict({})),
    "ema_empty": ("ExponentialMovingAverage", ["shadow", "num_updates"],
                  lambda: optim.ExponentialMovingAverage(_model()).load_state_dict({})),
}


@pytest.mark.parametrize("name", sorted(BAD_STATES))
def test_incomplete_optimizer_states_are_refused(name):
    owner, words, call = BAD_STATES[name]
    with pytest.raises(ValueError) as excinfo:
        call()
    text = one_line(excinfo)
    assert text.startswith(f"{owner}.load_state_dict:"), text
    for w in words:
        assert w in text, (w, text)

"""scaled_dot_product_attention: gradients (q, k, v, float mask), masks, causal, dropout, errors.

The reference is the definition written out in NumPy (float64):
softmax(q k^T * scale + mask) v.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigen as mg
import minigen.functional as F
from minigen.functional import attention as attention_module
from minigen.testing import GradcheckError, gradcheck, gradgradcheck

from strategies import seeds
from helpers import tensor

sdpa = F.scaled_dot_product_attention


def reference(q, k, v, bias=None, scale=None):
    """The definition in float64 NumPy; rows with no admissible key give 0."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * scale
    if bias is not None:
        s = s + bias
    m = s.max(-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    total = e.sum(-1, keepdims=True)
    return (e / np.where(total == 0, 1, total)) @ v


def qkv(rng, batch=(2, 3), L=4, S=5, E=3, Ev=2):
    return (rng.standard_normal(batch + (L, E)), rng.standard_normal(batch + (S, E)),
            rng.standard_normal(batch + (S, Ev)))


# ----------------------------------------------------------------------------
# forward against the definition
# ----------------------------------------------------------------------------

@settings(max_examples=15)
@given(batch=st.sampled_from([(), (2,), (2, 3)]), L=st.integers(1, 5), S=st.integers(1, 5),
       E=st.integers(1, 4), Ev=st.integers(1, 4), seed=seeds())
def test_forward_matches_the_definition(batch, L, S, E, Ev, seed):
    rng = np.random.default_rng(seed)
    q, k, v = qkv(rng, batch, L, S, E, Ev)
    np.testing.assert_allclose(sdpa(tensor(q), tensor(k), tensor(v)).numpy(), reference(q, k, v),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sdpa(tensor(q), tensor(k), tensor(v), scale=0.3).numpy(), reference(q, k, v, scale=0.3),
                               rtol=1e-12, atol=1e-12)


def test_attention_weights_are_a_distribution(device):
    # With v = identity the output is the weight matrix P itself.
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 5, 3))
    p = sdpa(tensor(q, device), tensor(k, device), tensor(np.broadcast_to(np.eye(5), (2, 5, 5)), device)).numpy()
    assert np.all(p > 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12, atol=1e-12)


def test_large_scores_are_stable(device):
    # Scores of order 1e4 overflow a plain exp; the shifted softmax must give the
    # float64 definition's answer (in float32 too).
    rng = np.random.default_rng(1)
    q, k, v = qkv(rng)
    q = q * 3e3
    ref = reference(q, k, v)
    out64 = sdpa(tensor(q, device), tensor(k, device), tensor(v, device)).numpy()
    np.testing.assert_allclose(out64, ref, rtol=1e-9, atol=1e-9)
    out32 = sdpa(*[tensor(a, device, dtype=np.float32) for a in (q, k, v)]).numpy()
    assert out32.dtype == np.float32 and np.all(np.isfinite(out32))
    np.testing.assert_allclose(out32, ref, rtol=1e-3, atol=1e-3)


def test_both_softmax_paths_agree():
    # Small scores skip the row-max shift, large ones take it; same values either way.
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng, L=6, S=7)
    for factor in (1.0, 200.0):  # |scores| < 40, then > 40 somewhere
        np.testing.assert_allclose(sdpa(tensor(q * factor), tensor(k), tensor(v)).numpy(), reference(q * factor, k, v),
                                   rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------

def test_boolean_mask_removes_keys_and_their_values(device):
    rng = np.random.default_rng(3)
    q, k, v = qkv(rng)
    mask = rng.random((4, 5)) < 0.6
    mask[:, 0] = True  # every query keeps a key
    out = sdpa(tensor(q, device), tensor(k, device), tensor(v, device),
               attn_mask=mg.tensor(mask, device=device)).numpy()
    np.testing.assert_allclose(out, reference(q, k, v, np.where(mask, 0.0, -np.inf)), rtol=1e-12, atol=1e-12)
    # a key masked for every query: its value (and key) do not matter at all
    mask[:, 3] = False
    V, K = tensor(v, device, requires_grad=True), tensor(k, device, requires_grad=True)
    out = sdpa(tensor(q, device), K, V, attn_mask=mg.tensor(mask, device=device))
    v2, k2 = v.copy(), k.copy()
    v2[..., 3, :] += 100.0
    k2[..., 3, :] -= 50.0
    out2 = sdpa(tensor(q, device), tensor(k2, device), tensor(v2, device), attn_mask=mg.tensor(mask, device=device))
    np.testing.assert_allclose(out.numpy(), out2.numpy(), rtol=1e-12, atol=1e-12)
    gk, gv = mg.grad(out.sum(), [K, V])
    assert np.all(gv.numpy()[..., 3, :] == 0) and np.all(gk.numpy()[..., 3, :] == 0)
    assert np.any(gv.numpy()[..., 2, :] != 0)


def test_float_mask_is_added_to_the_scores(device):
    rng = np.random.default_rng(4)
    q, k, v = qkv(rng)
    bias = rng.standard_normal((3, 4, 5))  # broadcasts over the first batch dim
    out = sdpa(tensor(q, device), tensor(k, device), tensor(v, device), attn_mask=tensor(bias, device)).numpy()
    np.testing.assert_allclose(out, reference(q, k, v, bias), rtol=1e-12, atol=1e-12)


def test_causal_is_the_lower_triangular_mask(device):
    rng = np.random.default_rng(5)
    for L, S in ((4, 4), (3, 5), (5, 3)):
        q, k, v = qkv(rng, L=L, S=S)
        tril = np.tril(np.ones((L, S), dtype=bool))
        out = sdpa(tensor(q, device), tensor(k, device), tensor(v, device), is_causal=True).numpy()
        ref = reference(q, k, v, np.where(tril, 0.0, -np.inf))
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
        masked = sdpa(tensor(q, device), tensor(k, device), tensor(v, device),
                      attn_mask=mg.tensor(tril, device=device)).numpy()
        np.testing.assert_allclose(out, masked, rtol=1e-12, atol=1e-12)
        # the first query sees only the first key
        np.testing.assert_allclose(out[..., 0, :], v[..., 0, :], rtol=1e-12, atol=1e-12)


def test_fully_masked_query_gives_zeros_not_nan(device):
    rng = np.random.default_rng(6)
    q, k, v = qkv(rng)
    mask = np.ones((4, 5), dtype=bool)
    mask[2] = False
    Q = tensor(q, device, requires_grad=True)
    out = sdpa(Q, tensor(k, device), tensor(v, device), attn_mask=mg.tensor(mask, device=device))
    assert np.all(out.numpy()[..., 2, :] == 0)
    assert np.all(np.isfinite(out.numpy()))
    (gq,) = mg.grad((out * out).sum(), [Q])
    assert np.all(np.isfinite(gq.numpy())) and np.all(gq.numpy()[..., 2, :] == 0)


# ----------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["plain", "bool", "float", "causal", "scale", "broadcast", "cross"])
def test_gradcheck(device, case):
    rng = np.random.default_rng(7)
    q, k, v = qkv(rng, batch=(2,), L=3, S=4, E=3, Ev=2)
    if case == "plain":
        gradcheck(sdpa, [q, k, v], device=device)
    elif case == "bool":
        mask = np.array([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)
        gradcheck(lambda q, k, v: sdpa(q, k, v, attn_mask=mg.tensor(mask, device=device)), [q, k, v], device=device)
    elif case == "float":  # the float mask is an input too
        gradcheck(lambda q, k, v, m: sdpa(q, k, v, attn_mask=m), [q, k, v, rng.standard_normal((3, 4))],
                  device=device)
    elif case == "causal":
        gradcheck(lambda q, k, v: sdpa(q, k, v, is_causal=True), [q, k, v], device=device)
    elif case == "scale":
        gradcheck(lambda q, k, v: sdpa(q, k, v, scale=0.7), [q, k, v], device=device)
    elif case == "broadcast":  # one key/value set shared by every head
        q4 = rng.standard_normal((2, 2, 3, 3))
        gradcheck(sdpa, [q4, k[:, None], v[:, None]], device=device)
    else:  # cross-attention: L != S, Ev != E
        gradcheck(sdpa, [q[:, :2], k, rng.standard_normal((2, 4, 5))], device=device)


def test_gradcheck_large_inputs_along_directions():
    rng = np.random.default_rng(8)
    q, k, v = qkv(rng, batch=(2, 2), L=6, S=7, E=5, Ev=4)
    gradcheck(sdpa, [q, k, v])


def test_gradcheck_catches_a_planted_wrong_backward(monkeypatch):
    # A backward that forgets the softmax's "- sum" term must fail the check.
    rng = np.random.default_rng(9)
    q, k, v = qkv(rng, batch=(1,), L=2, S=3, E=2, Ev=2)
    gradcheck(sdpa, [q, k, v])

    def wrong_backward(self, gy):
        q, k, v = self.inputs[:3]
        p = self._probs()
        gs = p * F.matmul(gy, F.transpose(v, -1, -2))
        return (F.matmul(gs, k) * self.scale, F.matmul(F.transpose(gs, -1, -2), q) * self.scale,
                F.matmul(F.transpose(p, -1, -2), gy))

    monkeypatch.setattr(attention_module.ScaledDotProductAttention, "backward", wrong_backward)
    with pytest.raises(GradcheckError):
        gradcheck(sdpa, [q, k, v])


def test_gradgradcheck(device):
    rng = np.random.default_rng(10)
    q, k, v = qkv(rng, batch=(1,), L=2, S=3, E=2, Ev=2)
    gradgradcheck(sdpa, [q, k, v], device=device)
    mask = np.array([[1, 0, 1], [1, 1, 1]], dtype=bool)
    gradgradcheck(lambda q, k, v: sdpa(q, k, v, attn_mask=mg.tensor(mask, device=device)), [q, k, v], device=device)
    gradgradcheck(lambda q, k, v, m: sdpa(q, k, v, attn_mask=m), [q, k, v, rng.standard_normal((2, 3))],
                  device=device)


# ----------------------------------------------------------------------------
# dropout
# ----------------------------------------------------------------------------

def test_dropout_uses_the_generator_and_rescales(device):
    rng = np.random.default_rng(11)
    q, k, v = qkv(rng, batch=(2,), L=3, S=4)
    p = 0.4
    out = sdpa(tensor(q, device), tensor(k, device), tensor(v, device), dropout_p=p,
               generator=mg.Generator(3, device)).numpy()
    keep = mg.Generator(3, device).bernoulli(1 - p, (2, 3, 4), dtype=np.float64)
    keep = mg.Tensor(keep).numpy()
    weights = reference(q, k, np.broadcast_to(np.eye(4), (2, 4, 4)))
    np.testing.assert_allclose(out, (weights * keep / (1 - p)) @ v, rtol=1e-12, atol=1e-12)
    # same generator seed, same result; dropout_p=0 is plain attention
    again = sdpa(tensor(q, device), tensor(k, device), tensor(v, device), dropout_p=p,
                 generator=mg.Generator(3, device))
    np.testing.assert_array_equal(out, again.numpy())
    np.testing.assert_allclose(sdpa(tensor(q, device), tensor(k, device), tensor(v, device), dropout_p=0.0).numpy(),
                               reference(q, k, v), rtol=1e-12, atol=1e-12)


def test_dropout_gradcheck():
    # A fresh generator with a fixed seed per call keeps the dropout mask fixed.
    rng = np.random.default_rng(12)
    q, k, v = qkv(rng, batch=(2,), L=3, S=4)
    fn = lambda q, k, v: sdpa(q, k, v, dropout_p=0.3, generator=mg.Generator(5))  # noqa: E731
    gradcheck(fn, [q, k, v])
    gradgradcheck(fn, [q[:1], k[:1], v[:1]])


def test_float32_stays_float32():
    rng = np.random.default_rng(13)
    q, k, v = [tensor(a, requires_grad=True, dtype=np.float32) for a in qkv(rng)]
    out = sdpa(q, k, v, attn_mask=mg.tensor(np.ones((4, 5), bool)))
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in mg.grad(out.sum(), [q, k, v]))


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------

def test_errors_name_the_op_and_the_shapes():
    q, k, v = mg.zeros(2, 4, 3), mg.zeros(2, 5, 3), mg.zeros(2, 5, 2)
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention: query \(2, 4, 3\), key \(2, 5, 4\)"):
        sdpa(q, mg.zeros(2, 5, 4), v)
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention: .*value \(2, 6, 2\) do not fit"):
        sdpa(q, k, mg.zeros(2, 6, 2))
    with pytest.raises(ValueError, match=r"leading dims .* do not broadcast"):
        sdpa(q, mg.zeros(3, 5, 3), mg.zeros(3, 5, 2))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(4, 4\) does not broadcast to .*\(2, 4, 5\)"):
        sdpa(q, k, v, attn_mask=mg.tensor(np.ones((4, 4), bool)))
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        sdpa(q, k, v, attn_mask=mg.tensor(np.ones((4, 5), bool)), is_causal=True)
    with pytest.raises(ValueError, match="dropout_p must be in"):
        sdpa(q, k, v, dropout_p=1.0)
    with pytest.raises(TypeError, match="attn_mask must be boolean or floating"):
        sdpa(q, k, v, attn_mask=mg.tensor(np.ones((4, 5), np.int64)))
    with pytest.raises(TypeError, match="different dtypes"):
        sdpa(q, k, v, attn_mask=mg.zeros(4, 5, dtype=np.float64))


def test_leading_dims_of_value_and_mask_broadcast_against_the_scores():
    # the scores and output take the broadcast of every leading dim, the value's and mask's included
    rng = np.random.default_rng(12)
    q, k, v = rng.standard_normal((2, 1, 4, 5)), rng.standard_normal((1, 1, 6, 5)), rng.standard_normal((1, 3, 6, 2))
    mask = rng.standard_normal((2, 3, 4, 6))
    y = sdpa(mg.tensor(q), mg.tensor(k), mg.tensor(v), attn_mask=mg.tensor(mask))
    assert y.shape == (2, 3, 4, 2)
    np.testing.assert_allclose(y.numpy(), reference(q, k, v, mask), rtol=1e-12, atol=1e-12)
    gradcheck(lambda q, k, v, m: sdpa(q, k, v, attn_mask=m), [q, k, v, mask])


@pytest.mark.parametrize("case", ["plain", "float mask", "dropout", "causal", "broadcast"])
def test_plain_backward_on_arrays_equals_the_recorded_formula(case):
    # _backward_arrays (no graph) against the backward written in ops (create_graph=True)
    rng = np.random.default_rng(14)
    q, k, v = qkv(rng, batch=(2, 3), L=4, S=5)
    if case == "broadcast":
        k, v = k[:1], v[:, :1]
    extra = [rng.standard_normal((2, 3, 4, 5))] if case == "float mask" else []

    def call(*ts):
        kw = {"float mask": lambda: dict(attn_mask=ts[3]), "dropout": lambda: dict(dropout_p=0.3, generator=mg.Generator(5)),
              "causal": lambda: dict(is_causal=True)}.get(case, dict)()
        return sdpa(*ts[:3], **kw)

    def grads(create_graph):
        ts = [mg.tensor(a, requires_grad=True) for a in (q, k, v, *extra)]
        y = call(*ts)
        gy = mg.tensor(np.random.default_rng(15).standard_normal(y.shape))
        return mg.grad(y, ts, grad_outputs=gy, create_graph=create_graph)

    plain, recorded = grads(False), grads(True)
    assert not any(g.requires_grad for g in plain) and all(g.requires_grad for g in recorded)
    for a, b in zip(plain, recorded):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-11, atol=1e-12)

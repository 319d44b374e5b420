"""Distributions (minigen/distributions.py, notes §2.2-§2.4).

Claims checked: reparameterized Normal samples have the requested mean and std,
and gradients reach mean and logvar through them (central differences); every
log_prob is a normalised log-density/mass that matches SciPy; the closed-form
KL divergences equal the Monte-Carlo estimate within 4 standard errors, vanish
for KL(p, p) and are never negative; entropies equal -E[log p]; the Monte-Carlo
KL's gradient (through rsample) matches the closed form's; ``gaussian_kl`` (the one
Gaussian KL, on arrays and Tensors) stays accurate where p and q nearly agree; bad
input is refused.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

import minigen as mg
from minigen import backend
from minigen.distributions import Bernoulli, Categorical, Normal, gaussian_kl, kl_divergence, monte_carlo_kl
from minigen.testing import gradcheck
from strategies import arrays, seeds
from helpers import tensor


def np_(x):
    return backend.to_numpy(x.data if isinstance(x, mg.Tensor) else x)


def within_4_se(terms, target, atol=1e-9):
    """Is the mean of the draws (axis 0) within 4 standard errors of ``target``, entry by entry?"""
    terms = np.asarray(terms, dtype=np.float64)
    se = terms.std(axis=0, ddof=1) / np.sqrt(len(terms))
    return np.all(np.abs(terms.mean(axis=0) - target) <= 4 * se + atol), terms.mean(axis=0), se


# ----------------------------------------------------------------------------
# Normal: moments, gradients through rsample, log_prob
# ----------------------------------------------------------------------------

def test_rsample_moments_match_mean_and_std(device):
    mean, logvar = np.array([0.5, -2.0, 3.0]), np.array([0.0, -3.0, 1.5])
    z = np_(Normal(tensor(mean, device), tensor(logvar, device)).rsample((40000,), mg.Generator(1, device)))
    assert z.shape == (40000, 3)
    std = np.exp(0.5 * logvar)
    ok, m, se = within_4_se(z, mean)
    assert ok, (m, mean, se)
    # the sample std of n normal draws has standard error about std / sqrt(2n)
    np.testing.assert_array_less(np.abs(z.std(axis=0) - std), 4 * std / np.sqrt(2 * len(z)))


def test_rsample_shape_and_reproducibility(device):
    p = Normal(tensor(np.zeros((2, 3)), device), tensor(np.zeros(3), device))  # logvar broadcasts over the batch
    assert p.batch_shape == (2, 3)
    a = p.rsample((4,), mg.Generator(5, device))
    b = p.rsample((4,), mg.Generator(5, device))
    assert a.shape == (4, 2, 3)
    np.testing.assert_array_equal(np_(a), np_(b))
    assert not p.sample(generator=mg.Generator(0, device)).requires_grad


@settings(max_examples=10)
@given(mean=arrays((2, 3)), logvar=arrays((2, 3), -2.0, 2.0))
def test_gradients_flow_through_rsample(mean, logvar):
    # z = mean + exp(logvar / 2) eps with a fixed eps: dz/dmean = 1, dz/dlogvar = z_eps * std / 2
    fn = lambda m, lv: Normal(m, lv).rsample((4,), mg.Generator(7))
    assert gradcheck(fn, [mean, logvar])
    # broadcasting: one logvar per coordinate shared by the batch
    assert gradcheck(fn, [mean, logvar[0]])


def test_gradients_of_log_prob_entropy_and_kl(device):
    rng = np.random.default_rng(0)
    x, m, lv = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.uniform(-1, 1, size=(3, 4))
    m2, lv2 = rng.normal(size=(3, 4)), rng.uniform(-1, 1, size=(3, 4))
    assert gradcheck(lambda x, m, lv: Normal(m, lv).log_prob(x), [x, m, lv], device=device)
    assert gradcheck(lambda lv: Normal(np.zeros(4), lv).entropy(), [lv], device=device)
    assert gradcheck(lambda a, b, c, d: kl_divergence(Normal(a, b), Normal(c, d)), [m, lv, m2, lv2], device=device)
    b = rng.integers(0, 2, size=(3, 4)).astype(np.float64)
    assert gradcheck(lambda l: Bernoulli(l).log_prob(b), [m], device=device)
    assert gradcheck(lambda l: Bernoulli(l).entropy(), [m], device=device)
    assert gradcheck(lambda l1, l2: kl_divergence(Bernoulli(l1), Bernoulli(l2)), [m, m2], device=device)
    k = rng.integers(0, 4, size=3)
    assert gradcheck(lambda l: Categorical(l).log_prob(k), [m], device=device)
    assert gradcheck(lambda l1, l2: kl_divergence(Categorical(l1), Categorical(l2)), [m, m2], device=device)


def test_log_probs_match_scipy_and_normalise(device):
    rng = np.random.default_rng(1)
    x, m, lv = rng.normal(size=5), rng.normal(size=5), rng.uniform(-2, 2, size=5)
    np.testing.assert_allclose(np_(Normal(tensor(m, device), tensor(lv, device)).log_prob(tensor(x, device))),
                               stats.norm.logpdf(x, m, np.exp(0.5 * lv)), rtol=1e-12)
    logits = np.array([-40.0, -3.0, 0.0, 2.5, 40.0])  # far tails too: no log(0)
    p = Bernoulli(tensor(logits, device))
    p1 = np.exp(np_(p.log_prob(tensor(np.ones(5), device))))
    p0 = np.exp(np_(p.log_prob(tensor(np.zeros(5), device))))
    np.testing.assert_allclose(p1 + p0, 1.0, rtol=1e-12)
    np.testing.assert_allclose(p1, 1 / (1 + np.exp(-logits)), rtol=1e-12)
    assert np.all(np.isfinite(np_(p.log_prob(tensor(1 - (logits > 0), device)))))
    c = Categorical(tensor(rng.normal(size=(2, 4)), device))
    table = np.stack([np_(c.log_prob(np.full(2, k))) for k in range(4)], axis=-1)
    np.testing.assert_allclose(np.exp(table).sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(table), np_(c.probs), rtol=1e-12)


def test_discrete_samples_have_the_right_frequencies(device):
    n = 40000
    logits = np.array([-1.0, 0.0, 2.0])
    b = np_(Bernoulli(tensor(logits, device)).sample((n,), mg.Generator(2, device)))
    p = 1 / (1 + np.exp(-logits))
    assert set(np.unique(b)) <= {0.0, 1.0}
    np.testing.assert_array_less(np.abs(b.mean(0) - p), 4 * np.sqrt(p * (1 - p) / n))
    c = Categorical(tensor(logits, device))
    k = np_(c.sample((n,), mg.Generator(3, device)))
    assert k.dtype == np.int64 and k.shape == (n,)
    q = np_(c.probs)
    freq = np.bincount(k, minlength=3) / n
    np.testing.assert_array_less(np.abs(freq - q), 4 * np.sqrt(q * (1 - q) / n))


# ----------------------------------------------------------------------------
# KL divergence: closed form vs Monte Carlo, KL(p, p) = 0, KL >= 0
# ----------------------------------------------------------------------------

@st.composite
def normal_pairs(draw):
    shape = (draw(st.integers(1, 3)),)
    return [draw(arrays(shape, -2.0, 2.0)) for _ in range(4)]


@settings(max_examples=15)
@given(params=normal_pairs(), seed=seeds())
def test_normal_kl_closed_form_equals_monte_carlo(params, seed):
    m1, lv1, m2, lv2 = params
    p, q = Normal(tensor(m1), tensor(lv1)), Normal(tensor(m2), tensor(lv2))
    terms = np_(monte_carlo_kl(p, q, 20000, mg.Generator(seed)))
    ok, mc, se = within_4_se(terms, np_(kl_divergence(p, q)))
    assert ok, (mc, np_(kl_divergence(p, q)), se)


@settings(max_examples=15)
@given(params=normal_pairs(), seed=seeds())
def test_bernoulli_and_categorical_kl_closed_form_equals_monte_carlo(params, seed):
    l1, _, l2, _ = params
    p, q = Bernoulli(tensor(l1)), Bernoulli(tensor(l2))
    ok, mc, se = within_4_se(np_(monte_carlo_kl(p, q, 20000, mg.Generator(seed))), np_(kl_divergence(p, q)))
    assert ok, (mc, np_(kl_divergence(p, q)), se)
    p, q = Categorical(tensor(l1)), Categorical(tensor(l2))
    ok, mc, se = within_4_se(np_(monte_carlo_kl(p, q, 20000, mg.Generator(seed))), np_(kl_divergence(p, q)))
    assert ok, (mc, np_(kl_divergence(p, q)), se)


@given(params=normal_pairs())
def test_kl_of_a_distribution_with_itself_is_zero_and_kl_is_never_negative(params):
    m1, lv1, m2, lv2 = params
    pairs = [(Normal(tensor(m1), tensor(lv1)), Normal(tensor(m2), tensor(lv2))),
             (Bernoulli(tensor(m1)), Bernoulli(tensor(m2))),
             (Categorical(tensor(m1)), Categorical(tensor(m2)))]
    for p, q in pairs:
        np.testing.assert_allclose(np_(kl_divergence(p, p)), 0.0, atol=1e-12)
        assert np.all(np_(kl_divergence(p, q)) >= -1e-12)


def test_entropy_equals_minus_expected_log_prob(device):
    gen = mg.Generator(4, device)
    for d in [Normal(tensor([0.3, -1.0], device), tensor([1.0, -2.0], device)), Bernoulli(tensor([-1.5, 0.2], device)),
              Categorical(tensor([[0.0, 1.0, -2.0], [3.0, 0.0, 0.0]], device))]:
        terms = -np_(d.log_prob(d.sample((20000,), gen)))
        ok, mc, se = within_4_se(terms, np_(d.entropy()))
        assert ok, (type(d).__name__, mc, np_(d.entropy()), se)
    # the closed forms against SciPy
    np.testing.assert_allclose(np_(Normal(tensor([0.0]), tensor([0.7])).entropy()),
                               stats.norm(0, np.exp(0.35)).entropy(), rtol=1e-12)
    np.testing.assert_allclose(np_(Bernoulli(tensor([0.4])).entropy()),
                               stats.bernoulli(1 / (1 + np.exp(-0.4))).entropy(), rtol=1e-12)


def test_monte_carlo_kl_gradient_matches_the_closed_form():
    # d/d(mean, logvar) of the MC estimate (through rsample) estimates the closed form's gradient
    m, lv = tensor([0.5, -1.0], requires_grad=True), tensor([0.3, -0.5], requires_grad=True)
    q = Normal(tensor([0.0, 1.0]), tensor([0.0, 0.4]))
    monte_carlo_kl(Normal(m, lv), q, 50000, mg.Generator(9)).mean(dim=0).sum().backward()
    mc = np.concatenate([np_(m.grad), np_(lv.grad)])
    m.zero_grad(), lv.zero_grad()
    kl_divergence(Normal(m, lv), q).sum().backward()
    exact = np.concatenate([np_(m.grad), np_(lv.grad)])
    assert np.abs(exact).max() > 0.1
    np.testing.assert_allclose(mc, exact, atol=0.03)


def test_kl_without_closed_form_falls_back_to_monte_carlo():
    p, q = Normal(tensor([0.0]), tensor([0.0])), Normal(tensor([1.0]), tensor([0.5]))
    exact = np_(kl_divergence(p, q))
    estimate = np_(kl_divergence(p, q, n_samples=50000, generator=mg.Generator(0)))
    assert abs(estimate - exact) < 0.02 and not np.array_equal(estimate, exact)


# ----------------------------------------------------------------------------
# gaussian_kl: the one Gaussian KL, on arrays and on Tensors
# ----------------------------------------------------------------------------

def _kl_reference(m1, lv1, m2, lv2):
    """1/2 [log(s2^2/s1^2) + (s1^2 + (m1 - m2)^2) / s2^2 - 1], the textbook form (Bishop PRML ex. 1.30)."""
    v1, v2 = np.exp(lv1), np.exp(lv2)
    return 0.5 * (lv2 - lv1 + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


def test_gaussian_kl_on_arrays_matches_the_textbook_form_and_keeps_dtype(device):
    rng = np.random.default_rng(0)
    m1, lv1, m2, lv2 = rng.normal(size=(4, 3, 5))
    got = gaussian_kl(*(backend.to_device(a, device) for a in (m1, lv1, m2, lv2)))
    assert backend.is_array(got) and backend.device_of(got) == device
    np.testing.assert_allclose(backend.to_numpy(got), _kl_reference(m1, lv1, m2, lv2), rtol=1e-12, atol=1e-15)
    # numbers broadcast and take the arrays' dtype: a float32 mean gives a float32 KL to N(0, 1)
    got32 = gaussian_kl(backend.to_device(m1.astype(np.float32), device), 0.5, 0.0, 0.0)
    assert got32.dtype == np.float32 and got32.shape == (3, 5)
    np.testing.assert_allclose(backend.to_numpy(got32), _kl_reference(m1, 0.5, 0.0, 0.0), rtol=1e-5)


def test_gaussian_kl_on_tensors_is_differentiable_and_is_the_normal_kl(device, float64):
    rng = np.random.default_rng(1)
    args = list(rng.normal(size=(4, 2, 3)))
    gradcheck(gaussian_kl, args, device=device)
    m1, lv1, m2, lv2 = (tensor(a, device) for a in args)
    got = gaussian_kl(m1, lv1, m2, lv2)
    np.testing.assert_array_equal(np_(got), np_(kl_divergence(Normal(m1, lv1), Normal(m2, lv2))))
    # one Tensor among arrays and numbers: a Tensor result, gradient only for the Tensor
    m = tensor(args[0], device, requires_grad=True)
    kl = gaussian_kl(m, 0.3, backend.to_device(args[2], device), 0.0)
    assert isinstance(kl, mg.Tensor)
    (g,) = mg.grad(kl.sum(), [m])
    np.testing.assert_allclose(np_(g), args[0] - args[2], rtol=1e-12)   # d/dm1 = (m1 - m2) / e^logvar2


@pytest.mark.parametrize("r", [1e-2, 1e-4, 1e-6])
def test_gaussian_kl_is_accurate_when_p_nearly_equals_q(r):
    # KL(N(0, e^r) || N(0, 1)) = (e^r - 1 - r) / 2 = r^2/4 + r^3/12 + r^4/48 + ...  The textbook
    # form's "+ e^r - 1" cancels: at r = 1e-6 it keeps ~4 digits in float64; expm1(r) - r keeps ~10.
    exact = r * r / 4 + r ** 3 / 12 + r ** 4 / 48 + r ** 5 / 240
    np.testing.assert_allclose(gaussian_kl(np.array(0.0), r, 0.0, 0.0), exact, rtol=1e-9)
    if r <= 1e-4:   # the check above would fail for the textbook form (so it can fail at all)
        assert abs(_kl_reference(0.0, r, 0.0, 0.0) / exact - 1) > 1e-9


def test_gaussian_kl_of_huge_variances_does_not_overflow_float32():
    # e^100 overflows float32; the ratio of variances is e^(100 - 95), computed as one exp
    kl = gaussian_kl(np.float32([0.0]), np.float32([100.0]), np.float32([0.0]), np.float32([95.0]))
    np.testing.assert_allclose(kl, 0.5 * (np.exp(5.0) - 1 - 5), rtol=1e-6)


# ----------------------------------------------------------------------------
# error paths
# ----------------------------------------------------------------------------

def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="Normal: mean and logvar"):
        Normal(tensor(np.zeros(3)), tensor(np.zeros(2)))
    with pytest.raises(ValueError, match="log_prob"):
        Normal(tensor(np.zeros(3)), tensor(np.zeros(3))).log_prob(tensor(np.zeros(4)))
    with pytest.raises(TypeError, match="Normal"):
        Normal(mg.Tensor(np.zeros(2, dtype=np.int64)), tensor(np.zeros(2)))
    with pytest.raises(TypeError, match="differ in dtype"):
        Normal(tensor(np.zeros(2)), mg.Tensor(np.zeros(2, dtype=np.float32)))
    with pytest.raises(NotImplementedError, match="rsample"):
        Bernoulli(tensor([0.0])).rsample()
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        Categorical(tensor(np.zeros(3))).log_prob(np.array(3))
    with pytest.raises(ValueError, match="integer"):
        Categorical(tensor(np.zeros(3))).log_prob(np.array(1.0))
    with pytest.raises(ValueError, match="last axis"):
        Categorical(tensor(np.float64(0.0)))
    with pytest.raises(TypeError, match="two distributions"):
        kl_divergence(Normal(tensor([0.0]), tensor([0.0])), 1.0)
    with pytest.raises(ValueError, match="batch shapes"):
        kl_divergence(Normal(tensor(np.zeros(2)), tensor(np.zeros(2))),
                      Normal(tensor(np.zeros(3)), tensor(np.zeros(3))))
    with pytest.raises(ValueError, match="n_samples"):
        monte_carlo_kl(Normal(tensor([0.0]), tensor([0.0])), Normal(tensor([0.0]), tensor([0.0])), 0)

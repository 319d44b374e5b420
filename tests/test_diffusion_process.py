"""The diffusion process of notes §5.1-5.5, its claims checked numerically.

* the schedules and ``extract``;
* q(x_t | x_0) equals t composed one-step transitions (analytically and by Monte Carlo);
* the posterior q(x_{t-1} | x_t, x_0) is the Gaussian Bayes rule, and the KL of a reverse step
  with shared variance is the weighted squared error of §5.2 (x0) and §5.3 (eps);
* eps <-> x0 <-> v round trips;
* samplers with the exact optimal denoiser of a known Gaussian / Gaussian-mixture law reproduce
  that law (no training); classifier-free guidance; trajectories; clipping;
* the bound in bits/dim: L_0 is a distribution over the 256 values, no model beats the entropy
  of the data, the oracle beats a bad model, L_T is tiny;
* p_losses against hand-computed losses, "vlb" against the bpd terms, gradients reach the weights;
* clear errors for bad input.
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.stats import norm

import minigen as mg
import minigen.functional as F
from minigen import backend, nn
from minigen.distributions import gaussian_kl
from minigen.models.diffusion.ddpm import GaussianDiffusion, discretized_gaussian_log_likelihood
from minigen.models.diffusion.schedule import DiffusionSchedule, extract, make_beta_schedule

from helpers import tensor

from strategies import seeds

SCHEDULES = ("linear", "cosine", "sigmoid")


def host(x):
    return backend.to_numpy(x.data if isinstance(x, mg.Tensor) else x)


def timesteps(values, device="cpu"):
    return mg.tensor(np.asarray(values, dtype=np.int64), device=device)


# ----------------------------------------------------------------------------
# oracles: the exact E[x0 | x_t] of known data laws
# ----------------------------------------------------------------------------

class MixtureOracle:
    """The optimal denoiser of x_0 ~ sum_k w_k N(mu_k, S_k) in d dims, images (B, d, 1, 1) or (B, 1, h, w).

    With x_t = a x_0 + s eps:  p(k | x_t) ∝ w_k N(x_t; a mu_k, a^2 S_k + s^2 I) and
    E[x_0 | x_t, k] = mu_k + a S_k (a^2 S_k + s^2 I)^{-1} (x_t - a mu_k) (Gaussian conditioning).
    It returns what ``diffusion.objective`` asks for.  ``components[y]`` gives a class-conditional
    oracle (one component per label, label K = null -> the whole mixture).
    """

    def __init__(self, diffusion, weights, means, covs, conditional=False):
        self.diffusion = diffusion
        self.weights = np.asarray(weights, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.covs = np.asarray(covs, dtype=np.float64)
        self.num_classes = len(self.weights) if conditional else None
        self.calls = 0

    def x0_hat(self, x, t, comps=None):
        """x (B, d) float64 host, t (B,) -> E[x_0 | x_t] (B, d) under the mixture restricted to ``comps``."""
        s = self.diffusion.schedule
        out = np.empty_like(x)
        d = x.shape[1]
        for step in np.unique(t):
            rows = t == step
            a, sd = s.sqrt_alphas_cumprod[step], s.sqrt_one_minus_alphas_cumprod[step]
            xs = x[rows]
            logp, post = [], []
            for k in (range(len(self.weights)) if comps is None else comps):
                mu, S = self.means[k], self.covs[k]
                M = a * a * S + sd * sd * np.eye(d)
                r = xs - a * mu
                sol = np.linalg.solve(M, r.T).T                                   # M^{-1} (x - a mu)
                logdet = np.linalg.slogdet(M)[1]
                logp.append(np.log(self.weights[k]) - 0.5 * np.sum(r * sol, 1) - 0.5 * logdet)
                post.append(mu + a * sol @ S.T)
            logp = np.stack(logp)
            resp = np.exp(logp - logp.max(0))
            resp /= resp.sum(0)
            out[rows] = np.einsum("kb,kbd->bd", resp, np.stack(post))
        return out

    def __call__(self, x_t, t, y=None):
        self.calls += 1
        x = host(x_t).reshape(len(x_t), -1).astype(np.float64)
        tt = host(t)
        if y is None:
            x0 = self.x0_hat(x, tt)
        else:
            yy, x0 = host(y), np.empty_like(x)
            for label in np.unique(yy):
                rows = yy == label
                comps = None if label == self.num_classes else [int(label)]
                x0[rows] = self.x0_hat(x[rows], tt[rows], comps)
        s = self.diffusion.schedule
        a = s.sqrt_alphas_cumprod[tt][:, None]
        sd = s.sqrt_one_minus_alphas_cumprod[tt][:, None]
        eps = (x - a * x0) / sd
        out = {"eps": eps, "x0": x0, "v": a * eps - sd * x0}[self.diffusion.objective]
        return mg.tensor(out.reshape(x_t.shape).astype(x_t.dtype), device=x_t.device)


GAUSS_MU = np.array([0.3, -0.2])
GAUSS_COV = np.array([[0.25, 0.1], [0.1, 0.15]])


def linear_gaussian_law(diffusion, mu, S, sampler, steps=None, eta=0.0):
    """Mean and covariance of the discretized sampler's output for Gaussian data, by propagating
    the linear-Gaussian recursion x <- A x + b + sigma z exactly (no Monte Carlo)."""
    s = diffusion.schedule
    d = len(mu)
    eye = np.eye(d)
    ac = s.alphas_cumprod

    def denoiser(step):  # x0_hat = K x + c
        a, sd2 = math.sqrt(ac[step]), 1.0 - ac[step]
        K = a * S @ np.linalg.inv(a * a * S + sd2 * eye)
        return K, mu - a * K @ mu

    m, C = np.zeros(d), eye.copy()
    if sampler == "ddpm":
        for step in range(s.T - 1, -1, -1):
            K, c = denoiser(step)
            A = s.posterior_mean_coef1[step] * K + s.posterior_mean_coef2[step] * eye
            var = diffusion.model_variance[step] if step > 0 else 0.0
            m, C = A @ m + s.posterior_mean_coef1[step] * c, A @ C @ A.T + var * eye
        return m, C
    seq = diffusion.ddim_timesteps(steps)
    for i, step in enumerate(seq):
        K, c = denoiser(step)
        ab, ab_prev = ac[step], (ac[seq[i + 1]] if i + 1 < len(seq) else 1.0)
        sig2 = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        k_eps = math.sqrt(max(1 - ab_prev - sig2, 0.0)) / math.sqrt(1 - ab)  # eps_hat = (x - a x0_hat) / s
        A = math.sqrt(ab_prev) * K + k_eps * (eye - math.sqrt(ab) * K)
        b = math.sqrt(ab_prev) * c - k_eps * math.sqrt(ab) * c
        m, C = A @ m + b, A @ C @ A.T + sig2 * eye
    return m, C


def run_sampler(diffusion, model, shape, seed, sampler, device, **kw):
    g = mg.Generator(seed, device)
    if sampler == "ddpm":
        return diffusion.sample(model, shape, g, clip_denoised=False, **kw)
    return diffusion.ddim_sample(model, shape, g, clip_denoised=False, **kw)


# ----------------------------------------------------------------------------
# schedules and extract
# ----------------------------------------------------------------------------

def test_linear_schedule_end_points_and_scaling():
    betas = make_beta_schedule("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    # any T keeps about the same total noise: alpha_bar_T stays near its T = 1000 value
    ab_1000 = np.prod(1 - betas)
    for T in (100, 250, 4000):
        b = make_beta_schedule("linear", T)
        np.testing.assert_allclose([b[0], b[-1]], [1e-4 * 1000 / T, 0.02 * 1000 / T])
        assert 0.98 < np.log(np.prod(1 - b)) / np.log(ab_1000) < 1.1


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules_are_valid_and_follow_their_alpha_bar(name):
    for T in (1, 2, 10, 1000):
        b = make_beta_schedule(name, T)
        assert b.shape == (T,) and np.all(b > 0) and np.all(b <= 0.999)
    s = DiffusionSchedule.from_name(name, 1000)
    assert np.all(np.diff(s.alphas_cumprod) < 0) and s.alphas_cumprod[-1] < 1e-3
    u = np.arange(1, 1001) / 1000
    if name == "cosine":  # Nichol & Dhariwal eq. 17, before the 0.999 clip bites at the very end
        f = np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
        np.testing.assert_allclose(s.alphas_cumprod[:990], f[:990], rtol=1e-10)
    if name == "sigmoid":
        sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
        f = (sig(3.0) - sig(6 * u - 3)) / (sig(3.0) - sig(-3.0))
        np.testing.assert_allclose(s.alphas_cumprod[:990], f[:990], rtol=1e-10)


def test_schedule_coefficients_are_precise_near_t0():
    s = DiffusionSchedule.from_name("linear", 1000)
    np.testing.assert_allclose(-np.expm1(s.log_one_minus_alphas_cumprod[0]), s.alphas_cumprod[0], rtol=1e-14)
    np.testing.assert_allclose(np.exp(s.log_one_minus_alphas_cumprod[0]), 1e-4, rtol=1e-13)
    np.testing.assert_allclose(s.sqrt_recip_alphas_cumprod * s.sqrt_alphas_cumprod, 1.0, rtol=1e-14)
    np.testing.assert_allclose(s.posterior_variance[0], 0.0)
    np.testing.assert_allclose(s.posterior_log_variance_clipped[:2], np.log(s.posterior_variance[1]))


def test_extract_gathers_and_broadcasts(device):
    a = np.arange(10, dtype=np.float64) * 0.5
    t = timesteps([3, 0, 9], device)
    c = extract(a, t, (3, 2, 4, 4), dtype="float64")
    assert c.shape == (3, 1, 1, 1) and c.device == device and c.dtype == np.float64
    np.testing.assert_array_equal(host(c).ravel(), [1.5, 0.0, 4.5])
    assert extract(a, np.array([1, 2]), (2, 5)).dtype == np.float32


# ----------------------------------------------------------------------------
# §5.1: q(x_t | x_0) equals t composed steps q(x_s | x_{s-1}) = N(sqrt(1 - beta_s) x_{s-1}, beta_s I)
# ----------------------------------------------------------------------------

@given(name=st.sampled_from(SCHEDULES), T=st.integers(1, 400), frac=st.floats(0, 1))
def test_q_marginal_equals_composed_steps_analytically(name, T, frac):
    s = DiffusionSchedule.from_name(name, T)
    t = min(int(frac * T), T - 1)
    # compose x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) eps_s step by step:
    # mean coefficient m_s = sqrt(1 - beta_s) m_{s-1}, variance v_s = (1 - beta_s) v_{s-1} + beta_s
    m, v = 1.0, 0.0
    for beta in s.betas[: t + 1]:
        m, v = math.sqrt(1 - beta) * m, (1 - beta) * v + beta
    np.testing.assert_allclose(s.sqrt_alphas_cumprod[t], m, rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_one_minus_alphas_cumprod[t] ** 2, v, rtol=1e-12)
    d = GaussianDiffusion(s, dtype="float64")
    x0 = tensor([[0.7, -1.0]])
    mean, var, log_var = d.q_mean_variance(x0, timesteps([t]))
    np.testing.assert_allclose(host(mean), m * np.array([[0.7, -1.0]]), rtol=1e-12)
    np.testing.assert_allclose(host(var).ravel(), v, rtol=1e-12)
    np.testing.assert_allclose(np.exp(host(log_var)).ravel(), v, rtol=1e-12)


@pytest.mark.parametrize("name,t", [("linear", 0), ("linear", 40), ("cosine", 99), ("sigmoid", 60)])
def test_q_sample_matches_composed_steps_in_law(device, name, t):
    # Monte Carlo: run the t + 1 one-step transitions from a fixed x_0 and compare the moments of
    # the endpoint with those of q_sample's one-shot draws (two independent samples of 20000 each).
    n = 20000
    d = GaussianDiffusion(name, T=100, dtype="float64")
    rng = np.random.default_rng(t)
    x0 = np.array([0.8, -0.5])
    x = np.broadcast_to(x0, (n, 2)).copy()
    for beta in d.schedule.betas[: t + 1]:
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * rng.standard_normal((n, 2))
    noise = tensor(rng.standard_normal((n, 2)), device)
    y = host(d.q_sample(tensor(np.broadcast_to(x0, (n, 2)), device), timesteps(np.full(n, t), device), noise))
    var = 1 - d.schedule.alphas_cumprod[t]
    se_mean, se_var = math.sqrt(2 * var / n), var * math.sqrt(4 / n)   # of a difference of two samples
    np.testing.assert_allclose(y.mean(0), x.mean(0), atol=5 * se_mean)
    np.testing.assert_allclose(y.var(0), x.var(0), atol=5 * se_var)
    np.testing.assert_allclose(y.mean(0), d.schedule.sqrt_alphas_cumprod[t] * x0, atol=5 * se_mean)


# ----------------------------------------------------------------------------
# §5.2 / §5.3: the posterior and the KL as a weighted squared error
# ----------------------------------------------------------------------------

@given(name=st.sampled_from(SCHEDULES), frac=st.floats(0, 1), seed=seeds())
def test_posterior_is_the_gaussian_bayes_rule(name, frac, seed):
    T = 200
    d = GaussianDiffusion(name, T=T, dtype="float64")
    s = d.schedule
    t = 1 + min(int(frac * (T - 1)), T - 2)          # code step t >= 1 (a noisy x_{t-1})
    rng = np.random.default_rng(seed)
    x0, xt = rng.uniform(-1, 1, (3, 4)), rng.standard_normal((3, 4))
    # joint Gaussian of (x_{t-1}, x_t) given x_0, per coordinate:
    #   x_{t-1} ~ N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}),  x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps
    ab_prev, alpha, beta = s.alphas_cumprod[t - 1], s.alphas[t], s.betas[t]
    m1 = math.sqrt(ab_prev) * x0
    cov = np.array([[1 - ab_prev, math.sqrt(alpha) * (1 - ab_prev)],
                    [math.sqrt(alpha) * (1 - ab_prev), alpha * (1 - ab_prev) + beta]])
    m2 = math.sqrt(alpha) * m1
    # condition on x_t: mean m1 + S12 / S22 (x_t - m2), variance S11 - S12^2 / S22
    bayes_mean = m1 + cov[0, 1] / cov[1, 1] * (xt - m2)
    bayes_var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    mean, var, log_var = d.q_posterior_mean_variance(tensor(x0), tensor(xt), timesteps([t] * 3))
    np.testing.assert_allclose(host(mean), bayes_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(host(var).ravel(), bayes_var, rtol=1e-9)
    np.testing.assert_allclose(np.exp(host(log_var)).ravel(), bayes_var, rtol=1e-9)
    # at t = 0 the "posterior" of x_{-1} = x_0 is x_0 itself
    mean0, var0, _ = d.q_posterior_mean_variance(tensor(x0), tensor(xt), timesteps([0] * 3))
    np.testing.assert_allclose(host(mean0), x0, atol=1e-12)
    np.testing.assert_allclose(host(var0), 0.0, atol=1e-15)


@given(name=st.sampled_from(SCHEDULES), frac=st.floats(0, 1), seed=seeds())
def test_kl_of_a_reverse_step_is_a_weighted_squared_error(name, frac, seed):
    T = 200
    d = GaussianDiffusion(name, T=T, dtype="float64")
    s = d.schedule
    t = 1 + min(int(frac * (T - 1)), T - 2)
    rng = np.random.default_rng(seed)
    x0, eps = rng.uniform(-1, 1, (2, 5)), rng.standard_normal((2, 5))
    x0_hat = x0 + 0.3 * rng.standard_normal((2, 5))
    tt = timesteps([t, t])
    xt = d.q_sample(tensor(x0), tt, tensor(eps))
    true_mean, _, log_var = d.q_posterior_mean_variance(tensor(x0), xt, tt)
    model_mean, _, _ = d.q_posterior_mean_variance(tensor(x0_hat), xt, tt)      # mu_theta = mu~(x_t, x0_hat)
    kl = host(gaussian_kl(true_mean, log_var, model_mean, log_var)).sum(1)
    # §5.2: w_t = (SNR(t-1) - SNR(t)) / 2 with SNR = ab / (1 - ab)
    ab, ab_prev = s.alphas_cumprod[t], s.alphas_cumprod[t - 1]
    w_x0 = 0.5 * (ab_prev / (1 - ab_prev) - ab / (1 - ab))
    np.testing.assert_allclose(kl, w_x0 * ((x0 - x0_hat) ** 2).sum(1), rtol=1e-7)
    # §5.3 (Ho et al. eq. 12): w'_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - ab_t)), sigma_t^2 = beta~_t
    beta_tilde = s.betas[t] * (1 - ab_prev) / (1 - ab)
    w_eps = s.betas[t] ** 2 / (2 * beta_tilde * s.alphas[t] * (1 - ab))
    eps_hat = host(d.predict_eps_from_x0(xt, tt, tensor(x0_hat)))
    np.testing.assert_allclose(kl, w_eps * ((eps - eps_hat) ** 2).sum(1), rtol=1e-7)
    assert np.all(kl > 0)


def test_normal_kl_matches_the_closed_form_and_takes_arrays():
    m1, lv1, m2, lv2 = 0.3, -1.0, -0.2, 0.5
    v1, v2 = math.exp(lv1), math.exp(lv2)
    expected = math.log(math.sqrt(v2 / v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
    got = gaussian_kl(np.array([m1]), np.array([lv1]), m2, lv2)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, [expected], rtol=1e-12)
    got_t = gaussian_kl(tensor([m1]), lv1, tensor([m2]), np.array([lv2]))
    assert isinstance(got_t, mg.Tensor)
    np.testing.assert_allclose(host(got_t), [expected], rtol=1e-12)


# ----------------------------------------------------------------------------
# eps <-> x0 <-> v
# ----------------------------------------------------------------------------

@given(name=st.sampled_from(SCHEDULES), t=st.lists(st.integers(0, 99), min_size=1, max_size=4), seed=seeds())
def test_eps_x0_v_round_trip(name, t, seed):
    d = GaussianDiffusion(name, T=100, dtype="float64")
    rng = np.random.default_rng(seed)
    shape = (len(t), 1, 2, 3)
    x0, eps = tensor(rng.uniform(-1, 1, shape)), tensor(rng.standard_normal(shape))
    tt = timesteps(t)
    xt = d.q_sample(x0, tt, eps)
    tol = dict(rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(host(d.predict_x0_from_eps(xt, tt, eps)), host(x0), **tol)
    np.testing.assert_allclose(host(d.predict_eps_from_x0(xt, tt, x0)), host(eps), **tol)
    v = d.predict_v(x0, tt, eps)
    np.testing.assert_allclose(host(d.predict_x0_from_v(xt, tt, v)), host(x0), **tol)
    np.testing.assert_allclose(host(d.predict_eps_from_v(xt, tt, v)), host(eps), **tol)
    # v is the velocity of (x0, eps) -> x_t along the circle: v = d x_t / d phi with a = cos phi, s = sin phi
    a = d.schedule.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    sd = d.schedule.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(host(v), a * host(eps) - sd * host(x0), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# §5.5: samplers with the exact optimal denoiser reproduce the data law (no training)
# ----------------------------------------------------------------------------

def _moment_errors(x, mean, cov):
    """|sample mean - mean| and |sample cov - cov| in units of their standard errors."""
    n = len(x)
    sd = np.sqrt(np.diag(cov))
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / n)   # Var of a Gaussian sample cov
    return np.abs(x.mean(0) - mean) / (sd / math.sqrt(n)), np.abs(np.cov(x.T) - cov) / se_cov


@pytest.mark.parametrize("sampler,variance,objective,steps,eta,allowance", [
    ("ddpm", "fixed_small", "eps", None, 0.0, 0.01),
    ("ddpm", "fixed_large", "x0", None, 0.0, 0.005),
    ("ddim", "fixed_small", "v", 50, 0.0, 0.03),
    ("ddim", "fixed_small", "eps", 50, 1.0, 0.06),
])
def test_samplers_reproduce_a_gaussian_law(device, sampler, variance, objective, steps, eta, allowance):
    # Data x_0 ~ N(mu, S) in 2-D, as images (n, 2, 1, 1); the oracle returns the exact E[x_0 | x_t]
    # in the diffusion's parameterization.  Two checks:
    #  (1) the samples' moments equal the exact law of the discretized sampler (a linear-Gaussian
    #      recursion computed in closed form above) within 4.5 standard errors: the code is right;
    #  (2) that law is the data law up to a discretization error `allowance` (DDIM with 50 steps
    #      under-disperses by O(1/steps), a property of the method, not of the code).
    n, T = 4000, 500
    d = GaussianDiffusion("linear", T=T, objective=objective, variance=variance)
    oracle = MixtureOracle(d, [1.0], [GAUSS_MU], [GAUSS_COV])
    kw = {} if sampler == "ddpm" else dict(steps=steps, eta=eta)
    x = run_sampler(d, oracle, (n, 2, 1, 1), 1, sampler, device, **kw).reshape(n, 2)
    assert x.dtype == np.float32 and oracle.calls == (T if sampler == "ddpm" else steps)
    law_mean, law_cov = linear_gaussian_law(d, GAUSS_MU, GAUSS_COV, sampler, steps, eta)
    err_mean, err_cov = _moment_errors(x.astype(np.float64), law_mean, law_cov)
    assert err_mean.max() < 4.5 and err_cov.max() < 4.5, (x.mean(0), np.cov(x.T), law_mean, law_cov)
    np.testing.assert_allclose(law_mean, GAUSS_MU, atol=2e-3)
    np.testing.assert_allclose(law_cov, GAUSS_COV, atol=allowance)


MIX_W = np.array([0.3, 0.7])
MIX_MU = np.array([[-0.5, -0.4, 0.3, 0.0], [0.4, 0.5, -0.2, 0.1]])
MIX_COV = np.array([0.02 * np.eye(4) + 0.005, 0.03 * np.eye(4) - 0.004 * np.eye(4)[::-1]])


def _mixture_stats(x):
    """Fraction and moments of each component, assigning each sample to its most probable component."""
    logp = np.stack([np.log(w) - 0.5 * np.einsum("nd,de,ne->n", x - mu, np.linalg.inv(S), x - mu)
                     - 0.5 * np.linalg.slogdet(S)[1] for w, mu, S in zip(MIX_W, MIX_MU, MIX_COV)])
    label = logp.argmax(0)
    return [(np.mean(label == k), x[label == k].mean(0), np.cov(x[label == k].T)) if np.sum(label == k) > 1
            else (np.mean(label == k), None, None) for k in range(2)]


@pytest.mark.parametrize("sampler,variance,kw", [("ddpm", "fixed_small", {}), ("ddpm", "fixed_large", {}),
                                                 ("ddim", "fixed_small", dict(steps=50, eta=0.0)),
                                                 ("ddim", "fixed_small", dict(steps=50, eta=1.0))])
def test_samplers_reproduce_a_gaussian_mixture(device, sampler, variance, kw):
    # Two well-separated components in 4-D as images (n, 1, 2, 2); the oracle's E[x_0 | x_t] is the
    # posterior-weighted mixture of the components' posterior means.  The mixture weights, the
    # overall mean and the components' means must come out right.  Within a component the sampler
    # behaves as on a lone Gaussian of that covariance: compare with that discretized law (exact
    # for DDPM to ~2 standard errors; for DDIM-50, which under-disperses narrow components by 25-45%,
    # the mixing at high noise adds up to ~20%).
    n, T = 4000, 500
    d = GaussianDiffusion("linear", T=T, variance=variance)
    oracle = MixtureOracle(d, MIX_W, MIX_MU, MIX_COV)
    x = run_sampler(d, oracle, (n, 1, 2, 2), 2, sampler, device, **kw).reshape(n, 4).astype(np.float64)
    true_mean = MIX_W @ MIX_MU
    true_cov = sum(w * (S + np.outer(mu - true_mean, mu - true_mean)) for w, mu, S in zip(MIX_W, MIX_MU, MIX_COV))
    err_mean, _ = _moment_errors(x, true_mean, true_cov)
    assert err_mean.max() < 4.5, (x.mean(0), true_mean)
    for k, (frac, mean, cov) in enumerate(_mixture_stats(x)):
        assert abs(frac - MIX_W[k]) < 4.5 * math.sqrt(MIX_W[k] * (1 - MIX_W[k]) / n)
        np.testing.assert_allclose(mean, MIX_MU[k], atol=0.025)
        _, lone_cov = linear_gaussian_law(d, MIX_MU[k], MIX_COV[k], sampler, kw.get("steps"), kw.get("eta", 0.0))
        ratio = np.diag(cov) / np.diag(lone_cov)
        assert np.all(ratio > 0.85) and np.all(ratio < (1.1 if sampler == "ddpm" else 1.25)), ratio
    if variance == "fixed_large":  # DDPM with beta_t as variance: the data law itself within 5 SE
        assert _moment_errors(x, true_mean, true_cov)[1].max() < 5.0, (np.cov(x.T), true_cov)


def test_ddim_with_all_steps_and_eta_1_is_ddpm_with_fixed_small(device):
    # The same generator feeds the same draws in the same order, so the two samplers coincide.
    d = GaussianDiffusion("cosine", T=40, dtype="float64")
    oracle = MixtureOracle(d, [1.0], [GAUSS_MU], [GAUSS_COV])
    a = d.sample(oracle, (50, 2, 1, 1), mg.Generator(3, device), clip_denoised=False)
    b = d.ddim_sample(oracle, (50, 2, 1, 1), mg.Generator(3, device), steps=40, eta=1.0, clip_denoised=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    c = d.ddim_sample(oracle, (50, 2, 1, 1), mg.Generator(3, device), steps=40, eta=0.0, clip_denoised=False)
    assert np.abs(a - c).max() > 0.05


def test_ddim_timesteps_are_evenly_spaced():
    d = GaussianDiffusion("linear", T=1000)
    np.testing.assert_array_equal(d.ddim_timesteps(1), [999])
    np.testing.assert_array_equal(d.ddim_timesteps(4), [999, 666, 333, 0])
    for steps in (10, 20, 50, 100, 999, 1000):
        seq = d.ddim_timesteps(steps)
        assert len(np.unique(seq)) == steps and seq[0] == 999 and seq[-1] == 0 and np.all(np.diff(seq) < 0)


def test_classifier_free_guidance_combines_one_batched_call(device):
    class Constant:
        num_classes = 3
        calls = 0

        def __call__(self, x, t, y=None):
            self.calls += 1
            lab = host(y).astype(np.float32).reshape(-1, 1, 1, 1)  # output = label, so null -> 3
            return mg.tensor(np.broadcast_to(lab, x.shape).copy(), device=x.device)

    d = GaussianDiffusion("linear", T=10)
    model = Constant()
    x = mg.tensor(np.zeros((2, 1, 2, 2), np.float32), device=device)
    t, y = timesteps([4, 7], device), timesteps([0, 2], device)
    for w in (0.0, 1.0, 2.5):
        model.calls = 0
        eps = host(d.model_predictions(model, x, t, y=y, guidance_scale=w).eps)
        # eps = eps(null) + w (eps(y) - eps(null)) with eps(label) = label and null = 3
        np.testing.assert_allclose(eps[:, 0, 0, 0], 3 + w * (np.array([0, 2]) - 3), rtol=1e-6)
        assert model.calls == 1


def test_guidance_scale_moves_samples_between_conditional_and_marginal_law(device):
    # Conditional oracle: label k -> component k, label 2 (null) -> the whole mixture.  Scale 1 samples
    # component 0, scale 0 the mixture (DDIM-20 favours the heavier mode by ~0.02, hence 0.06), and
    # scale 3 sharpens towards component 0.
    n = 2000
    d = GaussianDiffusion("linear", T=200)
    oracle = MixtureOracle(d, MIX_W, MIX_MU, MIX_COV, conditional=True)
    y = np.zeros(n, dtype=np.int64)

    def draw(w):
        x = d.ddim_sample(oracle, (n, 1, 2, 2), mg.Generator(5, device), steps=20, y=y, guidance_scale=w,
                          clip_denoised=False)
        return x.reshape(n, 4).astype(np.float64)

    cond = draw(1.0)
    np.testing.assert_allclose(cond.mean(0), MIX_MU[0], atol=0.02)
    assert _mixture_stats(cond)[0][0] > 0.999
    assert abs(_mixture_stats(draw(0.0))[1][0] - MIX_W[1]) < 0.06
    guided = draw(3.0)
    assert _mixture_stats(guided)[0][0] > 0.999
    assert np.all(guided.var(0) < cond.var(0))


def test_trajectory_recording_and_clipping(device):
    d = GaussianDiffusion("linear", T=30)

    def far_away(x, t, y=None):  # an x0-free eps prediction that points far outside [-1, 1]
        return mg.tensor(np.full(x.shape, -3.0, np.float32), device=x.device)

    shape = (5, 1, 3, 3)
    x, traj = d.sample(far_away, shape, mg.Generator(0, device), record=10)
    assert [t for t, _ in traj] == [29, 19, 9, -1]
    first = backend.to_numpy(mg.Generator(0, device).normal(shape, dtype=np.float32))
    np.testing.assert_array_equal(traj[0][1], first)            # the start x_T ~ N(0, I)
    np.testing.assert_array_equal(traj[-1][1], x)
    assert all(a.shape == shape and a.dtype == np.float32 for _, a in traj)
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.max() == 1.0
    loose = d.sample(far_away, shape, mg.Generator(0, device), clip_denoised=False)
    assert loose.max() > 2.0
    x, traj = d.ddim_sample(far_away, shape, mg.Generator(0, device), steps=7, record=3)
    assert [t for t, _ in traj] == [29, 14, 0, -1] and x.max() == 1.0


# ----------------------------------------------------------------------------
# the bound in bits/dim
# ----------------------------------------------------------------------------

LEVELS = np.arange(256) / 255 * 2 - 1      # the 8-bit values scaled to [-1, 1]


class DiscreteOracle:
    """The optimal eps-denoiser when every pixel is drawn independently from ``values`` with ``probs``."""

    def __init__(self, diffusion, values, probs):
        self.diffusion, self.values, self.log_probs = diffusion, np.asarray(values), np.log(probs)

    def __call__(self, x_t, t, y=None):
        s, tt = self.diffusion.schedule, host(t)
        x = host(x_t).astype(np.float64).reshape(len(x_t), -1, 1)                 # (B, D, 1)
        a = s.sqrt_alphas_cumprod[tt].reshape(-1, 1, 1)
        sd = s.sqrt_one_minus_alphas_cumprod[tt].reshape(-1, 1, 1)
        logw = self.log_probs - 0.5 * ((x - a * self.values) / sd) ** 2             # (B, D, V)
        w = np.exp(logw - logw.max(-1, keepdims=True))
        x0 = (w * self.values).sum(-1, keepdims=True) / w.sum(-1, keepdims=True)
        eps = (x - a * x0) / sd
        return mg.tensor(eps.reshape(x_t.shape).astype(x_t.dtype), device=x_t.device)


def zero_noise(x, t, y=None):
    return x * 0.0


@given(mean=st.floats(-1.5, 1.5), log_scale=st.floats(-7.0, 1.0))
def test_discretized_decoder_is_a_distribution_over_256_values(mean, log_scale):
    x = tensor(LEVELS)
    logp = host(discretized_gaussian_log_likelihood(x, tensor([mean]), tensor([log_scale])))
    np.testing.assert_allclose(np.exp(logp).sum(), 1.0, atol=1e-9)
    # and each bin holds the Gaussian's mass over [x - 1/255, x + 1/255], the edges reaching to +-inf
    scale = math.exp(log_scale)
    upper = norm.cdf((LEVELS + 1 / 255 - mean) / scale)
    lower = norm.cdf((LEVELS - 1 / 255 - mean) / scale)
    upper[-1], lower[0] = 1.0, 0.0
    mass = upper - lower
    big = mass > 1e-6
    np.testing.assert_allclose(np.exp(logp[big]), mass[big], rtol=1e-6)


def test_discretized_decoder_takes_arrays(device):
    x = mg.tensor(LEVELS[[0, 100, 255]].astype(np.float32), device=device)
    logp = discretized_gaussian_log_likelihood(x.data, x.data, np.zeros(3, np.float32) - 3.0)
    assert not isinstance(logp, mg.Tensor) and logp.dtype == np.float32
    # a centred bin of half-width 1/255 at std e^-3: 2 Phi(e^3 / 255) - 1; the edge bins add the outer tail
    centre = 2 * norm.cdf(math.exp(3) / 255) - 1
    np.testing.assert_allclose(np.exp(backend.to_numpy(logp)), [norm.cdf(math.exp(3) / 255), centre,
                                                                norm.cdf(math.exp(3) / 255)], rtol=1e-4)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_bound_on_uniform_bytes_is_at_least_8_bits(device, variance):
    # Pixels uniform over the 256 values have entropy 8 bits, and E_data[-log2 P(x)] >= 8 for any
    # model P (cross-entropy >= entropy); the bound lies above -log2 P(x).  The check is on the mean
    # over 128 images of 16 pixels, allowing 4 standard errors of that mean (the bound is a one-draw
    # Monte Carlo estimate per t).  The optimal denoiser comes close; a bad one is far above.
    d = GaussianDiffusion("linear", T=100, variance=variance)
    rng = np.random.default_rng(0)
    x0 = mg.tensor(LEVELS[rng.integers(0, 256, (128, 1, 4, 4))].astype(np.float32), device=device)
    means = {}
    for name, model in (("oracle", DiscreteOracle(d, LEVELS, np.full(256, 1 / 256))), ("zero", zero_noise)):
        r = d.bpd(model, x0, generator=mg.Generator(0, device))
        total = r["total"]
        assert total.shape == (128,) and r["vb"].shape == (128, 100) and np.all(np.isfinite(total))
        np.testing.assert_allclose(total, r["prior"] + r["vb"].sum(1))
        assert total.mean() >= 8.0 - 4 * total.std() / math.sqrt(len(total)), (name, total.mean())
        means[name] = total.mean()
    assert means["oracle"] < (8.2 if variance == "fixed_large" else 10.0) and means["zero"] > means["oracle"] + 5


def test_bound_of_the_oracle_beats_a_bad_model_on_a_known_law(device):
    # Pixels i.i.d. over three 8-bit values: entropy H = 1.485 bits.  The oracle's bound is above H
    # (a valid bound) and far below that of a model predicting zero noise.
    values, probs = LEVELS[[40, 128, 200]], np.array([0.2, 0.5, 0.3])
    entropy = -(probs * np.log2(probs)).sum()
    d = GaussianDiffusion("linear", T=100)
    rng = np.random.default_rng(1)
    x0 = mg.tensor(values[rng.choice(3, size=(128, 1, 4, 4), p=probs)].astype(np.float32), device=device)
    oracle = d.bpd(DiscreteOracle(d, values, probs), x0, generator=mg.Generator(0, device))["total"]
    zero = d.bpd(zero_noise, x0, generator=mg.Generator(0, device))["total"]
    assert oracle.mean() >= entropy - 4 * oracle.std() / math.sqrt(len(oracle))
    assert oracle.mean() + 5 < zero.mean()


def test_prior_term_is_tiny_for_the_linear_schedule(device):
    d = GaussianDiffusion("linear", T=1000)
    x0 = mg.tensor(np.array([[[[-1.0, 1.0]]], [[[LEVELS[100], 1.0]]]], np.float32), device=device)
    r = d.bpd(zero_noise, x0, generator=mg.Generator(0, device))
    ab = d.schedule.alphas_cumprod[-1]
    x = host(x0).reshape(2, 2).astype(np.float64)
    # KL(N(sqrt(ab) x, 1 - ab) || N(0, 1)) = (ab x^2 - ab - log(1 - ab)) / 2 per pixel
    expected = (0.5 * (ab * x ** 2 - ab - np.log1p(-ab))).mean(1) / math.log(2)
    np.testing.assert_allclose(r["prior"], expected, rtol=1e-6)
    assert np.all(r["prior"] > 0) and np.all(r["prior"] < 5e-5)


# ----------------------------------------------------------------------------
# §5.4: the training losses
# ----------------------------------------------------------------------------

def smooth_model(x, t, y=None):
    """A fixed, non-trivial 'denoiser' for loss checks."""
    scale = mg.tensor((1.0 + host(t) / 7.0).reshape(-1, 1, 1, 1).astype(x.dtype), device=x.device)
    return F.tanh(x * 0.7) * scale - 0.1


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_simple_loss_is_the_hand_computed_mse(device, objective):
    T = 50
    d = GaussianDiffusion("cosine", T=T, objective=objective, dtype="float64")
    rng = np.random.default_rng(3)
    x0, eps = rng.uniform(-1, 1, (4, 1, 2, 3)), rng.standard_normal((4, 1, 2, 3))
    t = np.array([0, 10, 31, 49])
    loss = d.p_losses(smooth_model, tensor(x0, device), t=timesteps(t, device), noise=tensor(eps, device))
    ab = np.cumprod(1 - d.schedule.betas)[t].reshape(-1, 1, 1, 1)     # alpha_bar, from the betas directly
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    out = host(smooth_model(tensor(xt), timesteps(t)))
    target = {"eps": eps, "x0": x0, "v": np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0}[objective]
    assert loss.shape == ()
    np.testing.assert_allclose(loss.item(), np.mean((out - target) ** 2), rtol=1e-10)


@pytest.mark.parametrize("objective,variance", [("eps", "fixed_small"), ("x0", "fixed_large"), ("v", "fixed_small")])
def test_vlb_loss_equals_the_bpd_terms(device, objective, variance):
    # bpd draws the noise of step t from its generator in the order t = 0 .. T-1: replay it and feed
    # each image the noise bpd used at that image's t; the "vlb" loss is then the mean of the bpd
    # terms vb[b, t_b], in nats instead of bits.
    T, shape = 8, (3, 1, 2, 2)
    d = GaussianDiffusion("linear", T=T, objective=objective, loss_type="vlb", variance=variance, dtype="float64")
    rng = np.random.default_rng(4)
    x0 = tensor(LEVELS[rng.integers(0, 256, shape)], device)
    vb = d.bpd(smooth_model, x0, generator=mg.Generator(7, device))["vb"]
    replay = mg.Generator(7, device)
    noises = [backend.to_numpy(replay.normal(shape, dtype=np.float64)) for _ in range(T)]
    for t in ([0, 0, 0], [1, 4, 7], [0, 5, 3]):
        noise = np.stack([noises[tb][b] for b, tb in enumerate(t)])
        loss = d.p_losses(smooth_model, x0, t=timesteps(t, device), noise=tensor(noise, device))
        np.testing.assert_allclose(loss.item(), vb[np.arange(3), t].mean() * math.log(2), rtol=1e-9)
        assert loss.item() > 0


def test_vlb_loss_is_the_weighted_eps_error_and_the_decoder_nll(device):
    # Independent of bpd: for t > 0 with fixed_small the term is w'_t ||eps - eps_hat||^2 (§5.3) per
    # dimension; at t = 0 it is -log of the Gaussian mass of x_0's bin around x0_hat (std sqrt(beta~_1)).
    T, shape = 30, (2, 1, 2, 2)
    d = GaussianDiffusion("cosine", T=T, loss_type="vlb", dtype="float64")
    s = d.schedule
    rng = np.random.default_rng(6)
    x0, eps = LEVELS[rng.integers(1, 255, shape)], rng.standard_normal(shape)
    t = np.array([4, 21])
    loss = d.p_losses(smooth_model, tensor(x0, device), t=timesteps(t, device), noise=tensor(eps, device))
    ab = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    eps_hat = host(smooth_model(tensor(xt), timesteps(t)))
    w = s.betas[t] ** 2 / (2 * s.posterior_variance[t] * s.alphas[t] * (1 - s.alphas_cumprod[t]))
    np.testing.assert_allclose(loss.item(), np.mean(w * ((eps - eps_hat) ** 2).mean((1, 2, 3))), rtol=1e-8)
    t0 = np.zeros(2, np.int64)
    loss0 = d.p_losses(smooth_model, tensor(x0, device), t=timesteps(t0, device), noise=tensor(eps, device))
    xt = math.sqrt(s.alphas_cumprod[0]) * x0 + math.sqrt(1 - s.alphas_cumprod[0]) * eps
    x0_hat = (xt - math.sqrt(1 - s.alphas_cumprod[0]) * host(smooth_model(tensor(xt), timesteps(t0)))) \
        / math.sqrt(s.alphas_cumprod[0])
    std = math.sqrt(s.posterior_variance[1])
    mass = norm.cdf((x0 + 1 / 255 - x0_hat) / std) - norm.cdf((x0 - 1 / 255 - x0_hat) / std)
    np.testing.assert_allclose(loss0.item(), -np.log(mass).mean(), rtol=1e-8)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_p_mean_variance_is_the_posterior_at_the_clipped_prediction(device, variance):
    d = GaussianDiffusion("linear", T=50, objective="x0", variance=variance, dtype="float64")
    s = d.schedule
    xt = tensor(np.random.default_rng(7).standard_normal((3, 1, 2, 2)) * 2, device)
    t = timesteps([0, 1, 37], device)
    out = d.p_mean_variance(smooth_model, xt, t)
    x0_hat = np.clip(host(smooth_model(xt, t)), -1, 1)           # objective x0: the output is x0_hat
    mean, _, _ = d.q_posterior_mean_variance(tensor(x0_hat, device), xt, t)
    np.testing.assert_allclose(host(out["mean"]), host(mean), rtol=1e-12)
    np.testing.assert_allclose(host(out["pred_x0"]), x0_hat, rtol=1e-12)
    # fixed_small: beta~_t; fixed_large: beta_t; both with beta~_1 at the first step (Ho et al. 2020)
    expected = s.posterior_variance[[1, 1, 37]] if variance == "fixed_small" else \
        np.array([s.posterior_variance[1], s.betas[1], s.betas[37]])
    np.testing.assert_allclose(host(out["variance"]).ravel(), expected, rtol=1e-12)
    np.testing.assert_allclose(host(out["log_variance"]).ravel(), np.log(expected), rtol=1e-12)


class TinyDenoiser(nn.Module):
    """x (B, 1, 2, 2), t -> a Linear map of [x, t / T] back to x's shape."""

    def __init__(self, T, generator):
        super().__init__()
        self.T = T
        self.lin = nn.Linear(5, 4, generator=generator)

    def forward(self, x, t, y=None):
        tcol = mg.tensor((host(t) / self.T).reshape(-1, 1).astype(x.dtype), device=x.device)
        return self.lin(F.concat([x.reshape(len(x), 4), tcol], dim=1)).reshape(x.shape)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("loss_type", ["simple", "vlb"])
def test_gradients_reach_the_denoiser(device, objective, loss_type):
    d = GaussianDiffusion("linear", T=20, objective=objective, loss_type=loss_type)
    net = TinyDenoiser(20, mg.Generator(0)).to(device)
    x0 = mg.tensor(LEVELS[np.random.default_rng(5).integers(0, 256, (16, 1, 2, 2))].astype(np.float32),
                   device=device)
    loss = d.p_losses(net, x0, generator=mg.Generator(1, device))
    assert np.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    for name, p in net.named_parameters():
        g = host(p.grad)
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-6, name


def test_default_t_and_noise_come_from_the_generator(device):
    d = GaussianDiffusion("linear", T=100)
    x0 = mg.tensor(np.zeros((8, 1, 2, 2), np.float32), device=device)
    a = d.p_losses(smooth_model, x0, generator=mg.Generator(1, device)).item()
    b = d.p_losses(smooth_model, x0, generator=mg.Generator(1, device)).item()
    c = d.p_losses(smooth_model, x0, generator=mg.Generator(2, device)).item()
    assert a == b and a != c


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------

def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'; choose one of linear, cosine, sigmoid"):
        make_beta_schedule("quadratic")
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        make_beta_schedule("linear", 0)
    with pytest.raises(ValueError, match=r"every beta must lie in \(0, 1\)"):
        DiffusionSchedule(np.array([0.1, 1.0]))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        DiffusionSchedule(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="unknown objective 'score'; choose one of eps, x0, v"):
        GaussianDiffusion(objective="score")
    with pytest.raises(ValueError, match="unknown loss_type 'l1'"):
        GaussianDiffusion(loss_type="l1")
    with pytest.raises(ValueError, match="unknown variance 'learned'; choose one of fixed_small, fixed_large"):
        GaussianDiffusion(variance="learned")
    with pytest.raises(TypeError, match="schedule must be one of"):
        GaussianDiffusion(schedule=np.ones(3) * 0.1)
    with pytest.raises(TypeError, match="floating dtype"):
        GaussianDiffusion(dtype="int32")


def test_bad_inputs_get_clear_errors():
    # every public entry point checks its arguments once, at the door; q_sample and the other
    # formulas trust what they are given
    d = GaussianDiffusion("linear", T=10)
    x0 = mg.tensor(np.zeros((2, 1, 2, 2), np.float32))
    noise = mg.tensor(np.ones((2, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"p_losses: timesteps must lie in \[0, 10\), got \[3, 10\]"):
        d.p_losses(smooth_model, x0, t=timesteps([3, 10]), noise=noise)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 10\), got \[-1, 0\]"):
        d.p_losses(smooth_model, x0, t=timesteps([-1, 0]), noise=noise)
    with pytest.raises(ValueError, match="t must be a 1-D integer array"):
        d.p_losses(smooth_model, x0, t=timesteps([[1, 2]]), noise=noise)
    with pytest.raises(ValueError, match="t must be a 1-D integer array"):
        d.p_losses(smooth_model, x0, t=np.array([1.0, 2.0]), noise=noise)
    with pytest.raises(ValueError, match="3 timesteps for a batch of 2 images"):
        d.p_losses(smooth_model, x0, t=timesteps([1, 2, 3]), noise=noise)
    with pytest.raises(ValueError, match=r"noise has shape \(2, 1, 2, 3\) but the images have shape \(2, 1, 2, 2\)"):
        d.p_losses(smooth_model, x0, t=timesteps([1, 2]), noise=mg.tensor(np.ones((2, 1, 2, 3), np.float32)))
    with pytest.raises(TypeError, match="x0 has dtype float64 but the diffusion runs in float32"):
        d.p_losses(smooth_model, x0.double(), t=timesteps([1, 2]), noise=noise)
    with pytest.raises(ValueError, match="at least 2 dims"):
        d.p_losses(smooth_model, mg.tensor(np.zeros(2, np.float32)), t=timesteps([1, 2]))
    with pytest.raises(ValueError, match=r"model_predictions: timesteps must lie in \[0, 10\)"):
        d.model_predictions(smooth_model, x0, timesteps([0, 10]))
    with pytest.raises(ValueError, match=r"x_t has shape \(1, 1, 2, 2\) but the images have shape"):
        d.q_posterior_mean_variance(x0, x0[:1], timesteps([1, 2]))
    with pytest.raises(ValueError, match=r"labels y must be integers of shape \(2,\)"):
        d.p_losses(smooth_model, x0, y=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"denoiser must return a Tensor of the input's shape \(2, 1, 2, 2\), "
                                         r"got \(2, 4\)"):
        d.p_losses(lambda x, t, y=None: x.reshape(2, 4), x0)
    with pytest.raises(ValueError, match="guidance_scale=3.0 needs labels y"):
        d.model_predictions(smooth_model, x0, timesteps([1, 2]), guidance_scale=3.0)
    with pytest.raises(ValueError, match="conditional denoiser with an integer `num_classes`"):
        d.model_predictions(smooth_model, x0, timesteps([1, 2]), y=np.array([0, 1]), guidance_scale=3.0)
    with pytest.raises(ValueError, match=r"bpd: x0 must hold 8-bit images scaled to \[-1, 1\]"):
        d.bpd(zero_noise, x0 + 2.0)
    with pytest.raises(ValueError, match="bpd: x0 must hold 8-bit images, k/255"):
        d.bpd(zero_noise, x0 + 0.001)
    g = mg.Generator(0)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 10\], got 11"):
        d.ddim_sample(zero_noise, (2, 1, 2, 2), g, steps=11)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        d.ddim_sample(zero_noise, (2, 1, 2, 2), g, eta=-0.5)
    with pytest.raises(ValueError, match="record must be None or an integer >= 1"):
        d.sample(zero_noise, (2, 1, 2, 2), g, record=0)
    with pytest.raises(TypeError, match="generator must be a minigen Generator"):
        d.sample(zero_noise, (2, 1, 2, 2), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"shape must be \(B, ...\) with at least 2 positive dims"):
        d.sample(zero_noise, (2,), g)
    with pytest.raises(ValueError, match=r"extract: timesteps must lie in \[0, 3\)"):
        extract(np.ones(3), np.array([3]), (1, 2))
    with pytest.raises(ValueError, match=r"extract: 2 timesteps for a batch of shape \(3, 2\)"):
        extract(np.ones(3), np.array([0, 1]), (3, 2))

"""PCA and probabilistic PCA (minigen/models/pca.py, notes §1).

The claims checked: PCA's variances are the covariance eigenvalues and its
reconstruction error is the sum of the discarded ones; PPCA's closed form is the
ML solution of Tipping & Bishop (1999), EM climbs monotonically to the same
likelihood, the Woodbury log-density equals scipy's multivariate normal, and as
σ² → 0 PPCA's W spans the PCA subspace.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.linalg import subspace_angles
from scipy.stats import multivariate_normal

import minigen as mg
from minigen import backend
from minigen.models import PCA, PPCA
from strategies import seeds

# Closed-form float64 comparisons use rtol=1e-8: they go through BLAS/LAPACK, whose summation
# order differs between builds (a 1e-10 tolerance failed by 1.9e-10 on one machine).


def correlated_data(seed, n=200, d=6, device="cpu"):
    """n samples of a d-dimensional Gaussian with a spread-out spectrum and a nonzero mean."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) * np.linspace(3.0, 0.3, d)
    X = rng.normal(size=(n, d)) @ A.T + rng.normal(size=d) * 5
    return backend.to_device(X, device)


def low_rank_plus_noise(seed, n=300, d=8, q=3, noise=1.0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, q)) * np.array([5.0, 4.0, 3.0])[:q]
    return rng.normal(size=(n, q)) @ W.T + noise * rng.normal(size=(n, d)) + 1.0


def np_(a):
    return backend.to_numpy(a)


# ----------------------------------------------------------------------------
# PCA
# ----------------------------------------------------------------------------

def test_pca_matches_covariance_eigendecomposition(device):
    X = correlated_data(0, device=device)
    pca = PCA(4).fit(X)
    Xh = np_(X)
    eigvals, eigvecs = np.linalg.eigh(np.cov(Xh, rowvar=False))
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    np.testing.assert_allclose(np_(pca.explained_variance_), eigvals[:4], rtol=1e-8)
    np.testing.assert_allclose(np_(pca.explained_variance_ratio_), eigvals[:4] / eigvals.sum(), rtol=1e-8)
    np.testing.assert_allclose(pca.noise_variance_, eigvals[4:].mean(), rtol=1e-8)
    np.testing.assert_allclose(np_(pca.mean_), Xh.mean(0), rtol=1e-8)
    V = np_(pca.components_)
    np.testing.assert_allclose(V @ V.T, np.eye(4), atol=1e-12)
    # each component is an eigenvector up to sign
    np.testing.assert_allclose(np.abs(np.sum(V * eigvecs[:, :4].T, axis=1)), 1.0, atol=1e-10)


@settings(max_examples=15)
@given(seed=seeds(), n=st.integers(5, 40), d=st.integers(2, 8), data=st.data())
def test_pca_reconstruction_error_is_sum_of_discarded_eigenvalues(seed, n, d, data):
    q = data.draw(st.integers(1, min(n, d)))
    X = np.random.default_rng(seed).normal(size=(n, d)) * np.linspace(2.0, 0.5, d)
    pca = PCA(q).fit(X)
    Xhat = pca.inverse_transform(pca.transform(X))
    error = ((X - Xhat) ** 2).sum() / (n - 1)
    discarded = np.linalg.eigvalsh(np.cov(X, rowvar=False))[::-1][q:].sum()
    np.testing.assert_allclose(error, discarded, rtol=1e-8, atol=1e-10)


def test_pca_full_rank_round_trip_and_whitening(device):
    X = correlated_data(1, device=device)
    pca = PCA(None, whiten=True).fit(X)
    Z = pca.transform(X)
    np.testing.assert_allclose(np.cov(np_(Z), rowvar=False), np.eye(6), atol=1e-10)
    np.testing.assert_allclose(np_(pca.inverse_transform(Z)), np_(X), atol=1e-10)
    np.testing.assert_allclose(np_(PCA(6).fit_transform(X)), np_(PCA(6).fit(X).transform(X)))


def test_pca_variance_fraction_keeps_fewest_components():
    X = correlated_data(2)
    ratios = np.cumsum(np_(PCA().fit(X).explained_variance_ratio_))
    for fraction in (0.3, 0.8, 0.95, 0.999):
        pca = PCA(fraction).fit(X)
        q = pca.n_components_
        assert ratios[q - 1] >= fraction
        assert q == 1 or ratios[q - 2] < fraction


def test_pca_score_samples_is_the_ppca_density(device):
    X = correlated_data(3, device=device)
    pca = PCA(3).fit(X)
    V, lam, s2 = np_(pca.components_), np_(pca.explained_variance_), pca.noise_variance_
    C = V.T @ np.diag(lam - s2) @ V + s2 * np.eye(6)
    expected = multivariate_normal(np_(pca.mean_), C).logpdf(np_(X))
    np.testing.assert_allclose(np_(pca.score_samples(X)), expected, rtol=1e-8)
    np.testing.assert_allclose(pca.score(X), expected.mean(), rtol=1e-8)
    # keeping every direction: the density is the sample-covariance Gaussian
    full = PCA(None).fit(X)
    expected = multivariate_normal(np_(X).mean(0), np.cov(np_(X), rowvar=False)).logpdf(np_(X))
    np.testing.assert_allclose(np_(full.score_samples(X)), expected, rtol=1e-8)


# ----------------------------------------------------------------------------
# PPCA
# ----------------------------------------------------------------------------

def test_ppca_closed_form_is_tipping_bishop_ml(device):
    X = correlated_data(4, device=device)
    q = 2
    ppca = PPCA(q).fit(X)
    Xh = np_(X)
    S = np.cov(Xh, rowvar=False, bias=True)                       # ML covariance, 1/n
    lam, U = np.linalg.eigh(S)
    lam, U = lam[::-1], U[:, ::-1]
    sigma2 = lam[q:].mean()
    np.testing.assert_allclose(ppca.noise_variance_, sigma2, rtol=1e-8)
    W = np_(ppca.W_)
    # W = U_q (Λ_q - σ²I)^{1/2}: WᵀW is diagonal with entries λ_j - σ², and W spans U_q
    np.testing.assert_allclose(W.T @ W, np.diag(lam[:q] - sigma2), rtol=1e-8, atol=1e-8)
    assert np.max(subspace_angles(W, U[:, :q])) < 1e-8
    # the ML log-likelihood (Tipping & Bishop eq. 4 at the optimum)
    d = X.shape[1]
    ll = -0.5 * (d * np.log(2 * np.pi) + np.log(lam[:q]).sum() + (d - q) * np.log(sigma2) + d)
    np.testing.assert_allclose(ppca.score(X), ll, rtol=1e-8)


def test_ppca_score_samples_matches_scipy(device):
    X = correlated_data(5, device=device)
    for method in ("closed_form", "em"):
        ppca = PPCA(3, method=method, generator=mg.Generator(0, device)).fit(X)
        W, s2 = np_(ppca.W_), ppca.noise_variance_
        mvn = multivariate_normal(np_(ppca.mean_), W @ W.T + s2 * np.eye(6))
        Xnew = correlated_data(6, n=50, device=device)
        np.testing.assert_allclose(np_(ppca.score_samples(Xnew)), mvn.logpdf(np_(Xnew)), rtol=1e-8)
        np.testing.assert_allclose(ppca.score(Xnew), mvn.logpdf(np_(Xnew)).mean(), rtol=1e-8)


@settings(max_examples=15)
@given(seed=seeds(), n=st.integers(10, 60), d=st.integers(2, 7), data=st.data())
def test_ppca_em_never_decreases_the_likelihood(seed, n, d, data):
    q = data.draw(st.integers(1, d - 1))
    X = np.random.default_rng(seed).normal(size=(n, d)) * np.linspace(3.0, 0.5, d)
    ppca = PPCA(q, method="em", max_iter=40, tol=0.0, generator=seed).fit(X)
    lls = np.array(ppca.log_likelihoods_)
    assert len(lls) == ppca.n_iter_ + 1 == 41
    assert np.all(np.diff(lls) >= -1e-8 * np.abs(lls[1:]))
    # the recorded value is the likelihood of the final parameters
    np.testing.assert_allclose(lls[-1], ppca.score(X), rtol=1e-8)


def test_ppca_em_reaches_the_closed_form_likelihood(device):
    X = backend.to_device(low_rank_plus_noise(7), device)
    closed = PPCA(3).fit(X)
    em = PPCA(3, method="em", tol=1e-10, max_iter=2000, generator=mg.Generator(1, device)).fit(X)
    assert em.converged_
    assert em.log_likelihoods_[0] < closed.score(X) - 1.0            # it had a long way to climb
    np.testing.assert_allclose(em.score(X), closed.score(X), rtol=1e-8)
    np.testing.assert_allclose(em.noise_variance_, closed.noise_variance_, rtol=1e-5)
    # same W up to a rotation: equal WWᵀ (the likelihood is flat at the top, so W converges slower)
    WWt, WWt_closed = np_(em.W_ @ em.W_.T), np_(closed.W_ @ closed.W_.T)
    assert np.linalg.norm(WWt - WWt_closed) < 1e-3 * np.linalg.norm(WWt_closed)


def test_ppca_small_noise_recovers_pca_subspace():
    X = low_rank_plus_noise(8, noise=1e-4)
    pca = PCA(3).fit(X)
    em = PPCA(3, method="em", tol=1e-9, max_iter=300, generator=3).fit(X)
    assert em.noise_variance_ < 1e-7
    assert np.max(subspace_angles(em.W_, pca.components_.T)) < 1e-8
    # the random starting W (no EM step) is far from it, so the angle check can fail
    start = PPCA(3, method="em", max_iter=0, generator=3).fit(X)
    assert np.max(subspace_angles(start.W_, pca.components_.T)) > 0.1


def test_ppca_posterior_and_transform(device):
    X = correlated_data(9, device=device)
    ppca = PPCA(2).fit(X)
    W, s2, mu = np_(ppca.W_), ppca.noise_variance_, np_(ppca.mean_)
    # Bayes' rule for the linear-Gaussian model: cov = (I + WᵀW/σ²)⁻¹, mean = cov Wᵀ(x - μ)/σ²
    cov = np.linalg.inv(np.eye(2) + W.T @ W / s2)
    mean = (np_(X) - mu) @ W @ cov / s2
    post_mean, post_cov = ppca.posterior(X)
    np.testing.assert_allclose(np_(post_cov), cov, rtol=1e-8)
    np.testing.assert_allclose(np_(post_mean), mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np_(ppca.transform(X)), mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np_(ppca.inverse_transform(post_mean)), mean @ W.T + mu, rtol=1e-8)


def test_ppca_sample_has_the_model_covariance(device):
    ppca = PPCA(2).fit(correlated_data(10, d=4, device=device))
    x = ppca.sample(40000, generator=mg.Generator(0, device))
    assert x.shape == (40000, 4) and backend.device_of(x) == device
    W, s2 = np_(ppca.W_), ppca.noise_variance_
    C = W @ W.T + s2 * np.eye(4)
    x = np_(x)
    np.testing.assert_allclose(x.mean(0), np_(ppca.mean_), atol=0.05 * np.sqrt(C.diagonal().max()))
    assert np.linalg.norm(np.cov(x, rowvar=False) - C) < 0.03 * np.linalg.norm(C)
    # the same generator seed gives the same samples
    again = ppca.sample(40000, generator=mg.Generator(0, device))
    np.testing.assert_array_equal(np_(again), x)


def test_inputs_tensors_and_lists():
    X = correlated_data(11, n=30, d=4)
    from_tensor = PPCA(2).fit(mg.tensor(X, dtype=np.float64))
    from_list = PCA(2).fit(X.tolist())
    np.testing.assert_allclose(from_tensor.score(X), PPCA(2).fit(X).score(X))
    np.testing.assert_allclose(from_list.transform(mg.tensor(X, dtype=np.float64)), PCA(2).fit_transform(X))


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("model", [PCA(2), PPCA(2)])
def test_bad_input_is_refused(model):
    X = correlated_data(12, n=20, d=5)
    name = type(model).__name__
    with pytest.raises(ValueError, match="2-D"):
        model.fit(X[0])
    with pytest.raises(ValueError, match="2-D"):
        model.fit(X[None])
    bad = X.copy()
    bad[3, 1] = np.nan
    bad[4, 2] = np.inf
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        model.fit(bad)
    with pytest.raises(RuntimeError, match=f"{name} is not fitted"):
        model.transform(X)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.score_samples(X)
    model.fit(X)
    with pytest.raises(ValueError, match="X has 4 features but the model was fitted on 5"):
        model.score_samples(X[:, :4])
    with pytest.raises(ValueError, match="X has 4 features"):
        model.transform(X[:, :4])


def test_too_many_components_are_refused():
    X = correlated_data(13, n=4, d=6)
    with pytest.raises(ValueError, match=r"n_components=5 is more than min\(n_samples, n_features\)"):
        PCA(5).fit(X)
    with pytest.raises(ValueError, match="n_components=4 must be smaller than n_features=6 and n_samples=4"):
        PPCA(4).fit(X)
    with pytest.raises(ValueError, match="must be smaller than n_features"):
        PPCA(6).fit(correlated_data(13, n=40, d=6))
    with pytest.raises(ValueError, match="n_components"):
        PCA(1.5)
    with pytest.raises(ValueError, match="n_components"):
        PPCA(0)
    with pytest.raises(ValueError, match="method"):
        PPCA(2, method="svd")


def test_degenerate_densities_are_refused():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 2)) @ rng.normal(size=(2, 5))            # exactly rank 2
    with pytest.raises(ValueError, match="singular"):
        PCA(None).fit(X).score_samples(X)
    for method in ("closed_form", "em"):
        ppca = PPCA(2, method=method, generator=0)
        with pytest.raises(ValueError, match="noise variance is 0"):
            ppca.fit(np.c_[X[:, :2], np.zeros((30, 3))])
        with pytest.raises(RuntimeError, match="not fitted"):
            ppca.score(X)
    with pytest.raises(ValueError, match="at least 2 samples"):
        PCA().fit(X[:1])

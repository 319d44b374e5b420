"""Gaussian mixtures by EM (minigen/models/gmm.py, notes §1).

The claims checked: EM never lowers the likelihood; the Cholesky-based log
densities equal scipy's multivariate normal; samples have the mixture's mean
and covariance (law of total covariance); BIC finds the true component count;
MNIST-like images with constant borders fit with every covariance type.
"""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import minigen as mg
from minigen import backend
from minigen.models import GaussianMixture
from strategies import seeds

# Closed-form float64 comparisons use rtol=1e-8: they go through BLAS/LAPACK, whose summation
# order differs between builds (a 1e-10 tolerance failed by 1.9e-10 on one machine).

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def blobs(seed, n=300, centres=((0, 0), (8, 0), (0, 8)), scale=1.0, device="cpu"):
    """n points around the given centres, each blob with its own random covariance."""
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, dtype=np.float64)
    labels = rng.integers(0, len(centres), size=n)
    d = centres.shape[1]
    shapes = rng.normal(size=(len(centres), d, d)) * 0.5 + np.eye(d)
    X = centres[labels] + scale * np.einsum("nij,nj->ni", shapes[labels], rng.normal(size=(n, d)))
    return backend.to_device(X, device), labels


def full_covariances(gmm):
    """The covariances as a (K, d, d) NumPy array whatever the covariance type."""
    K, d = gmm.n_components, gmm.n_features_in_
    cov = backend.to_numpy(gmm.covariances_)
    if gmm.covariance_type == "full":
        return cov
    if gmm.covariance_type == "tied":
        return np.broadcast_to(cov, (K, d, d))
    if gmm.covariance_type == "diag":
        return np.stack([np.diag(v) for v in cov])
    return np.stack([v * np.eye(d) for v in cov])


def np_(a):
    return backend.to_numpy(a)


@settings(max_examples=20)
@given(seed=seeds(), n=st.integers(20, 80), d=st.integers(1, 4), k=st.integers(1, 4),
       covariance_type=st.sampled_from(COVARIANCE_TYPES), init=st.sampled_from(["kmeans++", "random"]))
def test_em_never_decreases_the_likelihood(seed, n, d, k, covariance_type, init):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + 4.0 * rng.integers(0, 3, size=(n, 1))
    gmm = GaussianMixture(k, covariance_type=covariance_type, tol=0.0, max_iter=25, init_params=init,
                          generator=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)            # tol=0 never converges, on purpose
        gmm.fit(X)
    bounds = np.array(gmm.lower_bounds_)
    assert len(bounds) == gmm.n_iter_ + 1 == 26
    assert np.all(np.diff(bounds) >= -1e-8 * np.abs(bounds[1:]))
    # the last recorded bound is the log-likelihood of the fitted parameters
    np.testing.assert_allclose(gmm.lower_bound_, gmm.score(X), rtol=1e-8)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_likelihood_matches_scipy(device, covariance_type):
    X, _ = blobs(0, device=device)
    gmm = GaussianMixture(3, covariance_type=covariance_type, generator=mg.Generator(0, device)).fit(X)
    Xh = np_(X)
    weights, means, covs = np_(gmm.weights_), np_(gmm.means_), full_covariances(gmm)
    per_component = np.stack([np.log(weights[k]) + multivariate_normal(means[k], covs[k]).logpdf(Xh)
                              for k in range(3)], axis=1)
    expected = logsumexp(per_component, axis=1)
    np.testing.assert_allclose(np_(gmm.score_samples(X)), expected, rtol=1e-8)
    np.testing.assert_allclose(gmm.score(X), expected.mean(), rtol=1e-8)
    # responsibilities by Bayes' rule
    resp = np.exp(per_component - expected[:, None])
    np.testing.assert_allclose(np_(gmm.predict_proba(X)), resp, rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(np_(gmm.predict(X)), resp.argmax(axis=1))
    assert abs(float(np_(gmm.weights_).sum()) - 1.0) < 1e-12


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_formulas(covariance_type):
    """One M-step by hand from the initial responsibilities equals the model's."""
    X, _ = blobs(1, n=120)
    gmm = GaussianMixture(3, covariance_type=covariance_type, max_iter=0, reg_covar=1e-3, generator=5).fit(X)
    resp = np_(gmm.predict_proba(X))
    nk = resp.sum(0)
    means = resp.T @ X / nk[:, None]
    scatter = np.stack([(resp[:, k, None] * (X - means[k])).T @ (X - means[k]) for k in range(3)])
    cov = {"full": scatter / nk[:, None, None] + 1e-3 * np.eye(2),
           "tied": scatter.sum(0) / len(X) + 1e-3 * np.eye(2),
           "diag": np.stack([np.diag(s) for s in scatter]) / nk[:, None] + 1e-3,
           "spherical": np.stack([np.trace(s) / 2 for s in scatter]) / nk + 1e-3}[covariance_type]
    gmm._m_step(X, resp)
    np.testing.assert_allclose(gmm.weights_, nk / len(X), rtol=1e-8)
    np.testing.assert_allclose(gmm.means_, means, rtol=1e-8)
    np.testing.assert_allclose(gmm.covariances_, cov, rtol=1e-8)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_samples_have_the_mixture_moments(device, covariance_type):
    X, _ = blobs(2, device=device)
    gmm = GaussianMixture(3, covariance_type=covariance_type, generator=mg.Generator(2, device)).fit(X)
    samples, labels = gmm.sample(30000, generator=mg.Generator(7, device))
    assert samples.shape == (30000, 2) and labels.shape == (30000,)
    assert backend.device_of(samples) == device
    weights, means, covs = np_(gmm.weights_), np_(gmm.means_), full_covariances(gmm)
    mean = weights @ means
    # law of total covariance: Cov x = E[Cov(x|k)] + Cov(E[x|k])
    cov = (np.einsum("k,kij->ij", weights, covs)
           + np.einsum("k,ki,kj->ij", weights, means, means) - np.outer(mean, mean))
    s, lab = np_(samples), np_(labels)
    scale = np.sqrt(np.trace(cov))
    assert np.linalg.norm(s.mean(0) - mean) < 0.03 * scale
    assert np.linalg.norm(np.cov(s, rowvar=False) - cov) < 0.03 * np.linalg.norm(cov)
    np.testing.assert_allclose(np.bincount(lab, minlength=3) / len(lab), weights, atol=0.015)
    # each label's samples come from its own component
    for k in range(3):
        assert np.linalg.norm(s[lab == k].mean(0) - means[k]) < 0.1 * scale


def test_bic_prefers_the_true_component_count():
    centres = ((0, 0), (10, 0), (0, 10), (10, 10))
    X, _ = blobs(3, n=400, centres=centres)
    for covariance_type in ("full", "diag"):
        bics = [GaussianMixture(k, covariance_type=covariance_type, n_init=2, generator=0).fit(X).bic(X)
                for k in range(1, 7)]
        assert int(np.argmin(bics)) + 1 == 4, (covariance_type, bics)


def test_bic_and_aic_count_parameters():
    X, _ = blobs(4, n=100, centres=((0, 0, 0), (6, 6, 6)))
    n, d, K = 100, 3, 2
    counts = {"full": K * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": K * d, "spherical": K}
    for covariance_type, cov_params in counts.items():
        gmm = GaussianMixture(K, covariance_type=covariance_type, generator=0).fit(X)
        p = (K - 1) + K * d + cov_params
        log_lik = float(np_(gmm.score_samples(X)).sum())
        np.testing.assert_allclose(gmm.bic(X), -2 * log_lik + p * np.log(n), rtol=1e-8)
        np.testing.assert_allclose(gmm.aic(X), -2 * log_lik + 2 * p, rtol=1e-8)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_mnist_like_images_with_constant_borders(device, covariance_type):
    """28x28 images whose 4-pixel border is 0 everywhere: zero-variance pixels need reg_covar."""
    rng = np.random.default_rng(0)
    images = np.zeros((60, 28, 28))
    images[:, 4:24, 4:24] = rng.random((60, 20, 20)) ** 3              # bright strokes on dark
    images[:30, 10:18, 4:24] += 0.5                                    # two "classes"
    X = backend.to_device(images.reshape(60, 784), device)
    gmm = GaussianMixture(2, covariance_type=covariance_type, max_iter=3, generator=mg.Generator(0, device))
    as_bytes = backend.to_device((images.reshape(60, 784) * 100).astype(np.uint8), device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)            # 3 iterations may not converge
        gmm.fit(X)
        from_bytes = GaussianMixture(2, covariance_type=covariance_type, max_iter=1, generator=0).fit(as_bytes)
    scores = np_(gmm.score_samples(X))
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(gmm.lower_bounds_) >= -1e-8 * np.abs(np.array(gmm.lower_bounds_[1:])))
    assert np.isfinite(from_bytes.score(as_bytes))                     # uint8 pixels are accepted too


def test_zero_reg_covar_on_constant_pixels_fails_clearly():
    X = np.c_[np.random.default_rng(0).normal(size=(50, 2)), np.zeros(50)]
    gmm = GaussianMixture(2, covariance_type="full", reg_covar=0.0, generator=0)
    with pytest.raises(ValueError, match="not positive definite.*increase reg_covar"):
        gmm.fit(X)
    with pytest.raises(RuntimeError, match="not fitted"):          # the failed fit left nothing behind
        gmm.score(X)
    with pytest.raises(ValueError, match="variance is 0.*reg_covar"):
        GaussianMixture(2, covariance_type="diag", reg_covar=0.0, generator=0).fit(X)


def test_n_init_keeps_the_best_run():
    X, _ = blobs(5, n=150, centres=((0, 0), (3, 0), (0, 3), (3, 3), (6, 6)))
    gen = mg.Generator(11)
    with pytest.warns(RuntimeWarning, match="did not converge in max_iter=20"):
        single = [GaussianMixture(5, init_params="random", max_iter=20, generator=gen).fit(X) for _ in range(3)]
        best = GaussianMixture(5, init_params="random", max_iter=20, n_init=3, generator=mg.Generator(11)).fit(X)
    bounds = [g.lower_bound_ for g in single]
    assert len(set(np.round(bounds, 8))) > 1                            # the runs really differ
    assert best.lower_bound_ == max(bounds)
    np.testing.assert_array_equal(best.means_, single[int(np.argmax(bounds))].means_)


def test_generator_makes_fits_reproducible():
    X, _ = blobs(6, n=100)
    a = GaussianMixture(3, generator=42).fit(X)
    b = GaussianMixture(3, generator=mg.Generator(42)).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert a.converged_ and a.n_iter_ == len(a.lower_bounds_) - 1


def test_kmeans_plus_plus_finds_separated_clusters():
    X, labels = blobs(7, n=300, scale=0.5)
    gmm = GaussianMixture(3, generator=0).fit(X)
    predicted = gmm.predict(X)
    # the clustering equals the truth up to renaming the components
    for k in range(3):
        assert len(set(predicted[labels == k])) == 1
    assert len(set(predicted)) == 3


def test_max_iter_zero_keeps_the_initialization():
    X, _ = blobs(8, n=90)
    gmm = GaussianMixture(3, max_iter=0, generator=0).fit(X)
    assert gmm.n_iter_ == 0 and not gmm.converged_ and len(gmm.lower_bounds_) == 1


def test_tensor_and_list_inputs():
    X, _ = blobs(9, n=60)
    reference = GaussianMixture(2, generator=0).fit(X)
    from_tensor = GaussianMixture(2, generator=0).fit(mg.tensor(X, dtype=np.float64))
    np.testing.assert_allclose(from_tensor.score(X.tolist()), reference.score(X))


def test_bad_input_is_refused():
    X, _ = blobs(10, n=40)
    gmm = GaussianMixture(2, generator=0)
    with pytest.raises(RuntimeError, match="GaussianMixture is not fitted yet: call fit"):
        gmm.predict(X)
    with pytest.raises(RuntimeError, match="not fitted"):
        gmm.sample(5)
    with pytest.raises(ValueError, match="2-D array"):
        gmm.fit(X[:, 0])
    with pytest.raises(ValueError, match="2-D array"):
        gmm.fit(X.reshape(4, 10, 2))
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        gmm.fit(bad)
    bad[0, 0] = -np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        gmm.fit(bad)
    with pytest.raises(ValueError, match="n_components=5 is more than n_samples=4"):
        GaussianMixture(5).fit(X[:4])
    gmm.fit(X)
    with pytest.raises(ValueError, match="X has 3 features but the model was fitted on 2"):
        gmm.score_samples(np.c_[X, X[:, :1]])
    with pytest.raises(ValueError, match="NaN"):
        gmm.predict(bad)
    for kwargs, message in [(dict(covariance_type="banded"), "covariance_type"),
                            (dict(init_params="kmeans"), "init_params"),
                            (dict(n_components=0), "n_components"),
                            (dict(reg_covar=-1.0), "reg_covar"),
                            (dict(n_init=0), "n_init")]:
        with pytest.raises(ValueError, match=message):
            GaussianMixture(**kwargs)
    with pytest.raises(TypeError, match="generator"):
        GaussianMixture(2, generator="seed").fit(X)

"""A Gaussian mixture on principal coordinates made a density on pixel space
(``PCAGaussianMixture`` in minigen/models/gmm.py, notes §1).

The claims checked:
* it is the x-space mixture  Σ_k π_k N(x | m + Uᵀμ_k, UᵀΣ_kU + σ²(I - UᵀU))  (scipy, d = 4);
* it integrates to 1 (a grid in d = 2);
* σ² is the mean discarded eigenvalue of the ML covariance Xcᵀ Xc / n;
* with K = 1, full covariance and reg_covar = 0 it IS closed-form PPCA: the same
  log-likelihood for every point, fitted or not;
* its samples have the model's mean and covariance;
* bad input and an unfitted model give clear errors.
"""
import warnings

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from minigen import backend
from minigen.models import PPCA
from minigen.models.gmm import PCAGaussianMixture

# Closed-form float64 comparisons use rtol=1e-8: they go through BLAS/LAPACK, whose summation
# order differs between builds (a 1e-10 tolerance failed by 1.9e-10 on one machine).


def np_(a):
    return backend.to_numpy(a)


def clustered(seed, n=400, d=4, device="cpu"):
    """Three elongated clusters in a 2-D plane of R^d plus a little isotropic noise."""
    rng = np.random.default_rng(seed)
    plane = np.linalg.qr(rng.normal(size=(d, 2)))[0].T                 # (2, d), orthonormal rows
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    labels = rng.integers(0, 3, size=n)
    z = centres[labels] + rng.normal(size=(n, 2)) * [1.5, 0.5]
    X = 1.0 + z @ plane + 0.3 * rng.normal(size=(n, d))
    return backend.to_device(X, device)


def x_space_mixture(model):
    """The equivalent mixture in x-space: weights (K,), means (K, d), covariances (K, d, d)."""
    gmm, U = model.gmm_, np_(model.components_)
    K, q, d = gmm.n_components, model.n_pca_components, model.n_features_in_
    cov = np_(gmm.covariances_)
    if gmm.covariance_type == "full":
        cov_z = cov
    elif gmm.covariance_type == "tied":
        cov_z = np.broadcast_to(cov, (K, q, q))
    elif gmm.covariance_type == "diag":
        cov_z = np.stack([np.diag(v) for v in cov])
    else:
        cov_z = np.stack([v * np.eye(q) for v in cov])
    noise = model.noise_variance_ * (np.eye(d) - U.T @ U)
    means = np_(model.mean_) + np_(gmm.means_) @ U
    return np_(gmm.weights_), means, np.stack([U.T @ c @ U + noise for c in cov_z])


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_equals_the_x_space_mixture(device, covariance_type):
    X = clustered(0, device=device)
    model = PCAGaussianMixture(2, 3, covariance_type=covariance_type, generator=0).fit(X)
    weights, means, covs = x_space_mixture(model)
    Xh = np_(X)[:50]
    reference = logsumexp([np.log(w) + multivariate_normal(m, c).logpdf(Xh)
                           for w, m, c in zip(weights, means, covs)], axis=0)
    np.testing.assert_allclose(np_(model.score_samples(Xh if device == "cpu" else X[:50])), reference,
                               rtol=1e-8, atol=1e-10)


def test_integrates_to_one():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(200, 2)) * [1.0, 0.3] + [2, 0], rng.normal(size=(200, 2)) * [1.0, 0.3]])
    model = PCAGaussianMixture(1, 2, generator=0).fit(X)
    assert 0.01 < model.noise_variance_ < 0.5
    h = 0.02
    g = np.arange(-6.0, 8.0, h)
    gx, gy = np.meshgrid(g, g)
    density = np.exp(model.score_samples(np.stack([gx.ravel(), gy.ravel()], axis=1)))
    assert abs(density.sum() * h * h - 1.0) < 1e-3


def test_noise_variance_is_the_mean_discarded_ml_eigenvalue(device):
    X = clustered(2, d=6, device=device)
    model = PCAGaussianMixture(2, 3, generator=0).fit(X)
    Xc = np_(X) - np_(X).mean(axis=0)
    eig = np.linalg.eigvalsh(Xc.T @ Xc / len(Xc))[::-1]             # descending
    assert model.noise_variance_ == pytest.approx(eig[2:].mean(), rel=1e-10)


def test_one_component_is_ppca(device):
    X = clustered(3, d=5, device=device)
    model = PCAGaussianMixture(2, 1, reg_covar=0.0, generator=0).fit(X)
    ppca = PPCA(2).fit(X)
    assert model.noise_variance_ == pytest.approx(ppca.noise_variance_, rel=1e-10)
    fresh = backend.to_device(np.random.default_rng(4).normal(size=(30, 5)) * 4, device)
    for points in (X, fresh):
        np.testing.assert_allclose(np_(model.score_samples(points)), np_(ppca.score_samples(points)),
                                   rtol=1e-8, atol=1e-9)


def test_a_mixture_beats_one_gaussian_on_clusters():
    X = clustered(5)
    one = PCAGaussianMixture(2, 1, generator=0).fit(X)
    three = PCAGaussianMixture(2, 3, generator=0).fit(X)
    assert three.score(X) > one.score(X) + 0.3


def test_samples_have_the_model_moments(device):
    X = clustered(6, device=device)
    model = PCAGaussianMixture(2, 3, generator=0).fit(X)
    S, labels = model.sample(40000, generator=7)
    S = np_(S)
    assert S.shape == (40000, 4) and np_(labels).shape == (40000,)
    weights, means, covs = x_space_mixture(model)
    mean = weights @ means                                           # law of total covariance below
    cov = sum(w * (c + np.outer(m - mean, m - mean)) for w, m, c in zip(weights, means, covs))
    np.testing.assert_allclose(S.mean(axis=0), mean, atol=0.06)
    np.testing.assert_allclose(np.cov(S, rowvar=False), cov, atol=0.25)
    # the noise is confined to the discarded directions: its variance there is σ²
    U = np_(model.components_)
    resid = (S - np_(model.mean_)) - (S - np_(model.mean_)) @ U.T @ U
    assert (resid ** 2).sum(axis=1).mean() / 2 == pytest.approx(model.noise_variance_, rel=0.03)


def test_bad_input_and_unfitted_model():
    X = clustered(8)
    with pytest.raises(RuntimeError, match="not fitted"):
        PCAGaussianMixture(2).score_samples(X)
    with pytest.raises(RuntimeError, match="not fitted"):
        PCAGaussianMixture(2).sample(3)
    with pytest.raises(ValueError, match="n_pca_components"):
        PCAGaussianMixture(0)
    with pytest.raises(ValueError, match="smaller than n_features"):
        PCAGaussianMixture(4).fit(X)
    with pytest.raises(ValueError, match="covariance_type"):
        PCAGaussianMixture(2, covariance_type="banana")
    with pytest.raises(ValueError, match="subspace"):
        PCAGaussianMixture(2).fit(np.random.default_rng(0).normal(size=(50, 2)) @ np.ones((2, 4)) * [1, 2, 3, 4])
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PCAGaussianMixture(2).fit(bad)
    model = PCAGaussianMixture(2, 2, generator=0).fit(X)
    with pytest.raises(ValueError, match="fitted on 4"):
        model.score_samples(X[:, :3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                  # a clean fit warns about nothing
        PCAGaussianMixture(2, 2, generator=0).fit(X)

"""Oracle tests against scikit-learn: PCA, PCA.score_samples (the PPCA density) and
GaussianMixture log-likelihoods from the same initialization.  Skipped when
scikit-learn is not installed; the core suite (test_pca.py, test_gmm.py) stands alone.
"""
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.decomposition import PCA as SkPCA  # noqa: E402
from sklearn.mixture import GaussianMixture as SkGaussianMixture  # noqa: E402

from minigen.models import PCA, GaussianMixture  # noqa: E402

# Closed-form float64 comparisons use rtol=1e-8: they go through BLAS/LAPACK, whose summation
# order differs between builds (a 1e-10 tolerance failed by 1.9e-10 on one machine).

pytestmark = pytest.mark.oracle

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def data(seed=0, n=150, d=7):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) * np.linspace(3.0, 0.2, d)
    return rng.normal(size=(n, d)) @ A.T + rng.normal(size=d)


@pytest.mark.parametrize("n_components, whiten", [(3, False), (5, True), (0.9, False), (None, False)])
def test_pca_matches_sklearn(n_components, whiten):
    X, X_new = data(0), data(1, n=40)
    ours = PCA(n_components, whiten=whiten).fit(X)
    theirs = SkPCA(n_components, whiten=whiten, svd_solver="full").fit(X)
    assert ours.n_components_ == theirs.n_components_
    # components are defined up to sign: align each row before comparing
    signs = np.sign(np.sum(ours.components_ * theirs.components_, axis=1))
    np.testing.assert_allclose(ours.components_, theirs.components_ * signs[:, None], atol=1e-10)
    np.testing.assert_allclose(ours.explained_variance_, theirs.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(ours.explained_variance_ratio_, theirs.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(ours.singular_values_, theirs.singular_values_, rtol=1e-8)
    np.testing.assert_allclose(ours.noise_variance_, theirs.noise_variance_, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(ours.transform(X_new), theirs.transform(X_new) * signs, rtol=1e-8, atol=1e-10)
    Z = theirs.transform(X_new) * signs
    np.testing.assert_allclose(ours.inverse_transform(Z), theirs.inverse_transform(Z * signs),
                               rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("n_components", [1, 3, 6])
def test_pca_score_samples_matches_sklearn(n_components):
    X, X_new = data(2), data(3, n=40)
    ours = PCA(n_components).fit(X)
    theirs = SkPCA(n_components, svd_solver="full").fit(X)
    np.testing.assert_allclose(ours.score_samples(X_new), theirs.score_samples(X_new), rtol=1e-8)
    np.testing.assert_allclose(ours.score(X_new), theirs.score(X_new), rtol=1e-8)


def _precisions(gmm):
    """The inverse covariances in scikit-learn's layout for the covariance type."""
    if gmm.covariance_type in ("diag", "spherical"):
        return 1.0 / gmm.covariances_
    return np.linalg.inv(gmm.covariances_)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_mixture_matches_sklearn_from_the_same_start(covariance_type):
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(size=(80, 3)) + offset for offset in (0.0, 2.5, 5.0)])
    iterations = 15
    # our initialization (max_iter=0 keeps it), handed to scikit-learn as its starting point
    start = GaussianMixture(3, covariance_type=covariance_type, max_iter=0, generator=9).fit(X)
    ours = GaussianMixture(3, covariance_type=covariance_type, max_iter=iterations, tol=0.0, generator=9)
    theirs = SkGaussianMixture(3, covariance_type=covariance_type, max_iter=iterations, tol=0.0,
                               weights_init=start.weights_, means_init=start.means_,
                               precisions_init=_precisions(start))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                            # neither converges with tol=0
        ours.fit(X)
        theirs.fit(X)
    assert ours.n_iter_ == theirs.n_iter_ == iterations
    np.testing.assert_allclose(ours.score_samples(X), theirs.score_samples(X), rtol=1e-8)
    np.testing.assert_allclose(ours.weights_, theirs.weights_, rtol=1e-7)
    np.testing.assert_allclose(ours.means_, theirs.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.covariances_, theirs.covariances_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(ours.bic(X), theirs.bic(X), rtol=1e-8)
    np.testing.assert_allclose(ours.aic(X), theirs.aic(X), rtol=1e-8)
    # scikit-learn records the bound before its last M-step: our second-to-last value
    np.testing.assert_allclose(ours.lower_bounds_[-2], theirs.lower_bound_, rtol=1e-8)

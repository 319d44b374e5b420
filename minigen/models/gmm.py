"""Gaussian mixture models fitted by expectation-maximization (notes §1).

A mixture of K Gaussians,

    p(x) = Σ_k π_k N(x | μ_k, Σ_k),

is a latent-variable model: pick a component k ~ Categorical(π), then draw
x ~ N(μ_k, Σ_k).  EM alternates two steps, each of which cannot lower the
log-likelihood (Dempster, Laird & Rubin 1977; Bishop PRML §9.2):

    E-step:  r_nk = π_k N(x_n | μ_k, Σ_k) / Σ_j π_j N(x_n | μ_j, Σ_j)
    M-step:  N_k = Σ_n r_nk,  π_k = N_k / N,  μ_k = Σ_n r_nk x_n / N_k,
             Σ_k = Σ_n r_nk (x_n - μ_k)(x_n - μ_k)ᵀ / N_k + reg_covar · I

Right after an E-step the evidence lower bound Σ_n Σ_k r_nk log(π_k N(x_n|k) / r_nk)
equals the log-likelihood itself, so ``lower_bounds_`` records the mean
log-likelihood per sample after every iteration.

Numerical care
--------------
* Responsibilities live in log space: log r_nk = log π_k + log N_k(x_n) - logsumexp_j(...),
  so 784-dimensional densities of 1e-300 never underflow to 0/0.
* Densities use the Cholesky factor of the precision: with Σ = L Lᵀ and
  P = L⁻ᵀ (so Σ⁻¹ = P Pᵀ),  log N(x | μ, Σ) = -½ d log 2π + Σ_i log P_ii - ½ |(x - μ)ᵀ P|².
  No inverse of Σ is formed and no determinant is taken.
* ``reg_covar`` is added to every variance.  Raw MNIST pixels on the border are
  0 in every image, so their sample variance is exactly 0; the added 1e-6 keeps
  every covariance positive definite.

Covariance types (what ``covariances_`` holds):
``'full'`` (K, d, d) one matrix per component; ``'tied'`` (d, d) one matrix shared;
``'diag'`` (K, d) per-component variances; ``'spherical'`` (K,) one variance per component.

``PCAGaussianMixture`` fits the mixture to the first q principal coordinates
only and puts isotropic Gaussian noise (PPCA's σ²) on the d - q others, which
keeps it a density on the full space (so MNIST bits/dim can be reported).

Initialization (``init_params``), from an explicit generator:
``'kmeans++'``: k-means++ seeding (Arthur & Vassilvitskii 2007: each new centre is a
data point drawn with probability ∝ its squared distance to the nearest chosen centre),
then a few Lloyd iterations (``LLOYD_STEPS``) to settle the centres; the hard
assignments to the nearest centre are the initial responsibilities.
``'random'``: responsibilities drawn uniformly and normalized per sample.

References
----------
A. P. Dempster, N. M. Laird and D. B. Rubin, "Maximum likelihood from incomplete
data via the EM algorithm", JRSS B 39(1):1-38, 1977.
C. M. Bishop, "Pattern Recognition and Machine Learning", §9.2, 2006.
D. Arthur and S. Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007.
G. Schwarz, "Estimating the dimension of a model", Annals of Statistics 6(2), 1978 (BIC).
M. E. Tipping and C. M. Bishop, "Probabilistic principal component analysis", JRSS B 61(3), 1999
(the isotropic noise of ``PCAGaussianMixture``).
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from .. import backend
from .pca import LOG_2PI, PCA, RELATIVE_ZERO, as_data_matrix, as_generator, solve_lower

__all__ = ["GaussianMixture", "PCAGaussianMixture"]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
LLOYD_STEPS = 5          # Lloyd iterations after k-means++ seeding (enough to settle the centres)


class GaussianMixture:
    """p(x) = Σ_k π_k N(x | μ_k, Σ_k), fitted by EM (the module docstring has the E- and M-steps).

    Shapes: X (n, d); weights_ (K,); means_ (K, d); covariances_ and
    precisions_cholesky_ as listed for each ``covariance_type``.

    ``tol``: stop when the mean log-likelihood changes by less than this.
    ``max_iter``: the most EM iterations per run (0 keeps the initialization).
    ``n_init``: independent runs from fresh initializations; the one with the
    highest final log-likelihood is kept.  ``generator``: None (the device's
    default generator), an int seed or a minigen Generator.

    After ``fit``: weights_, means_, covariances_, precisions_cholesky_,
    converged_, n_iter_ (EM iterations of the kept run), lower_bound_ (its final
    mean log-likelihood) and lower_bounds_ (one value per iteration, the first
    one for the initialization).
    """

    def __init__(self, n_components=1, covariance_type="full", tol=1e-3, reg_covar=1e-6, max_iter=100,
                 n_init=1, init_params="kmeans++", generator=None):
        if not isinstance(n_components, numbers.Integral) or isinstance(n_components, bool) or n_components < 1:
            raise ValueError(f"GaussianMixture: n_components must be a positive int, got {n_components!r}")
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"GaussianMixture: covariance_type must be one of {COVARIANCE_TYPES}, "
                             f"got {covariance_type!r}")
        if init_params not in ("kmeans++", "random"):
            raise ValueError(f"GaussianMixture: init_params must be 'kmeans++' or 'random', got {init_params!r}")
        if tol < 0 or reg_covar < 0 or int(max_iter) < 0 or int(n_init) < 1:
            raise ValueError("GaussianMixture: need tol >= 0, reg_covar >= 0, max_iter >= 0 and n_init >= 1, "
                             f"got {tol}, {reg_covar}, {max_iter}, {n_init}")
        self.n_components = int(n_components)
        self.covariance_type = covariance_type
        self.tol = float(tol)
        self.reg_covar = float(reg_covar)
        self.max_iter = int(max_iter)
        self.n_init = int(n_init)
        self.init_params = init_params
        self.generator = generator
        self.means_ = None

    # --------------------------------------------------------------------------
    # fitting
    # --------------------------------------------------------------------------
    def fit(self, X):
        """Run EM ``n_init`` times on X (n, d) and keep the best run; returns self."""
        X = as_data_matrix(X, "GaussianMixture.fit")
        n, d = X.shape
        if n < self.n_components:
            raise ValueError(f"GaussianMixture.fit: n_components={self.n_components} is more than "
                             f"n_samples={n}")
        self.n_features_in_ = d
        gen = as_generator(self.generator, backend.device_of(X))
        best = None
        try:
            for _ in range(self.n_init):
                run = self._fit_once(X, gen)
                if best is None or run["lower_bound_"] > best["lower_bound_"]:
                    best = run
        except Exception:
            self.means_ = None                     # a failed fit leaves the model unfitted
            raise
        for name, value in best.items():
            setattr(self, name, value)
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(f"GaussianMixture did not converge in max_iter={self.max_iter} iterations "
                          f"(tol={self.tol}); raise max_iter or tol", RuntimeWarning, stacklevel=2)
        return self

    def _fit_once(self, X, gen):
        """One EM run from a fresh initialization; returns its fitted attributes."""
        self._m_step(X, self._initial_responsibilities(X, gen))
        lower_bound, log_resp = self._e_step(X)
        lower_bounds, converged, n_iter = [lower_bound], False, 0
        for n_iter in range(1, self.max_iter + 1):
            self._m_step(X, backend.xp_of(X).exp(log_resp))
            new_bound, log_resp = self._e_step(X)
            lower_bounds.append(new_bound)
            if abs(new_bound - lower_bound) < self.tol:
                converged = True
                break
            lower_bound = new_bound
        return dict(weights_=self.weights_, means_=self.means_, covariances_=self.covariances_,
                    precisions_cholesky_=self.precisions_cholesky_, converged_=converged,
                    n_iter_=n_iter, lower_bound_=lower_bounds[-1], lower_bounds_=lower_bounds)

    def _e_step(self, X):
        """Mean log-likelihood per sample and the log-responsibilities log r_nk, (n, K)."""
        weighted = self._weighted_log_prob(X)                      # log π_k + log N(x_n | k)
        log_norm = backend.logsumexp(weighted, axis=1)             # log p(x_n)
        return float(log_norm.mean()), weighted - log_norm[:, None]

    def _m_step(self, X, resp):
        """Set π, μ, Σ (and the precision Cholesky factors) from responsibilities resp (n, K)."""
        xp = backend.xp_of(X)
        n, d = X.shape
        K = self.n_components
        # a tiny floor keeps an empty component's mean finite (0/0 otherwise); its weight stays ~0
        nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps     # (K,)
        means = (resp.T @ X) / nk[:, None]                         # (K, d)
        if self.covariance_type in ("full", "tied"):
            scatter = xp.empty((K, d, d))
            for k in range(K):
                diff = X - means[k]                                # (n, d)
                scatter[k] = (resp[:, k:k + 1] * diff).T @ diff    # Σ_n r_nk (x_n - μ_k)(x_n - μ_k)ᵀ
            if self.covariance_type == "full":
                cov = scatter / nk[:, None, None] + self.reg_covar * xp.eye(d)
            else:
                cov = scatter.sum(axis=0) / nk.sum() + self.reg_covar * xp.eye(d)
        else:
            var = xp.empty((K, d))
            for k in range(K):
                var[k] = resp[:, k] @ (X - means[k]) ** 2 / nk[k]
            var = var + self.reg_covar
            cov = var if self.covariance_type == "diag" else var.mean(axis=1)
        self.weights_ = nk / nk.sum()
        self.means_ = means
        self.covariances_ = cov
        self.precisions_cholesky_ = self._precision_cholesky(cov)

    def _precision_cholesky(self, cov):
        """P with Σ⁻¹ = P Pᵀ: P = L⁻ᵀ for Σ = L Lᵀ (full, tied), 1/sqrt(σ²) otherwise."""
        xp = backend.xp_of(cov)
        if self.covariance_type in ("diag", "spherical"):
            if float(cov.min()) <= 0:
                raise ValueError("GaussianMixture: a variance is 0 (constant feature in a component); "
                                 f"set reg_covar > 0 (now {self.reg_covar})")
            return 1.0 / xp.sqrt(cov)
        mats = cov[None] if self.covariance_type == "tied" else cov
        d = mats.shape[-1]
        prec = xp.empty_like(mats)
        for k in range(mats.shape[0]):
            try:
                L = xp.linalg.cholesky(mats[k])
            except np.linalg.LinAlgError:
                L = None
            # cupy.linalg.cholesky does not raise on a matrix that is not positive definite: it returns NaN
            if L is None or not bool(xp.isfinite(L).all()):
                raise ValueError(f"GaussianMixture: the covariance of component {k} is not positive definite "
                                 f"(collapsed onto too few points or constant features); increase reg_covar "
                                 f"(now {self.reg_covar})")
            prec[k] = solve_lower(L, xp.eye(d)).T
        return prec[0] if self.covariance_type == "tied" else prec

    # --------------------------------------------------------------------------
    # initialization
    # --------------------------------------------------------------------------
    def _initial_responsibilities(self, X, gen):
        xp = backend.xp_of(X)
        n, K = X.shape[0], self.n_components
        if self.init_params == "random":
            resp = backend.to_device(gen.uniform((n, K), dtype=np.float64), backend.device_of(X))
            return resp / resp.sum(axis=1, keepdims=True)
        centres = _kmeans_plusplus(X, K, gen)
        for _ in range(LLOYD_STEPS):
            labels = _nearest(X, centres)
            for k in range(K):
                members = X[labels == k]
                if members.shape[0] > 0:                           # an empty cluster keeps its centre
                    centres[k] = members.mean(axis=0)
        resp = xp.zeros((n, K))
        resp[xp.arange(n), _nearest(X, centres)] = 1.0
        return resp

    # --------------------------------------------------------------------------
    # densities and predictions
    # --------------------------------------------------------------------------
    def _log_gaussians(self, X):
        """log N(x_n | μ_k, Σ_k) for every sample and component, (n, K)."""
        xp = backend.xp_of(X)
        n, d = X.shape
        out = xp.empty((n, self.n_components))
        P = self.precisions_cholesky_
        for k in range(self.n_components):
            diff = X - self.means_[k]                              # (n, d)
            if self.covariance_type == "full":
                y, half_logdet = diff @ P[k], xp.log(xp.diag(P[k])).sum()
            elif self.covariance_type == "tied":
                y, half_logdet = diff @ P, xp.log(xp.diag(P)).sum()
            elif self.covariance_type == "diag":
                y, half_logdet = diff * P[k], xp.log(P[k]).sum()
            else:
                y, half_logdet = diff * P[k], d * xp.log(P[k])
            out[:, k] = -0.5 * (d * LOG_2PI + (y ** 2).sum(axis=1)) + half_logdet
        return out

    def _weighted_log_prob(self, X):
        return self._log_gaussians(X) + backend.xp_of(X).log(self.weights_)

    def _checked(self, X, where):
        if self.means_ is None:
            raise RuntimeError(f"GaussianMixture is not fitted yet: call fit(X) before {where}")
        return as_data_matrix(X, f"GaussianMixture.{where}", self.n_features_in_, backend.device_of(self.means_))

    def score_samples(self, X):
        """log p(x_n) = logsumexp_k (log π_k + log N(x_n | μ_k, Σ_k)), (n,)."""
        X = self._checked(X, "score_samples")
        return backend.logsumexp(self._weighted_log_prob(X), axis=1)

    def score(self, X):
        """Mean log-likelihood per sample."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X):
        """Responsibilities r_nk = p(k | x_n), (n, K); rows sum to 1."""
        X = self._checked(X, "predict_proba")
        weighted = self._weighted_log_prob(X)
        return backend.xp_of(X).exp(weighted - backend.logsumexp(weighted, axis=1)[:, None])

    def predict(self, X):
        """The most responsible component of each sample, (n,) int."""
        X = self._checked(X, "predict")
        return self._weighted_log_prob(X).argmax(axis=1)

    def sample(self, n, generator=None):
        """Draw n samples: k ~ Categorical(π), x = μ_k + L_k ε with Σ_k = L_k L_kᵀ, ε ~ N(0, I).

        Returns (X (n, d), labels (n,)), in the order drawn.
        """
        if self.means_ is None:
            raise RuntimeError("GaussianMixture is not fitted yet: call fit(X) before sample")
        device = backend.device_of(self.means_)
        xp = backend.xp_of(self.means_)
        gen = as_generator(generator, device)
        n, d = int(n), self.n_features_in_
        labels = backend.to_device(gen.choice(self.n_components, size=n, p=backend.to_numpy(self.weights_)),
                                   device)
        eps = backend.to_device(gen.normal((n, d), dtype=np.float64), device)
        X = xp.empty((n, d))
        for k in range(self.n_components):
            rows = labels == k
            if self.covariance_type == "full":
                noise = eps[rows] @ xp.linalg.cholesky(self.covariances_[k]).T
            elif self.covariance_type == "tied":
                noise = eps[rows] @ xp.linalg.cholesky(self.covariances_).T
            else:
                noise = eps[rows] * xp.sqrt(self.covariances_[k])
            X[rows] = self.means_[k] + noise
        return X, labels

    # --------------------------------------------------------------------------
    # model selection
    # --------------------------------------------------------------------------
    def _n_parameters(self):
        """Free parameters: K - 1 weights, K d means, and the covariances."""
        K, d = self.n_components, self.n_features_in_
        cov_params = {"full": K * d * (d + 1) // 2, "tied": d * (d + 1) // 2,
                      "diag": K * d, "spherical": K}[self.covariance_type]
        return (K - 1) + K * d + cov_params

    def bic(self, X):
        """Bayesian information criterion: -2 log p(X) + p log n (lower is better)."""
        X = self._checked(X, "bic")
        return -2.0 * self.score(X) * X.shape[0] + self._n_parameters() * math.log(X.shape[0])

    def aic(self, X):
        """Akaike information criterion: -2 log p(X) + 2 p (lower is better)."""
        X = self._checked(X, "aic")
        return -2.0 * self.score(X) * X.shape[0] + 2 * self._n_parameters()


# ----------------------------------------------------------------------------
# a mixture on principal coordinates, made a density on the whole space
# ----------------------------------------------------------------------------

class PCAGaussianMixture:
    """A GMM on the first q principal coordinates plus isotropic noise on the other d - q directions.

    A mixture fitted to PCA-reduced data z = U(x - m) (U: the (q, d) principal
    directions, m the data mean) is a density on R^q, not on the images.  This
    model completes it with Gaussian noise of variance σ² in the d - q discarded
    directions, exactly as PPCA does:

        log p(x) = log p_GMM(U(x - m)) + log N(e; 0, σ² I_{d-q}),   e = (x - m) - Uᵀ U (x - m),

    with log N(e; 0, σ² I_{d-q}) = -½ [(d - q) log 2πσ² + |e|²/σ²].  The map
    x -> (z, coordinates of e in an orthonormal basis of the complement) is a
    rotation (Jacobian 1), so p is a normalized density on R^d.  Equivalently it
    is a Gaussian mixture in x-space with constrained covariances:

        p(x) = Σ_k π_k N(x | m + Uᵀ μ_k,  Uᵀ Σ_k U + σ² (I_d - Uᵀ U)).

    Fitting: U and m by PCA (``PCA``); σ² = Σ_n |e_n|² / (n (d - q)), the mean
    discarded eigenvalue of the ML covariance Xcᵀ Xc / n, which maximizes the
    likelihood for the given U and m; then the GMM by EM on the coordinates.
    With K = 1, ``covariance_type='full'`` and ``reg_covar=0`` this is the
    closed-form PPCA with q components (the one Gaussian's covariance on z is
    diag of the top-q ML eigenvalues), and ``score_samples`` equals
    ``PPCA(q).fit(X).score_samples``.

    Shapes: X (n, d).  ``n_pca_components``: q (1 <= q < d).  The other
    arguments go to the ``GaussianMixture`` on the coordinates.  After ``fit``:
    mean_ (d,), components_ (q, d), noise_variance_ (σ²), gmm_ (the fitted
    ``GaussianMixture`` on z), n_features_in_.
    """

    def __init__(self, n_pca_components, n_components=1, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans++", generator=None):
        q = n_pca_components
        if not isinstance(q, numbers.Integral) or isinstance(q, bool) or q < 1:
            raise ValueError(f"PCAGaussianMixture: n_pca_components must be a positive int, got {q!r}")
        self.n_pca_components = int(q)
        # built now so that bad mixture settings fail here, not in fit
        self.gmm_ = GaussianMixture(n_components, covariance_type=covariance_type, tol=tol, reg_covar=reg_covar,
                                    max_iter=max_iter, n_init=n_init, init_params=init_params, generator=generator)
        self.mean_ = None

    def fit(self, X):
        """PCA, then σ² from the residuals, then EM on the q coordinates; returns self."""
        X = as_data_matrix(X, "PCAGaussianMixture.fit")
        n, d = X.shape
        q = self.n_pca_components
        if q >= d:
            raise ValueError(f"PCAGaussianMixture.fit: n_pca_components={q} must be smaller than "
                             f"n_features={d} (the noise lives in the d - q discarded directions)")
        self.mean_ = None                                         # unfitted until everything succeeded
        pca = PCA(q).fit(X)
        U = pca.components_                                       # (q, d), orthonormal rows
        Xc = X - pca.mean_
        Z = Xc @ U.T                                              # (n, q)
        sigma2 = float(((Xc - Z @ U) ** 2).sum()) / (n * (d - q))
        largest = float((Xc ** 2).sum(axis=0).max()) / n
        if not sigma2 > RELATIVE_ZERO * largest:
            raise ValueError("PCAGaussianMixture.fit: the data lies in a q-dimensional subspace, so the "
                             "noise variance is 0 and the likelihood is unbounded; use fewer PCA components")
        self.gmm_.fit(Z)
        self.components_, self.noise_variance_, self.n_features_in_ = U, sigma2, d
        self.mean_ = pca.mean_
        return self

    def _checked(self, X, where):
        if self.mean_ is None:
            raise RuntimeError(f"PCAGaussianMixture is not fitted yet: call fit(X) before {where}")
        return as_data_matrix(X, f"PCAGaussianMixture.{where}", self.n_features_in_, backend.device_of(self.mean_))

    def transform(self, X):
        """The principal coordinates z = U(x - m), (n, q)."""
        X = self._checked(X, "transform")
        return (X - self.mean_) @ self.components_.T

    def score_samples(self, X):
        """log p(x_n) = log p_GMM(z_n) - ½ [(d - q) log 2πσ² + |e_n|²/σ²], (n,)."""
        X = self._checked(X, "score_samples")
        d, q, sigma2 = self.n_features_in_, self.n_pca_components, self.noise_variance_
        Xc = X - self.mean_
        Z = Xc @ self.components_.T
        # the residual itself, not |x - m|² - |z|², so nothing cancels when σ² is small
        sq_resid = ((Xc - Z @ self.components_) ** 2).sum(axis=1)
        return self.gmm_.score_samples(Z) - 0.5 * ((d - q) * (LOG_2PI + math.log(sigma2)) + sq_resid / sigma2)

    def score(self, X):
        """Mean log-likelihood per sample."""
        return float(self.score_samples(X).mean())

    def sample(self, n, generator=None):
        """z ~ GMM, x = m + Uᵀ z + σ (I - UᵀU) ε with ε ~ N(0, I_d); returns (X (n, d), labels (n,))."""
        if self.mean_ is None:
            raise RuntimeError("PCAGaussianMixture is not fitted yet: call fit(X) before sample")
        device = backend.device_of(self.mean_)
        gen = as_generator(generator, device)
        Z, labels = self.gmm_.sample(n, gen)
        eps = backend.to_device(gen.normal((int(n), self.n_features_in_), dtype=np.float64), device)
        eps_perp = eps - (eps @ self.components_.T) @ self.components_   # N(0, I - UᵀU): the discarded directions
        return self.mean_ + Z @ self.components_ + math.sqrt(self.noise_variance_) * eps_perp, labels


# ----------------------------------------------------------------------------
# k-means helpers for the initialization
# ----------------------------------------------------------------------------

def _sq_dist(X, c):
    """|x_n - c|² for every row of X, (n,)."""
    return ((X - c) ** 2).sum(axis=1)


def _nearest(X, centres):
    """Index of the nearest centre for every row of X, (n,)."""
    xp = backend.xp_of(X)
    return xp.stack([_sq_dist(X, c) for c in centres], axis=1).argmin(axis=1)


def _kmeans_plusplus(X, K, gen):
    """K centres by k-means++ seeding (Arthur & Vassilvitskii 2007), (K, d)."""
    xp = backend.xp_of(X)
    n = X.shape[0]
    first = int(backend.to_numpy(gen.integers(0, n)))
    centres = xp.empty((K, X.shape[1]))
    centres[0] = X[first]
    closest = _sq_dist(X, centres[0])                               # D(x)² to the nearest centre so far
    for k in range(1, K):
        total = float(closest.sum())
        p = backend.to_numpy(closest) / total if total > 0 else None   # all points equal: uniform
        idx = int(backend.to_numpy(gen.choice(n, size=1, p=p))[0])
        centres[k] = X[idx]
        closest = xp.minimum(closest, _sq_dist(X, centres[k]))
    return centres

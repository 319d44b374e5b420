"""Principal component analysis and probabilistic PCA (notes §1).

PCA finds the q orthonormal directions of largest variance.  With the centred
data X_c = X - mean = U S Vᵀ (thin SVD, X is (n, d)), the principal directions
are the first q rows of Vᵀ and their variances are λ_j = s_j² / (n - 1).
Projecting onto them and back loses exactly the variance of the discarded
directions, Σ_{j>q} λ_j per sample (on average, with the 1/(n-1) convention).

Probabilistic PCA (PPCA) turns this into a density.  A q-dimensional latent
z ~ N(0, I_q) is mapped linearly and blurred by isotropic noise,

    x | z ~ N(W z + μ, σ² I_d),      so      x ~ N(μ, C),   C = W Wᵀ + σ² I_d.

Its maximum-likelihood solution has a closed form (Tipping & Bishop 1999,
eqs. 7-8): with λ_1 ≥ ... ≥ λ_d the eigenvalues of the ML covariance
S = X_cᵀ X_c / n and U_q the leading eigenvectors,

    σ² = 1/(d - q) Σ_{j>q} λ_j,      W = U_q (Λ_q - σ² I)^{1/2} R   (we take R = I),

and the EM algorithm (their §3.2) converges to the same likelihood.  As σ² → 0
the column span of W becomes the PCA subspace.

Densities are evaluated without ever forming or inverting the d × d matrix C:
with the q × q matrix M = WᵀW + σ² I,

    C⁻¹ = (I - W M⁻¹ Wᵀ) / σ²                  (Woodbury identity)
    log|C| = (d - q) log σ² + log|M|           (matrix determinant lemma)

so one Cholesky factor of M is all a log-likelihood needs.

Everything runs on NumPy or CuPy arrays (whatever the data is on) in float64;
inputs may be arrays, minigen Tensors or nested lists, outputs are arrays.

References
----------
M. E. Tipping and C. M. Bishop, "Probabilistic principal component analysis",
Journal of the Royal Statistical Society B 61(3):611-622, 1999.
C. M. Bishop, "Pattern Recognition and Machine Learning", §12.1-12.2, 2006.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.linalg

from .. import backend
from ..autograd import Tensor

__all__ = ["PCA", "PPCA"]

LOG_2PI = math.log(2.0 * math.pi)
# a variance below this fraction of the data's largest one is round-off, i.e. zero
RELATIVE_ZERO = 1e-12


# ----------------------------------------------------------------------------
# small helpers shared with gmm.py: input checks, generators, triangular solves
# ----------------------------------------------------------------------------

def as_data_matrix(X, where, n_features=None, device=None):
    """``X`` as a float64 (n_samples, n_features) array, or a clear error.

    Accepts NumPy/CuPy arrays, minigen Tensors and nested lists.  ``where`` names
    the calling method in messages; ``n_features`` is checked when given; arrays
    on another device than ``device`` are refused (lists go to ``device``).
    """
    if isinstance(X, Tensor):
        X = X.data
    if backend.is_array(X):
        if device is not None and backend.device_of(X) != device:
            raise ValueError(f"{where}: the model lives on '{device}' but X is on "
                             f"'{backend.device_of(X)}'; move one of them first")
    else:
        X = backend.to_device(np.asarray(X), device or "cpu")
    if X.ndim != 2:
        raise ValueError(f"{where}: X must be a 2-D array (n_samples, n_features), got shape {tuple(X.shape)}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{where}: X must hold numbers, got dtype {X.dtype}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{where}: X is empty (shape {tuple(X.shape)})")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{where}: X has {X.shape[1]} features but the model was fitted on {n_features}")
    xp = backend.xp_of(X)
    X = X.astype(xp.float64, copy=False)
    n_bad = int(xp.count_nonzero(~xp.isfinite(X)))
    if n_bad:
        raise ValueError(f"{where}: X contains {n_bad} NaN or infinite entries")
    return X


def as_generator(generator, device):
    """An ``mg.Generator``: the one given, a new one from an int seed, or the device default."""
    if generator is None:
        return backend.default_generator(device)
    if isinstance(generator, backend.Generator):
        return generator
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        return backend.Generator(int(generator), device)
    raise TypeError(f"generator must be None, an int seed or a minigen Generator, got {type(generator).__name__}")


def solve_lower(L, B):
    """Solve L Y = B for a lower-triangular L (shapes (m, m) and (m, k))."""
    if backend.xp_of(L) is np:
        return scipy.linalg.solve_triangular(L, B, lower=True)
    # CuPy: a general solve on the small factor gives the same answer.
    return backend.xp_of(L).linalg.solve(L, B)


def _check_n_components(q, where):
    if not isinstance(q, numbers.Integral) or isinstance(q, bool) or q < 1:
        raise ValueError(f"{where}: n_components must be a positive int, got {q!r}")
    return int(q)


def _require_fitted(model, where):
    if getattr(model, "mean_", None) is None:
        raise RuntimeError(f"{type(model).__name__} is not fitted yet: call fit(X) before {where}")


# ----------------------------------------------------------------------------
# PCA
# ----------------------------------------------------------------------------

class PCA:
    """Principal component analysis by the SVD of the centred data.

    X_c = X - mean = U S Vᵀ;  components_ = first q rows of Vᵀ;  λ_j = s_j² / (n - 1).

    ``n_components``: an int q, a float in (0, 1) (keep the fewest components
    whose explained-variance ratios add up to at least that fraction), or None
    (keep min(n, d)).  ``whiten=True`` scales each projection to unit variance.

    Attributes after ``fit``: components_ (q, d), explained_variance_ (q,),
    explained_variance_ratio_ (q,), singular_values_ (q,), mean_ (d,),
    noise_variance_ (the mean of the discarded eigenvalues, 0 when none is
    discarded), n_components_.  ``score_samples`` is the PPCA log-density
    N(x | mean, C) with C = Vᵀ diag(λ) V on the kept directions and
    noise_variance_ on the rest (Tipping & Bishop 1999).
    """

    def __init__(self, n_components=None, whiten=False):
        if n_components is not None:
            is_fraction = isinstance(n_components, float) and 0.0 < n_components < 1.0
            is_count = isinstance(n_components, numbers.Integral) and not isinstance(n_components, bool)
            if not (is_fraction or (is_count and n_components >= 1)):
                raise ValueError("PCA: n_components must be an int >= 1, a float in (0, 1) or None, "
                                 f"got {n_components!r}")
        self.n_components = n_components
        self.whiten = bool(whiten)
        self.mean_ = None

    def fit(self, X):
        """Fit to X (n, d); returns self."""
        X = as_data_matrix(X, "PCA.fit")
        xp = backend.xp_of(X)
        n, d = X.shape
        if n < 2:
            raise ValueError(f"PCA.fit needs at least 2 samples, got {n}")
        mean = X.mean(axis=0)
        _, S, Vt = xp.linalg.svd(X - mean, full_matrices=False)   # S (r,), Vt (r, d), r = min(n, d)
        Vt = _flip_signs(Vt)
        eigvals = S ** 2 / (n - 1)            # sample-covariance eigenvalues, descending
        total = float(eigvals.sum())
        ratios = eigvals / total if total > 0 else xp.zeros_like(eigvals)
        q = self._choose_q(backend.to_numpy(ratios), n, d)

        self.mean_ = mean
        self.n_components_ = q
        self.n_features_in_ = d
        self.components_ = Vt[:q]
        self.explained_variance_ = eigvals[:q]
        self.explained_variance_ratio_ = ratios[:q]
        self.singular_values_ = S[:q]
        self.noise_variance_ = float(eigvals[q:].mean()) if q < eigvals.shape[0] else 0.0
        return self

    def _choose_q(self, ratios, n, d):
        r = min(n, d)
        if self.n_components is None:
            return r
        if isinstance(self.n_components, float):
            # smallest q with λ_1 + ... + λ_q >= fraction of the total variance
            q = int(np.searchsorted(np.cumsum(ratios), self.n_components, side="left")) + 1
            return min(q, r)
        if self.n_components > r:
            raise ValueError(f"PCA.fit: n_components={self.n_components} is more than "
                             f"min(n_samples, n_features) = min({n}, {d}) = {r}")
        return self.n_components

    def transform(self, X):
        """Coordinates on the principal directions: Z = (X - mean) Vᵀ_q, (n, q); whitened: Z / sqrt(λ)."""
        _require_fitted(self, "transform")
        X = as_data_matrix(X, "PCA.transform", self.n_features_in_, backend.device_of(self.mean_))
        Z = (X - self.mean_) @ self.components_.T
        if self.whiten:
            Z = Z / backend.xp_of(Z).sqrt(self.explained_variance_)
        return Z

    def fit_transform(self, X):
        """``fit(X)`` then ``transform(X)``: X (n, d) -> Z (n, q)."""
        return self.fit(X).transform(X)

    def inverse_transform(self, Z):
        """Back to data space: X̂ = Z V_q + mean (Z un-whitened first), (n, d)."""
        _require_fitted(self, "inverse_transform")
        Z = as_data_matrix(Z, "PCA.inverse_transform", self.n_components_, backend.device_of(self.mean_))
        if self.whiten:
            Z = Z * backend.xp_of(Z).sqrt(self.explained_variance_)
        return Z @ self.components_ + self.mean_

    def score_samples(self, X):
        """log N(x | mean, C) per sample, (n,): the PPCA density with PCA's eigenvalues.

        C has eigenvalue λ_j along component j and noise_variance_ σ² on the
        orthogonal complement, so with p = V_q (x - mean) and the residual
        e = (x - mean) - V_qᵀ p:
        log N = -½ [d log 2π + Σ_j log λ_j + (d - q) log σ² + Σ_j p_j²/λ_j + |e|²/σ²].
        """
        _require_fitted(self, "score_samples")
        X = as_data_matrix(X, "PCA.score_samples", self.n_features_in_, backend.device_of(self.mean_))
        xp = backend.xp_of(X)
        d, q = self.n_features_in_, self.n_components_
        lam, sigma2 = self.explained_variance_, self.noise_variance_
        tiny = RELATIVE_ZERO * float(lam.max())
        if float(lam.min()) <= tiny or (q < d and sigma2 <= tiny):
            raise ValueError("PCA.score_samples: the fitted covariance is singular (a kept or the noise "
                             "variance is 0); fit with fewer components than the data's rank")
        Xc = X - self.mean_
        P = Xc @ self.components_.T                                  # (n, q)
        quad = (P ** 2 / lam).sum(axis=1)
        logdet = float(xp.log(lam).sum())
        if q < d:
            resid = Xc - P @ self.components_                        # (n, d)
            # the residual itself, not |x|² - |p|², so no cancellation when σ² is small
            quad = quad + (resid ** 2).sum(axis=1) / sigma2
            logdet += (d - q) * math.log(sigma2)
        return -0.5 * (d * LOG_2PI + logdet + quad)

    def score(self, X):
        """Mean log-likelihood per sample."""
        return float(self.score_samples(X).mean())


def _flip_signs(Vt):
    """Fix the SVD's sign freedom: the largest-|v| entry of each row becomes positive."""
    xp = backend.xp_of(Vt)
    biggest = Vt[xp.arange(Vt.shape[0]), xp.argmax(xp.abs(Vt), axis=1)]
    return Vt * xp.where(biggest < 0, -1.0, 1.0)[:, None]


# ----------------------------------------------------------------------------
# probabilistic PCA
# ----------------------------------------------------------------------------

class PPCA:
    """Probabilistic PCA (Tipping & Bishop 1999): x = W z + μ + ε, z ~ N(0, I_q), ε ~ N(0, σ² I_d).

    Marginal: x ~ N(μ, C), C = W Wᵀ + σ² I.  Posterior: z | x ~ N(M⁻¹ Wᵀ (x - μ), σ² M⁻¹)
    with M = WᵀW + σ² I (q × q).  Shapes: W_ (d, q), mean_ (d,), noise_variance_ = σ².

    ``method='closed_form'`` sets the ML solution from the eigen-decomposition
    of S = X_cᵀX_c / n:  σ² = mean of the d - q discarded eigenvalues,
    W = U_q (Λ_q - σ² I)^{1/2}.

    ``method='em'`` starts from a random W (drawn from ``generator``) and
    alternates (Tipping & Bishop 1999 §3.2; Bishop PRML eqs. 12.54-12.57)

        E:  M = WᵀW + σ²I,  E[z_n] = M⁻¹Wᵀ(x_n - μ),  E[z_n z_nᵀ] = σ² M⁻¹ + E[z_n] E[z_n]ᵀ
        M:  W_new = [Σ_n (x_n - μ) E[z_n]ᵀ] [Σ_n E[z_n z_nᵀ]]⁻¹
            σ²_new = 1/(N d) Σ_n { |x_n - μ|² - 2 E[z_n]ᵀ W_newᵀ (x_n - μ)
                                   + tr(E[z_n z_nᵀ] W_newᵀ W_new) }

    until the mean log-likelihood improves by less than ``tol`` (at most
    ``max_iter`` updates).  ``log_likelihoods_[i]`` is the mean log-likelihood
    after i updates; EM never decreases it and its fixed point is the closed
    form's likelihood (W then equals the closed form up to a rotation R).
    """

    def __init__(self, n_components, method="closed_form", max_iter=1000, tol=1e-6, generator=None):
        self.n_components = _check_n_components(n_components, "PPCA")
        if method not in ("closed_form", "em"):
            raise ValueError(f"PPCA: method must be 'closed_form' or 'em', got {method!r}")
        if int(max_iter) < 0 or tol < 0:
            raise ValueError(f"PPCA: need max_iter >= 0 and tol >= 0, got {max_iter}, {tol}")
        self.method = method
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.generator = generator
        self.mean_ = None

    # fitting -----------------------------------------------------------------
    def fit(self, X):
        """Fit μ, W, σ² by maximum likelihood on X (n, d); returns self."""
        X = as_data_matrix(X, "PPCA.fit")
        n, d = X.shape
        q = self.n_components
        if q >= d or q >= n:
            raise ValueError(f"PPCA.fit: n_components={q} must be smaller than n_features={d} "
                             f"and n_samples={n} (σ² is the variance of the discarded directions)")
        mean = X.mean(axis=0)
        Xc = X - mean
        if self.method == "closed_form":
            self._fit_closed_form(Xc)
        else:
            self._fit_em(Xc)
        _check_noise_variance(self.noise_variance_, _largest_variance(Xc))
        if self.method == "closed_form":
            self.log_likelihoods_ = [self._mean_log_likelihood(Xc)]
            self.n_iter_, self.converged_ = 0, True
        self.mean_, self.n_features_in_ = mean, d       # fitted only once everything succeeded
        return self

    def _fit_closed_form(self, Xc):
        xp = backend.xp_of(Xc)
        n, d = Xc.shape
        q = self.n_components
        _, S, Vt = xp.linalg.svd(Xc, full_matrices=False)
        Vt = _flip_signs(Vt)
        lam = S ** 2 / n                                   # eigenvalues of the ML covariance S
        # the d - min(n, d) eigenvalues the SVD does not return are zero
        sigma2 = float(lam[q:].sum()) / (d - q)
        self.W_ = Vt[:q].T * xp.sqrt(xp.maximum(lam[:q] - sigma2, 0.0))   # (d, q)
        self.noise_variance_ = sigma2

    def _fit_em(self, Xc):
        xp = backend.xp_of(Xc)
        n, d = Xc.shape
        q = self.n_components
        gen = as_generator(self.generator, backend.device_of(Xc))
        sq_norm = float((Xc ** 2).sum())                               # Σ_n |x_n - μ|²
        largest_variance = _largest_variance(Xc)
        W = backend.to_device(gen.normal((d, q), dtype=np.float64), backend.device_of(Xc))
        W = W * math.sqrt(sq_norm / (n * d))                           # the data's scale
        sigma2 = sq_norm / (n * d)

        ll, Ez, sum_Ezz = _ppca_e_step(Xc, W, sigma2, sq_norm)
        lls, converged, n_iter = [ll], False, 0
        for n_iter in range(1, self.max_iter + 1):
            # M-step (sum_Ezz is symmetric, so W_new = (Xcᵀ Ez) sum_Ezz⁻¹ is one solve)
            XtEz = Xc.T @ Ez                                           # (d, q)
            W = xp.linalg.solve(sum_Ezz, XtEz.T).T
            sigma2 = (sq_norm - 2.0 * float((W * XtEz).sum())
                      + float((sum_Ezz * (W.T @ W)).sum())) / (n * d)
            _check_noise_variance(sigma2, largest_variance)   # on rank-q data σ² would shrink to 0 forever
            new_ll, Ez, sum_Ezz = _ppca_e_step(Xc, W, sigma2, sq_norm)
            lls.append(new_ll)
            if abs(new_ll - ll) < self.tol:
                converged = True
                break
            ll = new_ll
        self.W_, self.noise_variance_ = W, sigma2
        self.log_likelihoods_, self.n_iter_, self.converged_ = lls, n_iter, converged

    def _mean_log_likelihood(self, Xc):
        return _ppca_e_step(Xc, self.W_, self.noise_variance_, float((Xc ** 2).sum()))[0]

    # the density ---------------------------------------------------------------
    def _cholesky_M(self):
        """Lower Cholesky factor of M = WᵀW + σ² I, (q, q)."""
        xp = backend.xp_of(self.W_)
        M = self.W_.T @ self.W_ + self.noise_variance_ * xp.eye(self.n_components)
        return xp.linalg.cholesky(M)

    def score_samples(self, X):
        """log N(x | μ, WWᵀ + σ²I) per sample, (n,), via Woodbury and the determinant lemma.

        With M = L Lᵀ and y = L⁻¹ Wᵀ (x - μ):
        (x-μ)ᵀ C⁻¹ (x-μ) = (|x - μ|² - |y|²) / σ²,   log|C| = (d - q) log σ² + 2 Σ log L_ii.
        """
        _require_fitted(self, "score_samples")
        X = as_data_matrix(X, "PPCA.score_samples", self.n_features_in_, backend.device_of(self.mean_))
        xp = backend.xp_of(X)
        d, q, sigma2 = self.n_features_in_, self.n_components, self.noise_variance_
        Xc = X - self.mean_
        L = self._cholesky_M()
        Y = solve_lower(L, self.W_.T @ Xc.T)                     # (q, n)
        quad = ((Xc ** 2).sum(axis=1) - (Y ** 2).sum(axis=0)) / sigma2
        logdet = (d - q) * math.log(sigma2) + 2.0 * float(xp.log(xp.diag(L)).sum())
        return -0.5 * (d * LOG_2PI + logdet + quad)

    def score(self, X):
        """Mean log-likelihood per sample."""
        return float(self.score_samples(X).mean())

    def posterior(self, X):
        """Mean (n, q) and covariance (q, q) of p(z | x): M⁻¹Wᵀ(x - μ) and σ² M⁻¹."""
        _require_fitted(self, "posterior")
        X = as_data_matrix(X, "PPCA.posterior", self.n_features_in_, backend.device_of(self.mean_))
        xp = backend.xp_of(X)
        L = self._cholesky_M()
        L_inv = solve_lower(L, xp.eye(self.n_components))
        M_inv = L_inv.T @ L_inv                                   # M⁻¹ = L⁻ᵀ L⁻¹
        mean = (X - self.mean_) @ self.W_ @ M_inv
        return mean, self.noise_variance_ * M_inv

    def transform(self, X):
        """The posterior mean E[z | x] = M⁻¹Wᵀ(x - μ), (n, q)."""
        return self.posterior(X)[0]

    def fit_transform(self, X):
        """``fit(X)`` then ``transform(X)``: X (n, d) -> posterior means (n, q)."""
        return self.fit(X).transform(X)

    def inverse_transform(self, Z):
        """The mean of p(x | z): W z + μ, (n, d)."""
        _require_fitted(self, "inverse_transform")
        Z = as_data_matrix(Z, "PPCA.inverse_transform", self.n_components, backend.device_of(self.mean_))
        return Z @ self.W_.T + self.mean_

    def sample(self, n, generator=None):
        """n draws of x = W z + μ + σ ε with z ~ N(0, I_q), ε ~ N(0, I_d); returns (n, d)."""
        _require_fitted(self, "sample")
        device = backend.device_of(self.mean_)
        gen = as_generator(generator, device)
        z = backend.to_device(gen.normal((int(n), self.n_components), dtype=np.float64), device)
        eps = backend.to_device(gen.normal((int(n), self.n_features_in_), dtype=np.float64), device)
        return z @ self.W_.T + self.mean_ + math.sqrt(self.noise_variance_) * eps


def _largest_variance(Xc):
    return float((Xc ** 2).sum(axis=0).max()) / Xc.shape[0]


def _check_noise_variance(sigma2, largest_variance):
    if not sigma2 > RELATIVE_ZERO * largest_variance:
        raise ValueError("PPCA.fit: the data lies in a q-dimensional subspace, so the ML noise "
                         "variance is 0 and the likelihood is unbounded; use fewer components")


def _ppca_e_step(Xc, W, sigma2, sq_norm):
    """One E-step of PPCA EM, and the mean log-likelihood of the current (W, σ²).

    Returns (mean log-likelihood, E[z] (n, q), Σ_n E[z_n z_nᵀ] (q, q)).  The
    likelihood uses the ML covariance S = X_cᵀX_c / n without forming it:
    ℓ/n = -½ [d log 2π + log|C| + tr(C⁻¹S)],  tr(C⁻¹S) = (tr S - tr(M⁻¹WᵀSW)) / σ².
    """
    xp = backend.xp_of(Xc)
    n, d = Xc.shape
    q = W.shape[1]
    M = W.T @ W + sigma2 * xp.eye(q)
    L = xp.linalg.cholesky(M)
    L_inv = solve_lower(L, xp.eye(q))
    M_inv = L_inv.T @ L_inv
    XW = Xc @ W                                                    # (n, q)
    Ez = XW @ M_inv                                                # rows: E[z_n] = M⁻¹Wᵀ(x_n - μ)
    sum_Ezz = n * sigma2 * M_inv + Ez.T @ Ez
    trace_CinvS = (sq_norm - float((XW * Ez).sum())) / (n * sigma2)
    logdet_C = (d - q) * math.log(sigma2) + 2.0 * float(xp.log(xp.diag(L)).sum())
    return -0.5 * (d * LOG_2PI + logdet_C + trace_CinvS), Ez, sum_Ezz

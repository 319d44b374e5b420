"""Sample-quality metrics computed in a classifier's feature space.

All functions take host NumPy arrays of features, one row per image (the
penultimate layer of ``minigen.metrics.classifier.Classifier``), and return plain
floats.  Each is cheap enough to run on a few thousand samples on a laptop.

* ``frechet_distance`` (FLD/FID): the Fréchet (2-Wasserstein) distance between
  Gaussians fitted to the two feature sets,
      d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})
  (Heusel et al. 2017; with a small classifier's features it is often called FLD).
* ``kernel_distance`` (KID): the unbiased estimate of the squared maximum mean
  discrepancy with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged
  over random subsets (Binkowski et al. 2018).  Unbiased: its expectation is 0
  when both sets come from one distribution, so it can be slightly negative.
* ``precision_recall``: k-nearest-neighbour manifold estimates (Kynkäänniemi et
  al. 2019).  Precision = share of generated samples inside the real manifold
  (fidelity); recall = share of real samples inside the generated manifold
  (coverage).  A sample is inside a set's manifold when it lies within the k-th
  nearest-neighbour radius of at least one member of the set.
* ``classifier_score`` (an inception-score analogue with the small classifier):
  exp(E_x KL(p(y|x) || p(y))), plus the histogram of predicted labels, which shows
  mode dropping directly.
* ``nearest_neighbour_distance``: for each sample, the distance to its nearest
  training example, reported against the same statistic of held-out real
  images: samples much closer to the training set than real test images are is a
  sign of memorisation.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

__all__ = ["frechet_distance", "gaussian_stats", "kernel_distance", "precision_recall",
           "classifier_score", "nearest_neighbour_distance", "conditional_accuracy"]


def _features(x, name):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of features (n, d), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: features contain NaN or inf (did the sampler diverge?)")
    return x


def gaussian_stats(features):
    """Mean (d,) and covariance (d, d) of a feature set (rows are samples)."""
    f = _features(features, "gaussian_stats")
    if f.shape[0] < 2:
        raise ValueError("gaussian_stats: need at least 2 samples for a covariance")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(features_a, features_b, eps=1e-6):
    """Fréchet distance between Gaussians fitted to two feature sets (FLD/FID).

    ``tr((S_a S_b)^{1/2})`` uses scipy's ``sqrtm``; when the product is nearly
    singular (few samples, dead features) a multiple ``eps`` of the identity is
    added to both covariances, as is standard, and tiny imaginary parts from
    round-off are dropped.
    """
    a, b = _features(features_a, "frechet_distance"), _features(features_b, "frechet_distance")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: feature sizes differ ({a.shape[1]} and {b.shape[1]})")
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s_a @ s_b)
    if caught or not np.all(np.isfinite(covmean)):  # singular product (e.g. dead ReLU features)
        offset = np.eye(s_a.shape[0]) * eps
        covmean = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    covmean = np.real(covmean)  # round-off can leave ~1e-10 imaginary parts
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def _mmd2_unbiased(x, y):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 between two equal-size sets."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = x.shape[0], y.shape[0]
    # drop the diagonals: k(x_i, x_i) terms make the plain V-statistic biased
    sum_xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    sum_yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return sum_xx + sum_yy - 2.0 * kxy.mean()


def kernel_distance(features_a, features_b, subset_size=1000, n_subsets=10, seed=0):
    """KID: mean and standard deviation of unbiased MMD^2 over random subsets.

    Returns ``(mean, std)``.  ``subset_size`` is capped by the smaller set.
    """
    a, b = _features(features_a, "kernel_distance"), _features(features_b, "kernel_distance")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"kernel_distance: feature sizes differ ({a.shape[1]} and {b.shape[1]})")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("kernel_distance: need at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        ia = rng.choice(a.shape[0], m, replace=False)
        ib = rng.choice(b.shape[0], m, replace=False)
        values.append(_mmd2_unbiased(a[ia], b[ib]))
    return float(np.mean(values)), float(np.std(values))


def _pairwise_distances(x, y):
    """Euclidean distances between the rows of x and y, (n_x, n_y)."""
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.sqrt(np.maximum(sq, 0.0))  # round-off can make tiny squares negative


def _knn_radii(x, k):
    """Distance from each row of x to its k-th nearest other row."""
    d = _pairwise_distances(x, x)
    # column 0 of the sorted row is the point itself (distance 0)
    return np.partition(d, k, axis=1)[:, k]


def _inside_manifold(points, members, radii, batch=1024):
    """For each point: is it within radius_j of some member j?"""
    inside = np.zeros(points.shape[0], dtype=bool)
    for start in range(0, points.shape[0], batch):
        d = _pairwise_distances(points[start:start + batch], members)
        inside[start:start + batch] = (d <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(real_features, fake_features, k=3):
    """k-NN precision and recall of generated features against real ones.

    Returns ``(precision, recall)``, both in [0, 1].
    """
    real = _features(real_features, "precision_recall")
    fake = _features(fake_features, "precision_recall")
    if real.shape[0] <= k or fake.shape[0] <= k:
        raise ValueError(f"precision_recall: need more than k={k} samples in each set")
    precision = _inside_manifold(fake, real, _knn_radii(real, k)).mean()
    recall = _inside_manifold(real, fake, _knn_radii(fake, k)).mean()
    return float(precision), float(recall)


def classifier_score(probs, eps=1e-12):
    """exp(E_x KL(p(y|x) || p(y))) and the histogram of predicted labels.

    ``probs`` is (n, classes) of class probabilities for generated images.  The
    score is high when each image is confidently one class (low conditional
    entropy) and the classes are used evenly (high marginal entropy); its maximum
    is the number of classes.  Returns ``(score, label_histogram)``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"classifier_score: expected (n, classes) probabilities, got shape {p.shape}")
    marginal = p.mean(axis=0)
    kl = (p * (np.log(p + eps) - np.log(marginal + eps)[None, :])).sum(axis=1)
    histogram = np.bincount(p.argmax(axis=1), minlength=p.shape[1])
    return float(np.exp(kl.mean())), histogram


def conditional_accuracy(probs, labels):
    """Share of class-conditional samples that the classifier assigns the asked-for class."""
    p = np.asarray(probs)
    labels = np.asarray(labels)
    if p.shape[0] != labels.shape[0]:
        raise ValueError(f"conditional_accuracy: {p.shape[0]} predictions but {labels.shape[0]} labels")
    return float((p.argmax(axis=1) == labels).mean())


def nearest_neighbour_distance(samples, train, batch=1024):
    """Distance from each sample to its nearest training example, (n,)."""
    s = _features(samples, "nearest_neighbour_distance")
    t = _features(train, "nearest_neighbour_distance")
    out = np.empty(s.shape[0])
    for start in range(0, s.shape[0], batch):
        out[start:start + batch] = _pairwise_distances(s[start:start + batch], t).min(axis=1)
    return out

"""Properties of the sample-quality metrics and the likelihood helpers (issue: data/metrics)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minigen.metrics.likelihood import (bits_per_dim, dequantized_bits_per_dim, logmeanexp,
                                        nats_from_bits_per_dim)
from minigen.metrics.sample_quality import (classifier_score, conditional_accuracy, frechet_distance,
                                            kernel_distance, nearest_neighbour_distance,
                                            precision_recall)


def _gaussian(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * scale + shift


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = _gaussian(500, 8, 0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_closed_form_for_gaussians():
    # For diagonal covariances the distance is |mu_a - mu_b|^2 + sum (sa - sb)^2 (standard deviations).
    a = _gaussian(20000, 3, 1)
    b = _gaussian(20000, 3, 2, shift=1.0, scale=2.0)
    expected = 3 * 1.0 ** 2 + 3 * (1.0 - 2.0) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.05)


def test_frechet_and_kid_grow_with_corruption():
    real = _gaussian(600, 6, 3)
    test = _gaussian(600, 6, 4)
    fld, kid = [], []
    for noise in [0.0, 0.3, 0.6, 1.2]:
        corrupted = test + noise * _gaussian(600, 6, 5)
        fld.append(frechet_distance(real, corrupted))
        kid.append(kernel_distance(real, corrupted, subset_size=300, n_subsets=5)[0])
    assert all(np.diff(fld) > 0), fld
    assert all(np.diff(kid) > 0), kid


@settings(max_examples=5)
@given(st.integers(0, 10_000))
def test_kid_is_unbiased_for_one_distribution(seed):
    # Over many independent pairs from one law the mean of the unbiased MMD^2 is ~0,
    # well inside a few standard errors, while the biased V-statistic would be clearly positive.
    vals = [kernel_distance(_gaussian(100, 4, seed * 100 + 2 * i), _gaussian(100, 4, seed * 100 + 2 * i + 1),
                            subset_size=100, n_subsets=1)[0] for i in range(40)]
    mean, se = np.mean(vals), np.std(vals) / np.sqrt(len(vals))
    assert abs(mean) < 4 * se + 1e-12
    assert np.min(vals) < 0 < np.max(vals)  # an unbiased estimate of 0 takes both signs


def test_precision_and_recall_are_one_for_identical_sets():
    x = _gaussian(300, 5, 6)
    assert precision_recall(x, x, k=3) == (1.0, 1.0)


def test_precision_recall_detect_mode_dropping():
    # Real: two clusters. Fake: only one of them -> high precision, recall about one half.
    real = np.concatenate([_gaussian(300, 2, 7, shift=-5), _gaussian(300, 2, 8, shift=5)])
    fake = _gaussian(300, 2, 9, shift=5)
    p, r = precision_recall(real, fake, k=3)
    assert p > 0.9 and 0.35 < r < 0.65


def test_classifier_score_extremes():
    k = 10
    confident_uniform = np.eye(k)[np.arange(1000) % k]
    score, hist = classifier_score(confident_uniform)
    assert score == pytest.approx(k, rel=1e-6) and (hist == 100).all()
    collapsed = np.tile(np.eye(k)[3], (1000, 1))
    score, hist = classifier_score(collapsed)
    assert score == pytest.approx(1.0, rel=1e-6) and hist[3] == 1000


def test_conditional_accuracy_and_nn_distance():
    probs = np.eye(3)[[0, 1, 2, 2]]
    assert conditional_accuracy(probs, [0, 1, 2, 0]) == 0.75
    train = np.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(nearest_neighbour_distance(np.array([[0.0, 1.0], [3.0, 4.0]]), train), [1.0, 0.0])


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="2-D"):
        kernel_distance(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="differ"):
        frechet_distance(np.zeros((5, 2)), np.zeros((5, 3)))


def test_bits_per_dim_round_trip_and_dequantization():
    d = 784
    assert bits_per_dim(d * math.log(2), d) == pytest.approx(1.0)
    assert nats_from_bits_per_dim(bits_per_dim(123.4, d), d) == pytest.approx(123.4)
    # A uniform density on [0,1]^D (log p = 0) is exactly 8 bits per 8-bit pixel.
    assert dequantized_bits_per_dim(0.0, d) == pytest.approx(8.0)
    # On [-1, 1] the uniform density is 2^-D: still 8 bits.
    assert dequantized_bits_per_dim(-d * math.log(2.0), d, scale=2.0) == pytest.approx(8.0)


def test_logmeanexp_is_stable_and_correct():
    a = np.array([[1000.0, 1000.0], [-np.inf, -np.inf]])
    out = logmeanexp(a, axis=1)
    assert out[0] == pytest.approx(1000.0) and out[1] == -np.inf
    b = np.log(np.array([1.0, 2.0, 3.0]))
    assert logmeanexp(b) == pytest.approx(math.log(2.0))

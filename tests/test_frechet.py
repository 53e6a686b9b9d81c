"""The Fréchet distance against closed forms and an independent computation (scipy's sqrtm)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from dimbench.quality import frechet_distance, gaussian_stats


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_identical_gaussians_are_at_distance_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(16), random_spd(rng, 16)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_diagonal_covariances_match_the_closed_form():
    # For diagonal covariances the trace term is sum((s1 - s2)^2) of the standard deviations.
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    s1, s2 = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-10)


def test_means_only_give_the_squared_distance():
    sigma = np.eye(3)
    assert frechet_distance([0.0, 0.0, 0.0], sigma, [1.0, 2.0, 2.0], sigma) == pytest.approx(9.0, rel=1e-12)


def test_full_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    sigma1, sigma2 = random_spd(rng, 12), random_spd(rng, 12)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_symmetric_in_its_two_gaussians():
    rng = np.random.default_rng(3)
    a = (rng.standard_normal(5), random_spd(rng, 5))
    b = (rng.standard_normal(5), random_spd(rng, 5))
    assert frechet_distance(*a, *b) == pytest.approx(frechet_distance(*b, *a), rel=1e-10)


def test_singular_covariances_from_few_samples_are_finite_and_non_negative():
    rng = np.random.default_rng(4)
    stats1 = gaussian_stats(rng.standard_normal((10, 64)))  # rank 9 of 64
    stats2 = gaussian_stats(rng.standard_normal((10, 64)) + 0.5)
    d = frechet_distance(*stats1, *stats2)
    assert np.isfinite(d) and d >= 0
    assert frechet_distance(*stats1, *stats1) == pytest.approx(0.0, abs=1e-8)
    # A rank-one covariance against itself shifted: the trace term still cancels.
    v = rng.standard_normal(6)
    low = np.outer(v, v)
    assert frechet_distance(np.zeros(6), low, np.ones(6), low) == pytest.approx(6.0, rel=1e-8)


def test_gaussian_stats_match_numpy():
    rng = np.random.default_rng(5)
    f = rng.standard_normal((50, 4)).astype(np.float32)
    mu, sigma = gaussian_stats(f)
    assert mu.dtype == sigma.dtype == np.float64
    assert mu.shape == (4,) and sigma.shape == (4, 4)
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False))
    assert gaussian_stats(f[:, :1])[1].shape == (1, 1)


@pytest.mark.parametrize("features, match", [
    (np.zeros((1, 4)), "at least 2 samples"),
    (np.zeros(4), r"\(samples, features\)"),
    (np.full((3, 2), np.nan), "NaN"),
])
def test_gaussian_stats_refuses_bad_input(features, match):
    with pytest.raises(ValueError, match=match):
        gaussian_stats(features)


@pytest.mark.parametrize("args, match", [
    ((np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "one length"),
    ((np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)), "two vectors"),
    ((np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), r"sigma1 must be \(3, 3\)"),
    ((np.zeros(3), np.eye(3), np.zeros(3), np.ones((3, 4))), r"sigma2 must be \(3, 3\)"),
    ((np.zeros(3), np.full((3, 3), np.inf), np.zeros(3), np.eye(3)), "sigma1 holds NaN"),
])
def test_frechet_distance_refuses_bad_shapes(args, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(*args)

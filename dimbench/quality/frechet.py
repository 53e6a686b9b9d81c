"""The Fréchet distance between two Gaussians, the one computation behind FID and dimbench's proxy scores.

For feature sets summarised by mean and covariance (``gaussian_stats``), the Fréchet (2-Wasserstein) distance is
``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``. Everything is float64 numpy; the result is a float >= 0.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,), covariance (F, F)) float64 of ``features`` (n, F), one sample per row; the covariance is the
    unbiased one (n - 1), as pytorch-fid and torch-fidelity compute it. ValueError for fewer than 2 samples, a
    shape other than 2-D, or non-finite values."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (samples, features), got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features hold NaN or infinite values")
    mu = f.mean(axis=0)
    sigma = np.atleast_2d(np.cov(f, rowvar=False))  # np.cov of one feature is 0-d
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)), float64, >= 0.

    mu (F,), sigma (F, F) symmetric positive semi-definite (singular is fine: fewer samples than features).
    The trace term avoids scipy's sqrtm of the non-symmetric product sigma1 sigma2, which turns complex or
    inaccurate when the covariances are singular: sigma1 sigma2 is similar to the symmetric PSD matrix
    A = sigma1^(1/2) sigma2 sigma1^(1/2), so tr((sigma1 sigma2)^(1/2)) = sum of sqrt(eigenvalues of A), both
    square roots from symmetric eigendecompositions, with round-off's tiny negative eigenvalues clipped to 0.
    """
    mu1, mu2 = (np.asarray(m, dtype=np.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (np.asarray(s, dtype=np.float64) for s in (sigma1, sigma2))
    if mu1.ndim != 1 or mu2.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be two vectors (F,) of one length, got shapes {mu1.shape} and {mu2.shape}")
    dim = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (dim, dim):
            raise ValueError(f"{name} must be ({dim}, {dim}) to match the means, got shape {s.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    sigma1 = (sigma1 + sigma1.T) / 2  # symmetric up to round-off already; eigh reads one triangle only
    sigma2 = (sigma2 + sigma2.T) / 2
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(_clip_round_off(w))) @ v.T
    a = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(_clip_round_off(np.linalg.eigvalsh((a + a.T) / 2))).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    # Mathematically >= 0; round-off can leave -1e-12 for identical Gaussians.
    return float(max(distance, 0.0))


def _clip_round_off(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those below its round-off level set to 0.

    Negative ones are round-off, and so are positive ones under (largest x size x machine epsilon): a singular
    covariance's zero eigenvalues come out as +-1e-16 or so, and their square roots (1e-8) would add up to a
    visible error in the trace term.
    """
    if eigenvalues.size == 0:
        return eigenvalues
    floor = max(float(eigenvalues.max()), 0.0) * eigenvalues.size * np.finfo(np.float64).eps
    return np.where(eigenvalues > floor, eigenvalues, 0.0)

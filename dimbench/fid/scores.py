"""Scores from Inception features: FID with dimbench's one Fréchet distance; Inception Score, KID and
precision/recall with torch-fidelity's own functions on the same features (its defaults: IS 10 splits, KID 100
subsets of up to 1000 with the cubic polynomial kernel, precision/recall with 3 nearest neighbours)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dimbench.quality.frechet import frechet_distance, gaussian_stats


def fid(fake_pool: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    mu, sigma = gaussian_stats(fake_pool)
    if mu.shape != np.asarray(mu_ref).shape:
        raise ValueError(f"reference statistics have {np.asarray(mu_ref).shape[0]} features, the Inception pool3 "
                         f"features {mu.shape[0]}")
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)


def inception_score(fake_logits: np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    # torch-fidelity is optional at run time (inception.available() says why it is missing)
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    splits = max(1, min(splits, len(fake_logits)))
    out = isc_features_to_metric(torch.from_numpy(np.asarray(fake_logits)), splits, True, seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def kid(fake_pool: np.ndarray, real_pool: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020) -> tuple[float, float, int]:
    # torch-fidelity is optional at run time (inception.available() says why it is missing)
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, len(fake_pool), len(real_pool))
    out = kid_features_to_metric(torch.from_numpy(np.asarray(fake_pool)), torch.from_numpy(np.asarray(real_pool)),
                                 kid_subsets=subsets, kid_subset_size=size, kid_kernel="poly",
                                 kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
                                 rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD], size


def precision_recall(fake_pool: np.ndarray, real_pool: np.ndarray, neighborhood: int = 3,
                     device: str = "cpu") -> tuple[float, float]:
    # torch-fidelity is optional at run time (inception.available() says why it is missing)
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    out = prc_features_to_metric(torch.from_numpy(np.asarray(fake_pool)).to(device),
                                 torch.from_numpy(np.asarray(real_pool)).to(device),
                                 prc_neighborhood=neighborhood, prc_batch_size=10000, save_cpu_ram=False,
                                 verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def all_scores(fake_pool: np.ndarray, fake_logits: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray,
               real_pool: np.ndarray | None) -> dict[str, Any]:
    """{fid, is_mean, is_std, and with real features: kid_mean, kid_std, kid_subset_size, precision, recall}."""
    out: dict[str, Any] = {"fid": fid(fake_pool, mu_ref, sigma_ref)}
    out["is_mean"], out["is_std"] = inception_score(fake_logits)
    if real_pool is not None:
        out["kid_mean"], out["kid_std"], out["kid_subset_size"] = kid(fake_pool, real_pool)
        out["precision"], out["recall"] = precision_recall(fake_pool, real_pool)
    return out

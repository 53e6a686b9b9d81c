"""Scores from Inception features: FID with dimbench's one Fréchet distance; Inception Score, KID and
precision/recall with torch-fidelity's own functions on the same features (its defaults: IS 10 splits, KID 100
subsets of up to 1000 with the cubic polynomial kernel, precision/recall with 3 nearest neighbours).

Precision/recall runs torch-fidelity's memory-saving path (``save_cpu_ram=True``): distances are computed
:data:`PRC_BATCH` rows at a time against all features and reduced at once, never held as the full N x N matrix
(the default path's 50,000 x 50,000 float32 matrices are 10 GB each); on the device given (a GPU when sampling
ran on one; torch-fidelity moves each block of distances back to host memory, so the host peak is the same).
Peak host memory of the call, measured by benchmarks/fid_prc_memory.py (peak RSS of a fresh process at N = 2,500,
5,000 and 10,000 generated against N / 5 real features, fitted and extrapolated to 50,000 against ADM's 10,000):
the default path 16·N² bytes, 40 GB at FID-50K; the memory-saving path with blocks of 2,500 rows about 44 kB·N,
2.2 GB (2.5 GB from the slope between the two largest runs; the features themselves, 0.5 GB of pool3, come on top)."""

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


#: Rows of the distance matrix computed at a time by precision/recall's memory-saving path.
PRC_BATCH = 2500
#: Precision/recall's k nearest neighbours (torch-fidelity's default).
NEIGHBORHOOD = 3


def precision_recall(fake_pool: np.ndarray, real_pool: np.ndarray, neighborhood: int = NEIGHBORHOOD,
                     device: str | torch.device = "cpu", batch: int = PRC_BATCH,
                     save_cpu_ram: bool = True) -> tuple[float, float]:
    # torch-fidelity is optional at run time (inception.available() says why it is missing)
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    out = prc_features_to_metric(torch.from_numpy(np.asarray(fake_pool)).to(device),
                                 torch.from_numpy(np.asarray(real_pool)).to(device),
                                 prc_neighborhood=neighborhood, prc_batch_size=batch, save_cpu_ram=save_cpu_ram,
                                 verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def all_scores(fake_pool: np.ndarray, fake_logits: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray,
               real_pool: np.ndarray | None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """{fid, is_mean, is_std, and with real features: kid_mean, kid_std, kid_subset_size, and precision, recall
    when both sets hold more than NEIGHBORHOOD features}."""
    out: dict[str, Any] = {"fid": fid(fake_pool, mu_ref, sigma_ref)}
    out["is_mean"], out["is_std"] = inception_score(fake_logits)
    if real_pool is not None:
        out["kid_mean"], out["kid_std"], out["kid_subset_size"] = kid(fake_pool, real_pool)
        if min(len(fake_pool), len(real_pool)) > NEIGHBORHOOD:  # each point needs k other points of its own set
            out["precision"], out["recall"] = precision_recall(fake_pool, real_pool, device=device)
    return out

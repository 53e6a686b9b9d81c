"""Sample-quality measures: the Fréchet distance (frechet.py) and the digits proxy metric (proxy.py).

The proxy metric ("digits Fréchet distance", ``fd_digits``) is dimbench's own small-run measure, never FID.
"""

from dimbench.quality.frechet import frechet_distance, gaussian_stats
from dimbench.quality.proxy import (
    FEATURE_RES,
    DigitsClassifier,
    accuracy,
    features,
    load_or_train_classifier,
    proxy_scores,
    train_classifier,
)

__all__ = [
    "FEATURE_RES", "DigitsClassifier", "accuracy", "features", "frechet_distance", "gaussian_stats",
    "load_or_train_classifier", "proxy_scores", "train_classifier",
]

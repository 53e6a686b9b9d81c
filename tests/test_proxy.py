"""The digits proxy metric: the classifier dimbench trains itself (held-out accuracy, determinism, its cache) and
the scores it gives real, degraded and random images."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dimbench.data import load_digits
from dimbench.quality import (
    FEATURE_RES,
    DigitsClassifier,
    accuracy,
    features,
    load_or_train_classifier,
    proxy_scores,
    train_classifier,
)

#: The held-out accuracy the classifier must reach (it gets about 0.99 on the 360 test digits).
MIN_TEST_ACCURACY = 0.95


@pytest.fixture
def one_thread():
    """One intra-op thread for training: on a busy 2-core machine a second spinning thread slows small
    convolutions down several-fold. The caller's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained():
    """(classifier, info, training seconds), trained once per test session on the digits train split at 16 px."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        clf, info = train_classifier(load_digits(16, "train"))
        return clf, info, time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def test_digits():
    return load_digits(16, "test")


def test_classifier_reaches_a_high_held_out_accuracy(trained, test_digits):
    clf, info, seconds = trained
    assert not clf.training
    assert set(info) == {"steps", "train_accuracy", "seed", "source"}
    assert info["steps"] == 400 and info["seed"] == 0 and "train split" in info["source"]
    assert info["train_accuracy"] > MIN_TEST_ACCURACY
    held_out = accuracy(clf, test_digits.x, test_digits.labels)
    print(f"digits classifier: {seconds:.1f} s to train, held-out accuracy {held_out:.3f}")
    assert held_out > MIN_TEST_ACCURACY
    # Any resolution is resized to FEATURE_RES first: the 8x8 originals and 32 px copies classify as well.
    for resolution in (8, 32):
        assert accuracy(clf, load_digits(resolution, "test").x, test_digits.labels) > MIN_TEST_ACCURACY


def test_training_is_deterministic_and_leaves_the_global_generator_alone(one_thread):
    data = load_digits(16, "train")
    state = torch.get_rng_state()
    a, info_a = train_classifier(data, steps=15, batch=32, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b, info_b = train_classifier(data, steps=15, batch=32, seed=1)
    c, _ = train_classifier(data, steps=15, batch=32, seed=2)
    assert info_a == info_b
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_adam_steps_match_the_algorithm():
    from dimbench.quality.proxy import _Adam

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = _Adam([p])
    grads = [torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-0.25, 3.0, 1.0])]
    m = v = np.zeros(3)
    expected = p.detach().numpy().astype(np.float64)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step(0.1)
        m = 0.9 * m + 0.1 * g.numpy()
        v = 0.999 * v + 0.001 * g.numpy() ** 2
        expected = expected - 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-6)


def test_training_refuses_data_it_cannot_learn():
    data = load_digits(8, "train")
    data.labels = None
    with pytest.raises(ValueError, match="labelled grey images"):
        train_classifier(data, steps=1)


def test_features_shapes_and_input_checks(trained, test_digits):
    clf = trained[0]
    f = features(clf, test_digits.x[:10], batch=4)
    assert f.shape == (10, 64) and f.dtype == np.float64 and (f >= 0).all()
    assert clf(torch.zeros(2, 1, FEATURE_RES, FEATURE_RES)).shape == (2, 10)
    # Samples outside [-1, 1] are clipped, as they would be when saved as images.
    bright = test_digits.x[:3] * 5
    np.testing.assert_allclose(features(clf, bright), features(clf, bright.clamp(-1, 1)))
    with pytest.raises(ValueError, match="grey images"):
        features(clf, torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        features(clf, torch.full((2, 1, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="3 labels"):
        accuracy(clf, test_digits.x[:3], test_digits.labels[:2])


def degraded(x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fakes of ever worse quality made from real images x (n, 1, 16, 16)."""
    n = len(x)
    return {
        "noise": torch.randn(x.shape, generator=generator).clamp(-1, 1),
        "blurred": F.interpolate(F.avg_pool2d(x, 4), size=x.shape[-1], mode="bilinear"),
        "shuffled": x.flatten(1)[:, torch.randperm(x[0].numel(), generator=generator)].view(n, *x.shape[1:]),
    }


def test_proxy_separates_real_images_from_degraded_ones(trained, test_digits):
    clf = trained[0]
    train = load_digits(16, "train")
    real = proxy_scores(clf, test_digits.x, train.x, train.labels)
    assert (real["n_real"], real["n_fake"]) == (360, 1437)
    assert real["accuracy"] > MIN_TEST_ACCURACY
    assert 0 <= real["fd"] < 30  # about 7
    for name, fake in degraded(test_digits.x, torch.Generator().manual_seed(0)).items():
        score = proxy_scores(clf, test_digits.x, fake, test_digits.labels)
        assert score["fd"] > 20 * real["fd"], (name, score["fd"], real["fd"])
    noise = proxy_scores(clf, test_digits.x, degraded(test_digits.x, torch.Generator().manual_seed(1))["noise"],
                         test_digits.labels)
    assert noise["accuracy"] < 0.3  # chance is 0.1: noise shows no digit


def test_proxy_without_labels_and_identical_sets(trained, test_digits):
    clf = trained[0]
    same = proxy_scores(clf, test_digits.x, test_digits.x)
    assert same["accuracy"] is None and same["fd"] == pytest.approx(0.0, abs=1e-6)
    # The generated images may come at another resolution than the real ones: the same digits resized 8 -> 32
    # instead of 8 -> 16 -> 32 differ about as much as the train and test digits do (fd under 10).
    assert proxy_scores(clf, test_digits.x, load_digits(32, "test").x)["fd"] < 30


def test_classifier_cache_is_written_once_and_reloaded(tmp_path, one_thread):
    cache = tmp_path / "cache" / "digits_classifier.pt"
    calls = []

    def data():
        calls.append(1)
        return load_digits(8, "train")

    first, info = load_or_train_classifier(cache, train_data_fn=data, steps=5, seed=3)
    assert calls == [1] and cache.exists()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left behind
    blob = torch.load(cache, weights_only=True)  # plain tensors and strings: loads without pickle's code paths
    assert json.loads(blob["info"]) == info and info["steps"] == 5 and info["seed"] == 3

    again, info_again = load_or_train_classifier(cache, train_data_fn=data, steps=5, seed=3)
    assert calls == [1] and info_again == info and isinstance(again, DigitsClassifier) and not again.training
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])

    load_or_train_classifier(cache, train_data_fn=data, steps=6, seed=3)  # other settings: trained again
    assert calls == [1, 1]
    assert json.loads(torch.load(cache, weights_only=True)["info"])["steps"] == 6

    cache.write_bytes(b"torn")
    with pytest.warns(UserWarning, match="cannot read the cached digits classifier"):
        load_or_train_classifier(cache, train_data_fn=data, steps=6, seed=3)
    assert calls == [1, 1, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_or_train_classifier(cache, train_data_fn=data, steps=6, seed=3)  # the rewritten file is valid
    assert calls == [1, 1, 1]

"""The reference classifier (trained with minigen, cached with its hash) and metrics in its features.

The classifier comes from conftest's ``reference_cache``: the user's cached one when its hash
and recipe check out, else trained once per test run.  Its accuracy is measured here from the
weights, never read from the JSON.  The train-if-absent and retrain-if-tampered paths run with
a stand-in for the training, so they take seconds.
"""
import json
import os

import numpy as np
import pytest

import minigen as mg
from minigen.data import load_dataset
from minigen.metrics import classifier as clf_mod
from minigen.metrics.sample_quality import frechet_distance, kernel_distance, precision_recall


@pytest.fixture(scope="session")
def classifier(reference_cache):
    return clf_mod.get_classifier("mnist", device="cpu")


@pytest.fixture(scope="session")
def mnist_test():
    return load_dataset("mnist", "test")


def test_classifier_reaches_its_accuracy_target(classifier, mnist_test):
    # Target: >= 97% on the 1,000 packaged test digits (>= 99% with full MNIST).
    target = 0.99 if len(mnist_test) >= 10_000 else 0.97
    acc = classifier.accuracy(mnist_test.images, mnist_test.labels)
    assert acc >= target
    assert acc == pytest.approx(classifier.test_accuracy)


def test_cache_records_hash_and_accuracy_and_is_reused(classifier, reference_cache, monkeypatch):
    (info_file,) = [p for p in os.listdir(reference_cache) if p.endswith(".json")]
    info = json.load(open(os.path.join(reference_cache, info_file)))
    weights = os.path.join(reference_cache, info_file[:-5] + ".npz")
    assert info["sha256"] == clf_mod._sha256(weights)
    assert info["test_accuracy"] == pytest.approx(classifier.test_accuracy)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded, not retrained")

    monkeypatch.setattr(clf_mod, "train_classifier", no_training)
    clf_mod._memo.clear()
    again = clf_mod.get_classifier("mnist", device="cpu")
    imgs = load_dataset("mnist", "test").images[:50]
    np.testing.assert_allclose(again.features_and_probs(imgs)[0], classifier.features_and_probs(imgs)[0])


def test_a_tampered_weight_file_is_retrained_not_trusted(classifier, reference_cache, monkeypatch, tmp_path):
    import shutil
    copy = tmp_path / "cache"
    shutil.copytree(reference_cache, copy)
    (npz,) = [p for p in os.listdir(copy) if p.endswith(".npz")]
    with open(copy / npz, "r+b") as f:  # flip bytes in the middle of the file
        f.seek(os.path.getsize(copy / npz) // 2)
        f.write(b"\x00\x01\x02\x03")
    monkeypatch.setenv("MINIGEN_CACHE", str(copy))
    calls = []

    def fake_training(train_set, mnist_test, **kw):
        calls.append(1)
        return clf_mod.LeNet(), 0.0

    monkeypatch.setattr(clf_mod, "train_classifier", fake_training)
    clf_mod._memo.clear()
    clf_mod.get_classifier("mnist", device="cpu")
    clf_mod._memo.clear()
    assert calls == [1]


def test_an_absent_classifier_is_trained_and_cached_with_its_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGEN_CACHE", str(tmp_path))
    calls = []

    def fake_training(train_set, test_set, **kw):
        calls.append({k: kw[k] for k in ("augment", "epochs")})
        return clf_mod.LeNet(generator=mg.Generator(0)), 0.5

    monkeypatch.setattr(clf_mod, "train_classifier", fake_training)
    clf_mod._memo.clear()
    first = clf_mod.get_classifier("mnist", device="cpu")
    weights, info_path = clf_mod.cache_paths("mnist", load_dataset("mnist", "train"))
    info = clf_mod.cached_info("mnist", weights, info_path)
    assert info is not None and info["sha256"] == clf_mod._sha256(weights)
    assert calls == [clf_mod.TRAINING["mnist"]] and first.test_accuracy == 0.5
    clf_mod._memo.clear()
    again = clf_mod.get_classifier("mnist", device="cpu")    # loaded from the cache, not trained again
    clf_mod._memo.clear()
    assert len(calls) == 1
    imgs = load_dataset("mnist", "test").images[:20]
    np.testing.assert_array_equal(again.features_and_probs(imgs)[0], first.features_and_probs(imgs)[0])
    # another recipe's file is not trusted
    with open(info_path) as f:
        stale = json.load(f)
    stale["training"] = {"augment": None, "epochs": 1}
    with open(info_path, "w") as f:
        json.dump(stale, f)
    assert clf_mod.cached_info("mnist", weights, info_path) is None


def test_fld_and_kid_grow_as_noise_corrupts_test_images(classifier, mnist_test):
    rng = np.random.default_rng(0)
    train = load_dataset("mnist", "train").images[:1000]
    f_train, _ = classifier.features_and_probs(train)
    f_test, _ = classifier.features_and_probs(mnist_test.images)
    assert frechet_distance(f_test, f_test) == pytest.approx(0.0, abs=1e-6)
    assert precision_recall(f_test, f_test) == (1.0, 1.0)
    fld, kid = [], []
    for sigma in [0.0, 0.1, 0.2, 0.4]:
        noisy = np.clip(mnist_test.images + sigma * rng.standard_normal(mnist_test.images.shape), 0, 1)
        f_noisy, _ = classifier.features_and_probs(noisy.astype(np.float32))
        fld.append(frechet_distance(f_noisy, f_train))
        kid.append(kernel_distance(f_noisy, f_train, subset_size=500, n_subsets=5)[0])
    assert all(np.diff(fld) > 0), fld
    assert all(np.diff(kid) > 0), kid


USER_CACHE = clf_mod.cache_dir()  # before the session fixture points MINIGEN_CACHE at a temporary one


def _fashion_available():
    try:
        load_dataset("fashion-mnist", "test")
    except (FileNotFoundError, ValueError):
        return False
    return True


def _fashion_cached():
    if not _fashion_available():
        return False
    _weights, info = clf_mod.cache_paths("fashion-mnist", load_dataset("fashion-mnist", "train"), USER_CACHE)
    return os.path.exists(info)


@pytest.mark.skipif(not (_fashion_available() and (_fashion_cached() or os.environ.get("MINIGEN_SLOW_TESTS"))),
                    reason="needs Fashion-MNIST and either its cached classifier or MINIGEN_SLOW_TESTS=1 "
                           "(training it takes about 10 minutes on 2 CPU cores)")
def test_fashion_classifier_reaches_90_percent(monkeypatch):
    monkeypatch.setenv("MINIGEN_CACHE", USER_CACHE)
    # Uses the user's cache (the one every evaluation uses); the accuracy is measured again
    # from the weights on all 10,000 test images, not read from the JSON.
    clf_mod._memo.clear()
    classifier = clf_mod.get_classifier("fashion-mnist", device="cpu")
    test = load_dataset("fashion-mnist", "test")
    acc = classifier.accuracy(test.images, test.labels)
    assert len(test) == 10_000
    assert acc >= 0.90
    assert acc == pytest.approx(classifier.test_accuracy)

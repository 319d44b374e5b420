"""The reference classifier whose features the sample metrics use.

FID uses an Inception network trained on ImageNet; for 28x28 digits and clothes
a small LeNet-style network trained on the dataset itself is the honest
equivalent (the distance in its features is often called FLD).  minigen trains
it with minigen, once per dataset, and caches it:

    $MINIGEN_CACHE (default ~/.cache/minigen)/classifier-<dataset>-<source tag>.npz
                                             /classifier-<dataset>-<source tag>.json

The JSON records the SHA-256 of the weight file and the test accuracy reached;
a weight file whose hash does not match is retrained, never trusted.  Targets:
>= 97% on the 1,000 packaged MNIST test digits (>= 99% on full MNIST) and >= 90%
on Fashion-MNIST.

Architecture (LeCun et al. 1998, with ReLU and max-pooling):
    conv5x5(1->32, pad 2) - ReLU - maxpool2      (B, 32, 14, 14)
    conv5x5(32->64, pad 2) - ReLU - maxpool2     (B, 64, 7, 7)
    linear(3136->128) - ReLU                     (B, 128)   <- the features
    linear(128->10)                              (B, 10)    logits
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .. import backend, nn, optim
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..checkpoint import atomic_write_bytes

__all__ = ["LeNet", "ReferenceClassifier", "get_classifier", "train_classifier", "cache_dir", "cache_paths",
           "cached_info"]


class LeNet(nn.Module):
    """The reference digit classifier, LeNet-style (LeCun et al. 1998): two conv + max-pool stages, two dense layers.

    Images (B, 1, 28, 28) -> logits (B, num_classes); ``features`` gives the (B, 128) penultimate layer.
    """

    def __init__(self, num_classes=10, generator=None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2, generator=generator)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2, generator=generator)
        self.fc1 = nn.Linear(64 * 7 * 7, 128, generator=generator)
        self.fc2 = nn.Linear(128, num_classes, generator=generator)

    def features(self, x):
        """Penultimate features: (B, 1, 28, 28) -> (B, 128)."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)       # (B, 32, 14, 14)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)       # (B, 64, 7, 7)
        return F.relu(self.fc1(F.flatten(h, 1)))         # (B, 128)

    def forward(self, x):
        """Class logits: (B, 1, 28, 28) -> (B, num_classes)."""
        return self.fc2(self.features(x))


def cache_dir():
    """Where the trained reference classifier is cached: ``$MINIGEN_CACHE``, else ~/.cache/minigen."""
    return os.environ.get("MINIGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minigen")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ReferenceClassifier:
    """A trained LeNet plus where it came from and how accurate it is."""

    def __init__(self, model, test_accuracy, dataset, source, device="cpu"):
        self.model, self.test_accuracy, self.dataset, self.source = model, test_accuracy, dataset, source
        self.device = device
        self.model.eval()

    def features_and_probs(self, images, batch=500):
        """(features (n, 128), class probabilities (n, 10)) of host images in [0, 1]."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (1, 28, 28):
            raise ValueError(f"classifier: expected images of shape (n, 1, 28, 28), got {images.shape}")
        feats, probs = [], []
        with no_grad():
            for start in range(0, len(images), batch):
                x = Tensor(images[start:start + batch]).to(self.device)
                f = self.model.features(x)
                feats.append(f.numpy())
                probs.append(F.softmax(self.model.fc2(f), dim=1).numpy())
        return np.concatenate(feats).astype(np.float64), np.concatenate(probs).astype(np.float64)

    def accuracy(self, images, labels):
        """The fraction of ``images`` (N, 1, 28, 28) whose predicted class equals ``labels`` (N,)."""
        _, p = self.features_and_probs(images)
        return float((p.argmax(1) == np.asarray(labels)).mean())


# How each dataset's classifier trains.  Digits get +-2 pixel shifts (small set:
# about 60,000 image presentations; the full set: 2 epochs).  Clothes are
# centred in the frame, so shifts only make the task harder; mirror images are
# still the same garment, and 6 epochs over the 60,000 images reach >= 90%.
TRAINING = {
    "mnist": dict(augment="shift", epochs=None),
    "fashion-mnist": dict(augment="hflip", epochs=6),
}


def train_classifier(train_set, test_set, epochs=None, augment="shift", batch_size=64, lr=1e-3, seed=0,
                     device="cpu", verbose=False):
    """Train a LeNet with minigen on a dataset; returns (model, test accuracy).

    augment: "shift" (random +-2 pixel translations), "hflip" (random mirror
    images) or None.  Adam with a cosine learning rate after a short warm-up.
    """
    from tqdm import tqdm

    from ..data import DataLoader
    from ..data.transforms import random_hflip, random_shift

    if epochs is None:  # about 60,000 image presentations for the small set, 2 epochs for the full ones
        epochs = max(2, int(np.ceil(60_000 / len(train_set))))
    aug_gen = backend.Generator(seed + 2)
    transforms = {"shift": lambda x: random_shift(x, 2, aug_gen), "hflip": lambda x: random_hflip(x, aug_gen),
                  None: None}
    if augment not in transforms:
        raise ValueError(f"train_classifier: augment must be 'shift', 'hflip' or None, got {augment!r}")
    model = LeNet(generator=backend.Generator(seed)).to(device)
    opt = optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader((train_set.images, train_set.labels), batch_size=batch_size, shuffle=True,
                        drop_last=True, generator=backend.Generator(seed + 1), device=device,
                        transform=transforms[augment])
    steps = epochs * len(loader)
    schedule = optim.CosineWarmupLR(opt, warmup_steps=min(100, steps // 10), total_steps=steps)
    bar = tqdm(total=steps, disable=not verbose, desc=f"classifier ({train_set.name})", mininterval=2.0)
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            schedule.step()
            bar.update(1)
    bar.close()
    clf = ReferenceClassifier(model, 0.0, train_set.name, train_set.source, device)
    clf.test_accuracy = clf.accuracy(test_set.images, test_set.labels)
    return model, clf.test_accuracy


_memo = {}


def cache_paths(dataset, train_set, directory=None):
    """(weights .npz, info .json) of a dataset's cached classifier in ``directory`` (default ``cache_dir()``).

    The file name carries a tag of the training data's source, so classifiers of
    different data never share a file.
    """
    tag = hashlib.sha1(train_set.source.encode()).hexdigest()[:8]
    base = os.path.join(directory or cache_dir(), f"classifier-{dataset}-{tag}")
    return base + ".npz", base + ".json"


def cached_info(dataset, weights, info_path):
    """The JSON record of a cached classifier that can be trusted, else None.

    Trusted means: both files exist, the weight file's SHA-256 is the one recorded
    when it was written (a changed or damaged file is retrained, never loaded), and
    it was trained by today's recipe for ``dataset`` (``TRAINING``).
    """
    if not (os.path.exists(weights) and os.path.exists(info_path)):
        return None
    try:
        with open(info_path) as f:
            info = json.load(f)
        if info.get("sha256") != _sha256(weights) or info.get("training") != TRAINING.get(dataset, {}):
            return None
        return info
    except (OSError, ValueError, AttributeError):
        return None


def get_classifier(dataset, data_dir=None, device=None, retrain=False, verbose=False):
    """The cached reference classifier of ``dataset``, trained first if absent."""
    from ..data import load_dataset

    train_set = load_dataset(dataset, "train", data_dir=data_dir)
    test_set = load_dataset(dataset, "test", data_dir=data_dir)
    weights, info_path = cache_paths(dataset, train_set)
    key = (dataset, weights)
    device = device or backend.get_default_device()
    if key in _memo and not retrain:
        return _memo[key]
    model = LeNet()
    training = dict(TRAINING.get(dataset, {}))
    info = None if retrain else cached_info(dataset, weights, info_path)
    if info is not None:
        try:
            model.load(weights)
        except (OSError, ValueError, KeyError, RuntimeError):
            info = None
    if info is None:
        if verbose:
            print(f"training the reference classifier for {dataset} ({train_set.source}); cached in {cache_dir()}")
        model, acc = train_classifier(train_set, test_set, device=device, verbose=verbose,
                                      **training)
        os.makedirs(cache_dir(), exist_ok=True)
        model.save(weights)
        info = {"dataset": dataset, "source": train_set.source, "test_accuracy": acc, "sha256": _sha256(weights),
                "training": training}
        atomic_write_bytes(info_path, lambda f: f.write(json.dumps(info, indent=2).encode()))
        if verbose:
            print(f"reference classifier test accuracy: {acc:.4f}")
    clf = ReferenceClassifier(model.to(device), float(info["test_accuracy"]), dataset, train_set.source, device)
    _memo[key] = clf
    return clf

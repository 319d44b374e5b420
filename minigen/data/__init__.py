"""Data for minigen: real images with no download, 2-D toy sets, transforms, a loader.

    from minigen.data import load_dataset, DataLoader
    train = load_dataset("mnist", "train")       # full MNIST IDX files if given, else 5,000 packaged digits
    print(train.source)                          # says exactly what was loaded

* ``idx``: the IDX file format (checked reader, writer);
* ``datasets``: ``load_dataset("mnist" | "fashion-mnist", split, data_dir)``;
* ``toy``: ring of 8 Gaussians, two moons, swiss roll, checkerboard;
* ``transforms``: scaling, binarization, padding, dequantization;
* ``loader``: ``DataLoader`` with explicit-generator shuffling and resumable state.
"""
from . import toy, transforms
from .datasets import DATASETS, Dataset, load_dataset, mnist5k_split
from .idx import IDXError, read_idx, write_idx
from .loader import DataLoader

__all__ = ["DATASETS", "Dataset", "load_dataset", "mnist5k_split", "IDXError", "read_idx", "write_idx",
           "DataLoader", "toy", "transforms"]

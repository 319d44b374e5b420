"""A minimal DataLoader: batches of host arrays, shuffled by an explicit generator, moved to a device.

    loader = DataLoader((images, labels), batch_size=64, shuffle=True,
                        generator=mg.Generator(0), device="gpu")
    for epoch in range(3):
        for x, y in loader:          # minigen Tensors on the GPU
            ...

Each pass over the loader is one epoch.  With ``shuffle=True`` the order of an
epoch is a permutation drawn from ``generator`` when the epoch starts, so one
seed gives the same batches on every run.  ``state_dict()`` records where the
loader is (epoch, batches already handed out, and the generator's state when
the epoch's order was drawn), and ``load_state_dict`` puts a fresh loader back
there: the next pass continues the interrupted epoch with exactly the batches
the uninterrupted run would have seen.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..autograd import Tensor

__all__ = ["DataLoader"]


class DataLoader:
    """Iterate over aligned arrays in mini-batches of minigen Tensors.

    data:       a tuple/list of arrays with a common first axis (N, ...), a single
                array, or a ``Dataset`` (its ``(images, labels)``).
    batch_size: rows per batch; the last batch is smaller unless ``drop_last``.
    shuffle:    draw a new order each epoch from ``generator`` (default: the CPU
                default generator, ``minigen.manual_seed`` seeds it).
    device:     where the batch Tensors go (default: the default device).
    transform:  a function applied to the first array of each batch (a NumPy
                array) before it is moved, e.g. ``lambda x: binarize_dynamic(x, gen)``.

    Yields tuples with one Tensor per array.  ``len(loader)`` is the number of
    batches per epoch.  Only one pass may be in progress at a time.
    """

    def __init__(self, data, batch_size=1, shuffle=False, drop_last=False, generator=None, device=None,
                 transform=None):
        if hasattr(data, "images") and hasattr(data, "labels"):
            data = (data.images, data.labels)
        elif not isinstance(data, (tuple, list)):
            data = (data,)
        arrays = tuple(backend.to_numpy(a.data if isinstance(a, Tensor) else a) for a in data)
        if not arrays:
            raise ValueError("DataLoader: no arrays given")
        n = len(arrays[0])
        for a in arrays:
            if a.ndim == 0 or len(a) != n:
                shapes = ", ".join(str(b.shape) for b in arrays)
                raise ValueError(f"DataLoader: the arrays must share their first axis, got shapes {shapes}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        if drop_last and n < batch_size:
            raise ValueError(f"DataLoader: drop_last=True with batch_size {batch_size} > {n} rows "
                             "would give no batches at all")
        self.arrays = arrays
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.generator = generator if generator is not None or not shuffle else backend.default_generator("cpu")
        self.device = backend.check_device(device)
        self.transform = transform
        self.epoch = 0            # epochs started so far
        self.position = 0         # batches handed out in the current epoch
        self._order = None        # this epoch's row order
        self._order_state = None  # generator state the order was drawn from (shuffle only)
        self._resume = False      # the next pass continues a restored, unfinished epoch

    @property
    def num_rows(self):
        """The number of examples (rows of each array) in the dataset."""
        return len(self.arrays[0])

    def __len__(self):
        n, b = self.num_rows, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def _draw_order(self):
        if not self.shuffle:
            return np.arange(self.num_rows)
        return backend.to_numpy(self.generator.permutation(self.num_rows))

    def __iter__(self):
        if self._resume:
            self._resume = False
        else:
            self.epoch += 1
            self.position = 0
            self._order_state = self.generator.get_state() if self.shuffle else None
            self._order = self._draw_order()
        while self.position < len(self):
            rows = self._order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
            batch = self._batch(rows)
            self.position += 1  # count the batch as consumed before handing it out (for state_dict)
            yield batch

    def _batch(self, rows):
        batch = [a[rows] for a in self.arrays]  # fancy indexing copies: batches never alias the data
        if self.transform is not None:
            batch[0] = self.transform(batch[0])
        return tuple(Tensor(backend.to_device(b, self.device)) for b in batch)

    # --- checkpointing -----------------------------------------------------
    def state_dict(self) -> dict:
        """Where the loader is: epoch, batches consumed, and the generator states (JSON-friendly)."""
        return {"epoch": self.epoch, "position": self.position, "num_rows": self.num_rows,
                "batch_size": self.batch_size, "shuffle": self.shuffle, "drop_last": self.drop_last,
                "order_generator": self._order_state,
                "generator": self.generator.get_state() if self.generator is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict``; the next pass resumes that epoch at that batch.

        Also restores the generator's current state, so later epochs draw the same orders.
        """
        for key in ("num_rows", "batch_size", "shuffle", "drop_last"):
            mine = getattr(self, key)
            if state.get(key) != mine:
                raise ValueError(f"DataLoader.load_state_dict: the saved loader had {key}={state.get(key)!r}, "
                                 f"this one has {mine!r}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order_state = state.get("order_generator")
        if self.shuffle and self._order_state is not None:
            replay = backend.Generator(0, self.generator.device)
            replay.set_state(self._order_state)
            self._order = backend.to_numpy(replay.permutation(self.num_rows))
        else:
            self._order = np.arange(self.num_rows)
        if state.get("generator") is not None and self.generator is not None:
            self.generator.set_state(state["generator"])
        self._resume = self.epoch > 0 and self.position < len(self)

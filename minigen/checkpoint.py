"""Checkpoints: nested state saved to one ``.npz`` file, atomically, without pickle.

A training run's state is a tree: dicts and lists whose leaves are arrays
(model weights, Adam moments), Tensors, or plain JSON values (step counters,
hyper-parameters, a generator's state).  ``save_tree`` splits the tree into

* the arrays, stored as ``.npz`` members named by their path (``"model/fc.weight"``),
* everything else, stored as one JSON string member ``"__tree__"`` in which each
  array leaf is replaced by ``{"__array__": "<member name>"}``,

so ``load_tree`` rebuilds the same tree with ``np.load(..., allow_pickle=False)``:
no code can run from a checkpoint file.

Nothing is lost: the file is written to a temporary file in the same directory,
flushed and fsync'ed, then renamed over the old one with ``os.replace`` (atomic on
POSIX and Windows).  A crash or Ctrl-C during the write leaves the previous
checkpoint untouched; at worst a stray ``*.tmp`` file remains.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from . import backend
from .autograd import Tensor

__all__ = ["save_tree", "load_tree", "atomic_write_bytes", "atomic_write_text", "remove_stray_temp_files", "to_json",
           "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a minigen checkpoint."""


def _split(tree, prefix, arrays):
    """Replace array leaves by references, collecting the arrays."""
    if isinstance(tree, Tensor):
        tree = tree.data
    if backend.is_array(tree):
        if tree.dtype.kind not in "biufc":   # object/str arrays would need pickle to load: refuse them here
            raise TypeError(f"save_tree: the array at {prefix or 'root'!r} has dtype {tree.dtype}; "
                            "only numeric and boolean arrays can be stored")
        name = prefix or "root"
        if name in arrays:
            raise ValueError(f"save_tree: two leaves map to the member name {name!r}")
        arrays[name] = backend.to_numpy(tree)
        return {"__array__": name}
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            if not isinstance(key, str):
                raise TypeError(f"save_tree: dict keys must be strings, got {key!r} under {prefix!r}")
            out[key] = _split(value, f"{prefix}/{key}" if prefix else key, arrays)
        return out
    if isinstance(tree, (list, tuple)):
        return [_split(v, f"{prefix}/{i}" if prefix else str(i), arrays) for i, v in enumerate(tree)]
    if isinstance(tree, (np.integer, np.floating, np.bool_)):
        return tree.item()
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"save_tree: cannot store a {type(tree).__name__} at {prefix!r} "
                    "(only arrays, Tensors, dicts, lists and JSON scalars)")


def _join(tree, arrays):
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {k: _join(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, arrays) for v in tree]
    return tree


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path, write_fn):
    """Call ``write_fn(file)`` on a temp file beside ``path``, then rename it into place."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600; every run file gets the usual permissions
        os.replace(tmp, path)  # the atomic step: readers see the old file or the new one
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def to_json(obj, indent=None):
    """``json.dumps`` that writes NaN and infinities as null (bare NaN is not JSON)."""
    def clean(v):
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=indent, allow_nan=False)


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically: a reader sees the old file or the new one."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def remove_stray_temp_files(directory):
    """Delete the ``<name>.<random>.tmp`` files that writes killed mid-way left in ``directory``.

    Returns the names removed.  Only files matching the pattern of ``atomic_write_bytes``
    (a sibling's name, a dot, eight or more random characters, ``.tmp``) are touched.
    """
    import re

    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(directory, name)
        if re.fullmatch(r".+\.[A-Za-z0-9_]{8,}\.tmp", name) and os.path.isfile(path) and not os.path.islink(path):
            try:
                os.unlink(path)
                removed.append(name)
            except OSError:
                pass
    return removed


def save_tree(path, tree) -> None:
    """Write a nested state tree to ``path`` (.npz) atomically."""
    arrays = {}
    skeleton = _split(tree, "", arrays)
    if "__tree__" in arrays:
        raise ValueError("save_tree: '__tree__' is a reserved member name")
    members = dict(arrays)
    members["__tree__"] = np.array(json.dumps(skeleton))
    atomic_write_bytes(path, lambda f: np.savez(f, **members))


def load_tree(path):
    """Read a tree written by ``save_tree`` (arrays come back as NumPy arrays)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):     # a single .npy array saved under this name
            raise ValueError("it holds one .npy array, not an .npz archive")
        with loaded as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "allow_pickle" in reason or "pickle" in reason:   # NumPy's hint to unpickle is never the answer here
            reason = "it is not an .npz archive of plain arrays"
        raise CheckpointError(f"{path}: not a readable minigen checkpoint ({reason})") from None
    if "__tree__" not in arrays:
        raise CheckpointError(f"{path}: an .npz file, but not a minigen checkpoint (no '__tree__' member)")
    try:
        skeleton = json.loads(str(arrays.pop("__tree__")))
        return _join(skeleton, arrays)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint structure is damaged ({exc})") from None

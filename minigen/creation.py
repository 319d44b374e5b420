"""Making tensors: ``mg.tensor``, ``zeros``, ``ones``, ``randn``, ``rand`` ...

New floating tensors get the default dtype (float32 unless changed with
``mg.set_default_dtype``) and the default device, unless told otherwise.  Random
ones draw from an explicit ``Generator`` (or the device's default generator,
seeded by ``mg.manual_seed``) so every run is reproducible.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .autograd import Tensor

__all__ = ["tensor", "as_tensor", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like",
           "arange", "eye", "randn", "rand", "randint", "randn_like", "rand_like"]


def _dtype(dtype):
    return np.dtype(dtype) if dtype is not None else backend.get_default_dtype()


def tensor(data, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A new leaf tensor holding a copy of ``data`` (array, list or number).

    Arrays keep their dtype unless ``dtype`` is given; Python floats become the
    default dtype, Python ints int64.
    """
    if isinstance(data, Tensor):
        data = data.data
    device = backend.check_device(device) if device is not None else (
        backend.device_of(data) if backend.is_array(data) else backend.get_default_device())
    xp = backend.get_array_module(device)
    if hasattr(data, "dtype"):
        array = xp.array(backend.to_device(data, device), dtype=dtype, copy=True)
    else:
        probe = np.asarray(data)
        if dtype is None:
            dtype = probe.dtype if probe.dtype.kind in "biu" else backend.get_default_dtype()
        array = xp.asarray(probe, dtype=dtype)
    return Tensor(array, requires_grad=requires_grad)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like ``tensor`` but shares memory with ``data`` when no conversion is needed."""
    if isinstance(data, Tensor) and dtype is None and device is None:
        return data
    if isinstance(data, np.ndarray) and device in (None, "cpu") and (dtype is None or data.dtype == dtype):
        return Tensor(data)
    return tensor(data, dtype=dtype, device=device)


def _shape(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


def zeros(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A tensor of zeros with the given shape (ints or one tuple)."""
    xp = backend.get_array_module(device)
    return Tensor(xp.zeros(_shape(shape), dtype=_dtype(dtype)), requires_grad=requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A tensor of ones with the given shape (ints or one tuple)."""
    xp = backend.get_array_module(device)
    return Tensor(xp.ones(_shape(shape), dtype=_dtype(dtype)), requires_grad=requires_grad)


def full(shape, value, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A tensor of ``shape`` filled with ``value``."""
    xp = backend.get_array_module(device)
    return Tensor(xp.full(tuple(shape), value, dtype=_dtype(dtype)), requires_grad=requires_grad)


def zeros_like(x: Tensor, dtype=None) -> Tensor:
    """Zeros with x's shape and device (x's dtype unless ``dtype`` is given)."""
    return zeros(x.shape, dtype=dtype or x.dtype, device=x.device)


def ones_like(x: Tensor, dtype=None) -> Tensor:
    """Ones with x's shape and device (x's dtype unless ``dtype`` is given)."""
    return ones(x.shape, dtype=dtype or x.dtype, device=x.device)


def full_like(x: Tensor, value, dtype=None) -> Tensor:
    """``value`` everywhere, with x's shape and device (x's dtype unless ``dtype`` is given)."""
    return full(x.shape, value, dtype=dtype or x.dtype, device=x.device)


def arange(start, stop=None, step=1, dtype=None, device=None) -> Tensor:
    """The 1-d tensor start, start + step, ... below ``stop`` (``arange(n)`` counts 0..n-1)."""
    xp = backend.get_array_module(device)
    if stop is None:
        start, stop = 0, start
    values = xp.arange(start, stop, step)
    if dtype is not None:
        values = values.astype(dtype)
    return Tensor(values)


def eye(n, dtype=None, device=None) -> Tensor:
    """The (n, n) identity matrix."""
    return Tensor(backend.get_array_module(device).eye(n, dtype=_dtype(dtype)))


def _generator(generator, device):
    if generator is not None:
        return generator
    return backend.default_generator(device)


def randn(*shape, generator=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Samples of N(0, 1) from ``generator`` (default: the device's default generator)."""
    device = backend.check_device(device if device is not None else
                                  (generator.device if generator is not None else None))
    g = _generator(generator, device)
    array = backend.to_device(g.normal(_shape(shape), dtype=_dtype(dtype)), device)
    return Tensor(array, requires_grad=requires_grad)


def rand(*shape, generator=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Samples of U[0, 1) from ``generator``."""
    device = backend.check_device(device if device is not None else
                                  (generator.device if generator is not None else None))
    g = _generator(generator, device)
    array = backend.to_device(g.uniform(_shape(shape), dtype=_dtype(dtype)), device)
    return Tensor(array, requires_grad=requires_grad)


def randint(low, high, shape, generator=None, device=None) -> Tensor:
    """Integers in [low, high) from ``generator`` (int64)."""
    device = backend.check_device(device if device is not None else
                                  (generator.device if generator is not None else None))
    g = _generator(generator, device)
    return Tensor(backend.to_device(g.integers(low, high, tuple(shape)), device))


def randn_like(x: Tensor, generator=None) -> Tensor:
    """N(0, 1) samples from ``generator`` with x's shape, dtype and device."""
    return randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def rand_like(x: Tensor, generator=None) -> Tensor:
    """U[0, 1) samples from ``generator`` with x's shape, dtype and device."""
    return rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)

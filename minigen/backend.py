"""Array backends: NumPy on the CPU, CuPy on the GPU.

This is the only module in minigen that imports CuPy, and it imports it lazily,
the first time somebody asks for the "gpu" device. Everything else asks this
module for the array module ``xp`` of a device and writes ``xp.exp(...)`` so the
same code runs on both.

What lives here
---------------
* device names: ``"cpu"`` (NumPy) and ``"gpu"`` (CuPy, the current CUDA device);
* ``get_array_module(device)``, ``device_of(array)``, ``xp_of(array)``,
  ``is_array(obj)``, ``to_numpy``, ``to_device``;
* two array functions that NumPy lacks or that several modules need: ``erf`` and
  ``logsumexp`` (on raw arrays of either device; ``F.logsumexp`` is the Tensor op);
* the default device (``set_default_device``, or the ``MINIGEN_DEVICE``
  environment variable) and the default floating dtype (float32; the gradient
  tests switch to float64);
* ``Generator``: an explicitly seeded random stream.  minigen never touches
  NumPy's or CuPy's global random state;
* ``tune_malloc()``: an explicit, process-wide glibc allocator setting that the
  benchmarks call (importing minigen changes nothing in the process).

Random numbers are always drawn on the host by NumPy's PCG64 and then copied to
the device.  That costs one host-to-device copy of the noise per draw, and buys
two things a learner and a tester care about: the same seed gives the same
numbers on the CPU and on the GPU, and a generator's state is a small dict that a
checkpoint can store.
"""
from __future__ import annotations

import os

import numpy as np

DEVICES = ("cpu", "gpu")


_cupy = None            # the cupy module once imported
_cupy_error = None      # why importing it failed, if it did


def _import_cupy():
    """Import CuPy once; return the module or None and remember why not."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy  # noqa: WPS433 (the one place cupy is imported)

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("CuPy found no CUDA device")
            _cupy = cupy
        except Exception as exc:  # ImportError, CUDA driver errors, ...
            _cupy_error = exc
    return _cupy


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return _import_cupy() is not None


def _require_gpu():
    cp = _import_cupy()
    if cp is None:
        raise RuntimeError(
            "device 'gpu' needs CuPy and a CUDA device, but "
            f"{type(_cupy_error).__name__}: {_cupy_error}. "
            "Install the CuPy wheel for your CUDA version, e.g. `pip install cupy-cuda12x` "
            "(or `pip install -e \".[gpu]\"`), or use device='cpu'."
        )
    return cp


def check_device(device) -> str:
    """Normalise a device name and reject unknown ones with a clear message."""
    if device is None:
        return get_default_device()
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'gpu', got {device!r}")
    name = device.lower()
    if name in ("cuda", "gpu") or name.startswith("cuda:"):
        name = "gpu"
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}; minigen knows {DEVICES}")
    return name


def get_array_module(device=None):
    """The array module (``numpy`` or ``cupy``) that holds arrays of ``device``."""
    device = check_device(device)
    if device == "cpu":
        return np
    return _require_gpu()


def device_of(array) -> str:
    """"cpu" for NumPy arrays (and scalars), "gpu" for CuPy arrays."""
    if isinstance(array, np.ndarray) or np.isscalar(array):
        return "cpu"
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return "gpu"
    raise TypeError(f"expected a NumPy or CuPy array, got {type(array).__name__}")


def xp_of(array):
    """The array module of an existing array."""
    return np if device_of(array) == "cpu" else _cupy


def is_array(obj) -> bool:
    """True for a NumPy or CuPy ndarray; False for Tensors, lists, Python and NumPy scalars.

    CuPy is recognised by its type's module, so asking never imports it.
    """
    return isinstance(obj, np.ndarray) or type(obj).__module__.startswith("cupy")


def to_numpy(array) -> np.ndarray:
    """A host NumPy copy (or the array itself when it already lives on the host)."""
    if isinstance(array, np.ndarray):
        return array
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def to_device(array, device):
    """Move an array to ``device``; a no-op when it is already there."""
    device = check_device(device)
    if device == "cpu":
        return to_numpy(array)
    cp = _require_gpu()
    return cp.asarray(array)


def erf(array):
    """The error function elementwise on either device (NumPy has none: SciPy / cupyx)."""
    if device_of(array) == "cpu":
        from scipy.special import erf as scipy_erf
        return scipy_erf(array)
    import cupyx.scipy.special  # CuPy's SciPy twin, GPU only
    return cupyx.scipy.special.erf(array)


def logsumexp(array, axis=None, keepdims=False):
    """log sum_i exp(a_i) along ``axis`` (None: all axes) on a raw array of either device.

    With m the largest entry, log sum_i e^(a_i) = m + log sum_i e^(a_i - m): every
    exponent is <= 0 (no overflow) and the largest term is exactly 1 (the sum cannot
    underflow to 0).  A slice that is all -inf gives -inf (not nan).  The Tensor op
    ``F.logsumexp``, the GMM's responsibilities and ``metrics.logmeanexp`` use it.
    """
    xp = xp_of(array)
    m = array.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)   # an all -inf slice: shift by 0, not by -inf (-inf + inf = nan)
    e = xp.asarray(array - m)            # a fresh temporary: exp in place, no second full-size array
    xp.exp(e, out=e)
    with np.errstate(divide="ignore"):   # an all -inf slice: log(0) = -inf is the answer
        out = xp.log(e.sum(axis=axis, keepdims=True))
    out += m
    if keepdims:
        return out
    return out.reshape(()) if axis is None else out.squeeze(axis)


# ----------------------------------------------------------------------------
# defaults: device and floating dtype
# ----------------------------------------------------------------------------

_default_device = None
_default_dtype = np.dtype(np.float32)


def get_default_device() -> str:
    """The device new tensors go to: set in code, else ``$MINIGEN_DEVICE``, else "cpu"."""
    global _default_device
    if _default_device is None:
        env = os.environ.get("MINIGEN_DEVICE", "cpu").strip() or "cpu"
        try:
            _default_device = check_device(env)
        except ValueError as exc:
            raise ValueError(f"MINIGEN_DEVICE={env!r} is not a device: {exc}") from None
    return _default_device


def set_default_device(device) -> None:
    """Make ``device`` the default for new tensors and modules (checks it is usable)."""
    global _default_device
    device = check_device(device)
    get_array_module(device)  # fail now, with the install hint, not later
    _default_device = device


def get_default_dtype() -> np.dtype:
    """The floating dtype of new tensors and parameters (float32 unless set)."""
    return _default_dtype


def set_default_dtype(dtype) -> None:
    """Set the floating dtype of new tensors and parameters (float32 or float64)."""
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"default dtype must be a floating dtype, got {dtype}")
    _default_dtype = dtype


# ----------------------------------------------------------------------------
# random numbers
# ----------------------------------------------------------------------------

class Generator:
    """An explicitly seeded random stream that hands out arrays on one device.

    ``Generator(seed, device)``.  Numbers are drawn by NumPy's PCG64 on the host
    and moved to the device, so a seed means the same numbers on every device.
    ``get_state()`` returns a JSON-friendly dict; ``set_state`` restores it.
    """

    def __init__(self, seed=None, device=None):
        self.device = check_device(device)
        self.manual_seed(seed)

    def manual_seed(self, seed):
        """Restart the stream from ``seed`` (an int; None draws one from the OS)."""
        self.initial_seed = int(np.random.SeedSequence(seed).entropy) if seed is None else int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self.initial_seed))
        return self

    # state, for checkpoints -------------------------------------------------
    def get_state(self) -> dict:
        """The stream's position as a dict of plain numbers, for checkpoints."""
        state = self._rng.bit_generator.state
        return {"bit_generator": state["bit_generator"],
                "state": {k: int(v) for k, v in state["state"].items()},
                "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"]),
                "initial_seed": self.initial_seed}

    def set_state(self, state: dict) -> None:
        """Resume the stream from a dict made by ``get_state``."""
        if state.get("bit_generator") != "PCG64":
            raise ValueError(f"not a PCG64 generator state: {state!r:.80}")
        self.initial_seed = int(state.get("initial_seed", 0))
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64", "state": dict(state["state"]),
            "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}

    # draws ------------------------------------------------------------------
    def _out(self, array):
        return array if self.device == "cpu" else to_device(array, self.device)

    def normal(self, shape, mean=0.0, std=1.0, dtype=None):
        """Samples of N(mean, std^2) with the given shape."""
        dtype = np.dtype(dtype or _default_dtype)
        z = self._rng.standard_normal(size=shape, dtype=dtype if dtype != np.float16 else np.float32)
        if mean != 0.0 or std != 1.0:
            z = z * dtype.type(std) + dtype.type(mean)
        return self._out(z.astype(dtype, copy=False))

    def uniform(self, shape, low=0.0, high=1.0, dtype=None):
        """Samples of U[low, high) with the given shape."""
        dtype = np.dtype(dtype or _default_dtype)
        u = self._rng.random(size=shape, dtype=dtype if dtype != np.float16 else np.float32)
        if low != 0.0 or high != 1.0:
            u = u * dtype.type(high - low) + dtype.type(low)
        return self._out(u.astype(dtype, copy=False))

    def integers(self, low, high=None, shape=None, dtype=np.int64):
        """Integers in [low, high) (or [0, low) when high is None)."""
        return self._out(self._rng.integers(low, high, size=shape, dtype=dtype))

    def bernoulli(self, p, shape=None, dtype=None):
        """0/1 samples with success probability ``p`` (a float or a host array)."""
        dtype = np.dtype(dtype or _default_dtype)
        p = to_numpy(p)
        shape = np.shape(p) if shape is None else shape
        return self._out((self._rng.random(size=shape) < p).astype(dtype))

    def permutation(self, n):
        """A random permutation of range(n) (int64)."""
        return self._out(self._rng.permutation(n))

    def choice(self, n, size, replace=True, p=None):
        """Indices drawn from range(n), optionally without replacement or weighted."""
        return self._out(self._rng.choice(n, size=size, replace=replace, p=None if p is None else to_numpy(p)))

    def spawn_seed(self) -> int:
        """A fresh integer seed drawn from this stream (for child generators)."""
        return int(self._rng.integers(0, 2**63 - 1))

    def __repr__(self):
        return f"Generator(seed={self.initial_seed}, device='{self.device}')"


_default_seed = 0
_default_generators = {}


def default_generator(device=None) -> Generator:
    """The process-wide generator of a device, used when no generator is passed."""
    device = check_device(device)
    if device not in _default_generators:
        _default_generators[device] = Generator(_default_seed, device)
    return _default_generators[device]


def manual_seed(seed: int) -> Generator:
    """Restart every device's default generator from ``seed``; returns the default device's."""
    global _default_seed
    _default_seed = int(seed)
    _default_generators.clear()
    return default_generator()


# ----------------------------------------------------------------------------
# the C allocator (an explicit, process-wide setting; nothing calls it on import)
# ----------------------------------------------------------------------------

MALLOC_TUNED = False   # True once tune_malloc() has changed glibc's settings in this process


def tune_malloc() -> bool:
    """Ask glibc's malloc to keep freed array memory in the heap instead of returning it to the OS.

    glibc serves large allocations (above 128 KiB by default) with fresh ``mmap``
    pages and unmaps them on free, so every training step page-faults its
    activations in again.  Raising the mmap and trim thresholds to 1 GiB makes
    freed blocks reusable; the cost is that the process keeps its peak heap.  The
    setting applies to the whole process (PyTorch in the same process too).
    Returns True when glibc accepted it, False elsewhere (no glibc: nothing changes).
    The benchmarks call it (``python -m benchmarks --no-tune-malloc`` skips it).
    """
    global MALLOC_TUNED
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):   # no glibc (macOS, musl, Windows): leave the allocator alone
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # ask for 1 GiB; older glibc caps the mmap threshold at 32 MiB, so fall back to that
    ok_mmap = mallopt(M_MMAP_THRESHOLD, 1 << 30) or mallopt(M_MMAP_THRESHOLD, 32 << 20)
    ok_trim = mallopt(M_TRIM_THRESHOLD, 1 << 30)
    MALLOC_TUNED = MALLOC_TUNED or bool(ok_mmap and ok_trim)
    return bool(ok_mmap and ok_trim)

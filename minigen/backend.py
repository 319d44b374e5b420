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
* ``count_transfers()``: a mode that counts every host read and host-to-device
  copy (the tests of the GPU path run it on the CPU), ``read_scalars`` (many device
  scalars in one read) and ``StepLogs`` (a training step's logged numbers, read
  lazily in one transfer);
* ``tune_malloc()``: an explicit, process-wide glibc allocator setting that the
  benchmarks call (importing minigen does not call it);
* one environment default, set only when minigen is imported before NumPy and only
  if the variable is unset: ``OPENBLAS_THREAD_TIMEOUT=20``.  OpenBLAS's idle threads
  otherwise spin for 2^28 cycles (about 0.1 s) after every threaded product, holding
  the cores that the convolutions' batch threads need (functional/parallel.py);
  2^20 cycles is well under a millisecond.  ``BLAS_SPIN_LIMITED`` says whether a
  limit is in force (set here, or by the user before NumPy was loaded).

Random numbers on the CPU are drawn by NumPy's PCG64.  On the GPU they are drawn
on the device (cuRAND's Philox), so no noise crosses the bus: each draw reseeds the
device generator with a 64-bit seed taken from the host PCG64 stream.  The host
stream alone is therefore the whole state, a small dict that a checkpoint stores,
and a resumed GPU run draws exactly the numbers it would have drawn.  The same seed
gives different numbers on the CPU and on the GPU (the CPU streams are those of
earlier versions, bit for bit).
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping

# Before NumPy loads OpenBLAS (see the module docstring); a value already set wins.
BLAS_SPIN_LIMITED = "numpy" not in sys.modules or "OPENBLAS_THREAD_TIMEOUT" in os.environ
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

import numpy as np  # noqa: E402

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
    """Normalise a device name and reject unknown ones with a clear message.

    "gpu", "cuda" and "cuda:0" name the current CUDA device.  Other indices
    ("cuda:1") are refused: minigen has one GPU device, the current one, and
    silently running on device 0 instead would surprise; pick the card with
    ``CUDA_VISIBLE_DEVICES=1`` instead.
    """
    if device is None:
        return get_default_device()
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'gpu', got {device!r}")
    name = device.lower()
    if name.startswith("cuda:") or name.startswith("gpu:"):
        index = name.split(":", 1)[1]
        if index != "0":
            raise ValueError(f"device {device!r}: minigen uses one GPU, the current CUDA device; choose the card "
                             f"with CUDA_VISIBLE_DEVICES={index} and pass device='gpu'")
        name = "gpu"
    if name == "cuda":
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


def is_host(array) -> bool:
    """True when ``array``'s values can be looked at without a device round trip (NumPy, numbers, lists).

    Ops use it to run value checks (label ranges, overflow guards) only where they
    are free; device arrays skip them, their values having been checked where they
    were made on the host (data loaders, label arguments of ``sample``).
    """
    return not type(array).__module__.startswith("cupy")


def to_numpy(array) -> np.ndarray:
    """A host NumPy copy (or the array itself when it already lives on the host).

    Counted as a read by ``count_transfers`` (on the CPU too: it is where a GPU
    run would wait for the device).
    """
    if _counter is not None:
        _counter.reads += 1
    if isinstance(array, np.ndarray):
        return array
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def to_device(array, device):
    """Move an array to ``device``; a no-op when it is already there.

    ``count_transfers`` counts a write for every host array handed in (on the CPU
    too: those are the calls that copy host data up on a GPU run).
    """
    device = check_device(device)
    if _counter is not None and is_host(array):
        _counter.writes += 1
    if device == "cpu":
        return np.asarray(array) if is_host(array) else to_numpy(array)   # device -> host: a counted read
    cp = _require_gpu()
    return cp.asarray(array)


def on_device(array, device):
    """``array`` itself when it already lives on ``device`` (nothing copied or counted), else ``to_device``.

    For arrays that are usually born on the right device (a generator's draws) but
    may come from elsewhere (a CPU generator driving a GPU model).
    """
    device = check_device(device)
    return array if device_of(array) == device else to_device(array, device)


# ----------------------------------------------------------------------------
# counting transfers, and reading many scalars at once
# ----------------------------------------------------------------------------

class TransferCount:
    """What ``count_transfers`` counted: ``reads`` (device -> host) and ``writes`` (host -> device)."""

    def __init__(self):
        self.reads = 0
        self.writes = 0

    def __repr__(self):
        return f"TransferCount(reads={self.reads}, writes={self.writes})"


_counter = None   # the active TransferCount, or None (counting costs one `is not None` per transfer)


@contextlib.contextmanager
def count_transfers():
    """``with count_transfers() as n: ...``; afterwards ``n.reads`` and ``n.writes`` hold the counts.

    Reads: ``to_numpy``, ``Tensor.item`` / ``numpy`` / ``tolist`` / ``float()`` /
    ``int()`` / ``bool()``, ``read_scalars`` (one per device).  Writes: host arrays
    given to ``to_device``.  The CPU backend counts the same calls, so a test on
    the CPU bounds what a training step costs on the GPU.  Nested blocks each count.
    """
    global _counter
    outer, count = _counter, TransferCount()
    _counter = count
    try:
        yield count
    finally:
        _counter = outer
        if outer is not None:
            outer.reads += count.reads
            outer.writes += count.writes


def note_read(n=1) -> None:
    """Count ``n`` reads in an active ``count_transfers`` block (for conversions made outside this module)."""
    if _counter is not None:
        _counter.reads += n


def read_scalars(values) -> list:
    """Python floats for a list of numbers and one-element arrays, with one read per device.

    The device scalars are stacked on their device (as float64) and copied to the
    host together: one transfer instead of one per value.  Python numbers pass
    through unchanged.  Each value must hold exactly one element.
    """
    values = list(values)
    out = [None] * len(values)
    by_device = {}
    for i, v in enumerate(values):
        if is_array(v):
            by_device.setdefault(device_of(v), []).append(i)
        else:
            out[i] = float(v)
    for device, idx in by_device.items():
        xp = get_array_module(device)
        stacked = xp.stack([xp.asarray(values[i], dtype=np.float64).reshape(()) for i in idx])
        host = to_numpy(stacked)              # the one read for this device
        for i, v in zip(idx, host.tolist()):
            out[i] = v
    return out


class StepLogs(Mapping):
    """A training step's logged numbers: a read-only mapping name -> float, read lazily in one transfer.

    ``StepLogs({"loss": loss, "kl": kl, "lr": 1e-3})`` keeps 0-d Tensors / arrays
    as device scalars (no graph) and numbers as they are.  The first access to a
    value reads them all at once (``read_scalars``); until then nothing crosses the
    bus, so a loop that logs every n-th step pays one read per logged step.
    ``raw()`` gives the unread values, ``read_logs`` reads several at once.
    """

    def __init__(self, values):
        self._raw = {}
        for k, v in dict(values).items():
            data = v.data if not is_array(v) and is_array(getattr(v, "data", None)) else v   # a Tensor: its array
            if is_array(data) and data.size != 1:
                raise ValueError(f"StepLogs: {k!r} must be one number, got shape {data.shape}")
            self._raw[k] = data if is_array(data) else float(data)
        self._floats = None

    def raw(self) -> dict:
        """The values as given: device scalars (arrays) and floats; nothing is read."""
        return dict(self._raw)

    def floats(self) -> dict:
        """The values as Python floats (read once, in one transfer per device, then kept)."""
        if self._floats is None:
            self._floats = dict(zip(self._raw, read_scalars(self._raw.values())))
        return self._floats

    def __getitem__(self, key):
        return self.floats()[key]

    def __iter__(self):
        return iter(self._raw)

    def __contains__(self, key):
        return key in self._raw        # a name lookup: nothing read (Mapping's default would read)

    def __len__(self):
        return len(self._raw)

    def __repr__(self):
        shown = self._floats if self._floats is not None else {k: "?" for k in self._raw}
        return f"StepLogs({shown})"


def read_logs(logs_list) -> None:
    """Read every unread ``StepLogs`` in ``logs_list`` with one transfer per device (others are skipped)."""
    pending = [logs for logs in logs_list if isinstance(logs, StepLogs) and logs._floats is None]
    values = [v for logs in pending for v in logs._raw.values()]
    floats = iter(read_scalars(values))
    for logs in pending:
        logs._floats = {k: next(floats) for k in logs._raw}


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

    ``Generator(seed, device)``.  On the CPU the numbers come from NumPy's PCG64.
    On the GPU the normal, uniform, integer and Bernoulli draws are made on the
    device by cuRAND (Philox), reseeded for every draw with a seed taken from the
    host PCG64, so nothing is copied up and the host stream stays the whole state.
    Permutations and weighted choices are drawn on the host (they index host data).
    ``get_state()`` returns a JSON-friendly dict; ``set_state`` restores it.
    """

    def __init__(self, seed=None, device=None):
        self.device = check_device(device)
        self._device_rng = None   # the cuRAND generator of a GPU stream, made on its first draw
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

    # where to draw ------------------------------------------------------------
    def _make_device_rng(self):
        """A cuRAND generator for this stream's device (Philox: reseeding it is cheap)."""
        cp = _require_gpu()
        return cp.random.RandomState(0, method=cp.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)

    def _device_stream(self, device=None):
        """None for the CPU (draw with PCG64); for the GPU the device generator, freshly reseeded.

        ``device`` defaults to the generator's own.  The seed is the next 63-bit
        number of the host stream, so the device draws are a function of the host
        state alone (exact resume, nothing extra to save).
        """
        if (self.device if device is None else check_device(device)) == "cpu":
            return None
        if self._device_rng is None:
            self._device_rng = self._make_device_rng()
        self._device_rng.seed(int(self._rng.integers(0, 2**63 - 1)))
        return self._device_rng

    def _out(self, array):
        return array if self.device == "cpu" else to_device(array, self.device)

    # draws ------------------------------------------------------------------
    def normal(self, shape, mean=0.0, std=1.0, dtype=None, device=None):
        """Samples of N(mean, std^2) with the given shape, on ``device`` (default: the generator's)."""
        dtype = np.dtype(dtype or _default_dtype)
        draw_dtype = dtype if dtype != np.float16 else np.float32
        rng = self._device_stream(device)
        if rng is None:
            z = self._rng.standard_normal(size=shape, dtype=draw_dtype)
        else:   # on the device: no host -> device copy of the noise
            z = rng.standard_normal(size=shape, dtype=draw_dtype)
        if mean != 0.0 or std != 1.0:
            z = z * dtype.type(std) + dtype.type(mean)
        return z.astype(dtype, copy=False)

    def uniform(self, shape, low=0.0, high=1.0, dtype=None, device=None):
        """Samples of U[low, high) with the given shape, on ``device`` (default: the generator's).

        A host generator asked for GPU numbers draws them on the GPU (seeded from its
        host stream): the data generator of a run makes its noise where the batch is.
        """
        dtype = np.dtype(dtype or _default_dtype)
        draw_dtype = dtype if dtype != np.float16 else np.float32
        rng = self._device_stream(device)
        if rng is None:
            u = self._rng.random(size=shape, dtype=draw_dtype)
        else:   # on the device: no host -> device copy
            u = rng.random_sample(size=shape, dtype=draw_dtype)
        if low != 0.0 or high != 1.0:
            u = u * dtype.type(high - low) + dtype.type(low)
        return u.astype(dtype, copy=False)

    def integers(self, low, high=None, shape=None, dtype=np.int64, device=None):
        """Integers in [low, high) (or [0, low) when high is None), on ``device`` (default: the generator's)."""
        rng = self._device_stream(device)
        if rng is None:
            return self._rng.integers(low, high, size=shape, dtype=dtype)
        if high is None:
            low, high = 0, low
        return rng.randint(low, high, size=shape, dtype=dtype)   # on the device: timesteps, labels

    def host_integers(self, low, high=None, shape=None, dtype=np.int64):
        """Integers as ``integers`` draws them, but always a host array (to index host data).

        On the CPU it is exactly ``integers``; on the GPU it avoids drawing on the
        device only to read the numbers back.
        """
        return self._rng.integers(low, high, size=shape, dtype=dtype)

    def bernoulli(self, p, shape=None, dtype=None, device=None):
        """0/1 samples with success probability ``p`` (a float, or an array on ``device``), on ``device``.

        ``device`` defaults to the generator's own.
        """
        dtype = np.dtype(dtype or _default_dtype)
        if (self.device if device is None else check_device(device)) == "cpu":
            p = np.asarray(p) if is_host(p) else to_numpy(p)
            shape = np.shape(p) if shape is None else shape
            return (self._rng.random(size=shape) < p).astype(dtype)
        shape = tuple(getattr(p, "shape", np.shape(p))) if shape is None else shape
        u = self._device_stream(device).random_sample(size=shape, dtype=np.float64)   # on the device
        return (u < p).astype(dtype)

    def permutation(self, n):
        """A random permutation of range(n) (int64), drawn on the host (it orders host data)."""
        return self._out(self._rng.permutation(n))

    def choice(self, n, size, replace=True, p=None):
        """Indices drawn from range(n) on the host, optionally without replacement or weighted."""
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

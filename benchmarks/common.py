"""The timing harness shared by every workload: warm-up, timed calls, statistics, memory.

Protocol (the same for minigen and its PyTorch twin, in one process):

1. warm-up: each engine runs until it has made ``min_warmup`` calls *and* spent
   ``warmup_s`` seconds (caches, allocator pools and BLAS threads settle);
2. repeats: ``--repeats N`` if given, otherwise as many calls as fit in about
   ``budget_s`` seconds, clamped to [``min_repeats``, ``max_repeats``];
3. the calls are made in ``rounds`` blocks per engine, the engines taking turns
   (minigen block, torch block, minigen block, ...), so a phase in which the shared
   machine is slower hurts both sides alike instead of one;
4. every call is timed on its own with ``time.perf_counter``; we report the median
   (and min, p25, p75 for the noise).

Memory, per engine, over its timed calls:

* ``peak_rss_mb``: the kernel's high-water mark of the resident set (VmHWM), reset
  right before each block by writing "5" to /proc/self/clear_refs (Linux); where
  that is impossible, ``getrusage``'s ``ru_maxrss``, which only ever grows.  Both
  engines live in one process, so this includes the process baseline (PyTorch's
  libraries alone take ~200 MB); ``rss_before_mb`` is the resident set just before
  the block, and ``step_rss_mb = peak - before`` is what one step adds.
* ``minor_faults_per_call`` / ``major_faults_per_call``: page faults counted by
  ``getrusage`` across the block, divided by the calls.  Minor faults at a steady
  rate mean that each step hands memory back to the OS and touches it afresh
  (allocation churn: glibc unmaps large freed blocks unless ``backend.tune_malloc``
  raised its thresholds); a value near 0 means the allocator reuses its buffers.

CPU contention: ``foreign_cpu_cores`` is the average number of cores that *other*
processes kept busy during the timed calls (from /proc/stat); above ~0.1 on a
2-core machine the timings are polluted.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Settings:
    """How to run: chosen on the command line (see ``benchmarks/run.py``)."""
    device: str = "cpu"          # "cpu" (NumPy) or "gpu" (CuPy; torch twin on CUDA if it has it)
    quick: bool = False          # tiny shapes and 2 repeats: a smoke run, not a measurement
    repeats: int | None = None   # fixed number of timed calls per engine (None: from budget_s)
    budget_s: float = 2.0        # seconds of timed calls per engine when repeats is None
    warmup_s: float = 0.5        # minimum warm-up time per engine
    min_warmup: int = 3          # minimum warm-up calls per engine
    min_repeats: int = 10        # clamp of the budget-derived repeat count
    max_repeats: int = 2000
    rounds: int = 3              # blocks per engine, taken in turns
    use_torch: bool = True       # time the PyTorch twin when torch is importable
    tune_malloc: bool = False    # glibc told to keep freed memory (minigen.backend.tune_malloc)
    seed: int = 0

    def __post_init__(self):
        if self.quick:
            self.warmup_s, self.min_warmup, self.rounds = 0.0, 1, 1
            if self.repeats is None:
                self.repeats = 2


# ----------------------------------------------------------------------------
# process measurements
# ----------------------------------------------------------------------------

def _status_kb(field_name):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb():
    """Current resident set in MB (None where /proc is missing)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb(resettable: bool):
    """The peak resident set in MB since the last reset (or since start, from getrusage)."""
    kb = _status_kb("VmHWM") if resettable else None
    if kb is None:  # ru_maxrss is in kB on Linux, bytes on macOS
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            kb /= 1024.0
    return kb / 1024.0


def page_faults():
    """(minor, major) page faults of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_majflt


def _machine_busy_s():
    """Busy CPU seconds of the whole machine since boot (None without /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _own_cpu_s():
    t = os.times()
    return t.user + t.system


def wait_idle(max_wait_s, window_s=1.0, threshold_cores=0.1, quiet_windows=3) -> float:
    """Wait until other processes use < ``threshold_cores`` for ``quiet_windows`` windows in a row.

    Gives up after ``max_wait_s`` seconds; returns the seconds waited.
    """
    t0 = time.time()
    quiet = 0
    while time.time() - t0 < max_wait_s:
        busy0, own0, w0 = _machine_busy_s(), _own_cpu_s(), time.time()
        if busy0 is None:
            break
        time.sleep(window_s)
        load = ((_machine_busy_s() - busy0) - (_own_cpu_s() - own0)) / (time.time() - w0)
        quiet = quiet + 1 if load < threshold_cores else 0
        if quiet >= quiet_windows:
            break
    return time.time() - t0


# ----------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------

@dataclass
class _Tally:
    """Everything measured for one engine, accumulated over its blocks."""
    times: list = field(default_factory=list)
    minor: int = 0
    major: int = 0
    peak_mb: float = 0.0
    before_mb: float | None = None
    wall: float = 0.0
    foreign: float = 0.0


def measure(engines: dict, settings: Settings, sync=None) -> dict:
    """Time each callable of ``engines`` (name -> fn) by the protocol above.

    ``sync(name)`` (optional) is called after every call and must wait for
    asynchronous work (GPU kernels) to finish, so that the clock sees it.
    Returns name -> statistics dict (times in milliseconds).
    """
    sync = sync or (lambda name: None)

    def call(name, fn):
        fn()
        sync(name)

    # 1. warm-up, and an estimate of one call's time
    estimate = {}
    for name, fn in engines.items():
        t0 = time.perf_counter()
        n = 0
        while n < settings.min_warmup or time.perf_counter() - t0 < settings.warmup_s:
            call(name, fn)
            n += 1
        estimate[name] = (time.perf_counter() - t0) / n if n else None   # None: no warm-up asked for

    # 2. how many timed calls
    def n_calls(name):
        if settings.repeats is not None:
            return max(1, int(settings.repeats))
        if estimate[name] is None:
            return settings.min_repeats
        n = settings.budget_s / max(estimate[name], 1e-9)
        return int(min(settings.max_repeats, max(settings.min_repeats, n)))

    rounds = max(1, settings.rounds)
    plan = {name: n_calls(name) for name in engines}
    tallies = {name: _Tally() for name in engines}
    resettable = reset_peak_rss()

    # 3./4. the engines take turns, block by block; each call timed on its own
    for r in range(rounds):
        for name, fn in engines.items():
            total = plan[name]
            block = total // rounds + (1 if r < total % rounds else 0)
            if block == 0:
                continue
            tally = tallies[name]
            gc.collect()
            reset_peak_rss()
            before = rss_mb()
            if tally.before_mb is None and before is not None:
                tally.before_mb = before
            minor0, major0 = page_faults()
            busy0, own0, wall0 = _machine_busy_s(), _own_cpu_s(), time.perf_counter()
            for _ in range(block):
                t = time.perf_counter()
                call(name, fn)
                tally.times.append(time.perf_counter() - t)
            wall = time.perf_counter() - wall0
            minor1, major1 = page_faults()
            tally.minor += minor1 - minor0
            tally.major += major1 - major0
            tally.peak_mb = max(tally.peak_mb, peak_rss_mb(resettable))
            if busy0 is not None:
                busy1 = _machine_busy_s()
                tally.foreign += max(0.0, (busy1 - busy0) - (_own_cpu_s() - own0))
            tally.wall += wall

    return {name: _summary(t) for name, t in tallies.items()}


def _summary(t: _Tally) -> dict:
    times = sorted(t.times)
    n = len(times)
    if n >= 4:
        p25, _, p75 = statistics.quantiles(times, n=4)
    else:
        p25, p75 = times[0], times[-1]
    out = {
        "ms": statistics.median(times) * 1e3,
        "min_ms": times[0] * 1e3,
        "p25_ms": p25 * 1e3,
        "p75_ms": p75 * 1e3,
        "repeats": n,
        "peak_rss_mb": round(t.peak_mb, 1),
        "rss_before_mb": None if t.before_mb is None else round(t.before_mb, 1),
        "minor_faults_per_call": round(t.minor / n, 1),
        "major_faults_per_call": round(t.major / n, 2),
        "foreign_cpu_cores": round(t.foreign / t.wall, 2) if t.wall > 0 else None,
    }
    if t.before_mb is not None:
        out["step_rss_mb"] = round(t.peak_mb - t.before_mb, 1)
    return out


# ----------------------------------------------------------------------------
# comparing numbers (the --check mode)
# ----------------------------------------------------------------------------

def rel_err(ours, ref, scale=None) -> float:
    """||ours - ref|| / ||ref|| (Euclidean norms over all elements): one number per tensor.

    A norm, not the largest element, because a few elements may legitimately
    differ: where a ReLU-like kink meets a pre-activation within rounding of 0,
    the two libraries can take different sides and one gradient entry changes
    by a slope's worth.  ``scale`` replaces ||ref|| where the exact value is 0
    and both sides hold only rounding noise.
    """
    import numpy as np

    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"check: shapes differ, minigen {ours.shape} vs torch {ref.shape}")
    if scale is None:
        scale = float(np.linalg.norm(ref))
    return float(np.linalg.norm(ours - ref)) / max(scale, 1e-30)


def emit(record: dict, stream=None) -> None:
    """Print one JSON line (floats rounded for reading) and flush."""
    def tidy(v):
        if isinstance(v, float):
            return float(f"{v:.4g}") if abs(v) < 1e4 else round(v, 1)
        return v
    print(json.dumps({k: tidy(v) for k, v in record.items()}), file=stream or sys.stdout, flush=True)


# ----------------------------------------------------------------------------
# what a workload module hands to the runner
# ----------------------------------------------------------------------------

@dataclass
class Row:
    """One output line: a minigen engine against a torch engine (or none)."""
    variant: str
    minigen: str                 # engine name in Case.engines
    torch: str | None = None     # engine name of the twin, None without torch
    flop: float | None = None    # floating-point operations of one call, where simple to count
    target: float | None = None  # the ratio minigen/torch we aim for (issue 2)
    extras: dict = field(default_factory=dict)  # more engines to report: field prefix -> engine name


@dataclass
class Case:
    """A built workload: callables to time and the rows to print."""
    engines: dict
    rows: list
    info: dict = field(default_factory=dict)   # fields copied into every row (shapes, params)
    timing: dict = field(default_factory=dict)  # Settings fields this workload overrides (calls minutes long)


def settings_for(case: Case, settings: Settings) -> Settings:
    """``settings`` with the workload's own timing overrides (not under --quick, which is tiny anyway)."""
    if settings.quick or not case.timing:
        return settings
    return dataclasses.replace(settings, **case.timing)

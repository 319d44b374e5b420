"""Command line of the benchmarks: ``python -m benchmarks [options]``.

    --only W1,W4      run these workloads (default: W0..W7)
    --repeats N       timed calls per engine (default: as many as fit in --budget seconds)
    --budget S        seconds of timed calls per engine when --repeats is not given (2.0)
    --rounds R        blocks per engine, minigen and torch taking turns (3)
    --quick           tiny shapes, 2 repeats, no warm-up time: a smoke run of the code paths
    --no-torch        time minigen alone even when PyTorch is installed
    --device cpu|gpu  minigen's backend (gpu: CuPy; the twin runs on CUDA if torch has it)
    --check           no timing: copy minigen's initial weights into the torch twin and
                      compare one step's losses and gradients (a guard for the benchmark)
    --no-tune-malloc  leave glibc's malloc alone (default: backend.tune_malloc(), freed memory
                      stays in the heap; compare the two to see the allocation churn)
    --wait-idle S     before each workload wait up to S s until other processes leave the CPUs idle
    -v, --verbose     with --check: print every compared quantity to stderr
    --profile N       no timing: cProfile the minigen step and print the top N functions
    --memory          also run each engine alone in a fresh process and report its peak
                      resident memory (minigen_peak_rss_mb, torch_peak_rss_mb, ...)
    --floor           no timing of the step: record the matrix products of one minigen step,
                      time them alone (NumPy and PyTorch) and set them beside the twin's
                      whole step (benchmarks/floor.py)

Timing mode prints one JSON line per (workload, variant) on stdout; check mode one
line per workload; everything else (versions, notes, profiles) goes to stderr.
See benchmarks/README.md for how to read the fields.
"""
from __future__ import annotations

import argparse
import dataclasses
import cProfile
import importlib
import io
import os
import platform
import json
import pstats
import subprocess
import sys
import time

import numpy as np

import minigen as mg
from minigen import backend

from .common import Settings, emit, measure, settings_for, wait_idle

WORKLOADS = {
    "W0": "w0_matmul",
    "W1": "w1_vae",
    "W2": "w2_dcgan",
    "W3": "w3_ddpm",
    "W4": "w4_conv",
    "W5": "w5_dit_block",
    "W6": "w6_unet_sample",
    "W7": "w7_ddim",
}


# other processes busy on more than this many cores during a timed block: the timing is polluted
NOISY_CORES = 0.1


def workload_module(name):
    """The module that implements workload ``name`` ("W0".."W7")."""
    return importlib.import_module(f".{WORKLOADS[name]}", __package__)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description="Time minigen's workloads W0-W7 (and their PyTorch twins).")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads, e.g. W1,W4")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per engine")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per engine")
    ap.add_argument("--rounds", type=int, default=3, help="blocks per engine, taken in turns")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (small batches, 2 repeats)")
    ap.add_argument("--no-torch", action="store_true", help="do not time the PyTorch twins")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="minigen's backend")
    ap.add_argument("--check", action="store_true", help="compare one step against PyTorch, no timing")
    ap.add_argument("--tune-malloc", action=argparse.BooleanOptionalAction, default=True,
                    help="keep freed memory in glibc's heap (backend.tune_malloc; on by default); "
                         "--no-tune-malloc measures the allocation churn")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each workload, wait up to S seconds for other processes to go quiet")
    ap.add_argument("-v", "--verbose", action="store_true", help="--check: print every compared quantity")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="cProfile the minigen step and print the top N functions, no timing")
    ap.add_argument("--memory", action="store_true",
                    help="also measure each engine's peak resident memory alone, in a fresh process per engine")
    ap.add_argument("--memory-engine", default=None, help=argparse.SUPPRESS)  # the child of --memory
    ap.add_argument("--floor", action="store_true",
                    help="time one step's matrix products alone against the twin's whole step, no timing")
    args = ap.parse_args(argv)
    names = [n.strip().upper() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    args.names = names
    return args


def thread_count() -> int:
    """The thread count both engines use: $OMP_NUM_THREADS (``__main__`` sets 2 by default)."""
    try:
        return int(os.environ.get("OMP_NUM_THREADS", "2"))
    except ValueError:
        return 2


def load_twins(settings):
    """(torch_twins module, torch device) or (None, None) when PyTorch is absent or unwanted."""
    if not settings.use_torch:
        return None, None
    try:
        from tests import torch_twins as twins  # the one copy of the twins, shared with the oracle tests
    except ImportError as exc:
        print(f"# PyTorch not importable ({exc}); timing minigen alone", file=sys.stderr)
        return None, None
    twins.use_threads(thread_count())
    device = twins.device_for(settings.device)
    if device is None:
        print("# this PyTorch has no CUDA device; timing minigen alone", file=sys.stderr)
        return None, None
    return twins, device


def make_sync(settings, twins, torch_device):
    """A function that waits for an engine's queued GPU work (a no-op on the CPU)."""
    if settings.device != "gpu":
        return None
    xp = backend.get_array_module("gpu")

    def sync(name):
        if name.startswith("torch"):
            twins.synchronize(torch_device)
        else:
            xp.cuda.get_current_stream().synchronize()
    return sync


def header(settings, twins):
    torch_version = twins.torch.__version__ if twins is not None else None
    return {"python": platform.python_version(), "numpy": np.__version__, "minigen": mg.__version__,
            "torch": torch_version, "threads": thread_count(), "device": settings.device,
            "quick": settings.quick, "tune_malloc": settings.tune_malloc, "machine": platform.machine(),
            "cpus": os.cpu_count()}


def timing_records(name, case, results, settings, memory=None):
    """The JSON records of one workload's rows (``memory``: engine -> its own-process record)."""
    out = []
    for row in case.rows:
        mine = results[row.minigen]
        rec = {"workload": name, "variant": row.variant, "device": settings.device,
               "minigen_ms": mine["ms"]}
        theirs = results.get(row.torch) if row.torch else None
        if theirs is not None:
            rec["torch_ms"] = theirs["ms"]
            rec["ratio"] = mine["ms"] / theirs["ms"]
        if row.target is not None:
            rec["target"] = row.target
            if theirs is not None and not settings.quick:   # --quick shrinks the workload: no verdict
                rec["meets_target"] = rec["ratio"] <= row.target
        for prefix, engine in row.extras.items():
            rec[prefix + "_ms"] = results[engine]["ms"]
        rec["repeats"] = mine["repeats"]
        for key in ("min_ms", "p25_ms", "p75_ms"):
            rec["minigen_" + key] = mine[key]
        for key in ("peak_rss_mb", "rss_before_mb", "step_rss_mb",
                    "minor_faults_per_call", "major_faults_per_call"):
            if key in mine:
                rec[key] = mine[key]
        if theirs is not None:
            rec["torch_repeats"] = theirs["repeats"]
            for key in ("min_ms", "p25_ms", "p75_ms", "peak_rss_mb", "step_rss_mb",
                        "minor_faults_per_call", "major_faults_per_call"):
                if key in theirs:
                    rec["torch_" + key] = theirs[key]
        for side, engine in (("minigen", row.minigen), ("torch", row.torch)):
            alone = (memory or {}).get(engine)
            if alone is not None:
                for key in ("peak_rss_mb", "rss_before_mb", "step_rss_mb"):
                    rec[f"{side}_{key}"] = alone[key]
        if row.flop:
            rec["gflop"] = row.flop / 1e9
            rec["minigen_gflops"] = row.flop / mine["ms"] / 1e6
            if theirs is not None:
                rec["torch_gflops"] = row.flop / theirs["ms"] / 1e6
        foreign = [r["foreign_cpu_cores"] for r in (mine, theirs) if r and r["foreign_cpu_cores"] is not None]
        if foreign:
            rec["foreign_cpu_cores"] = max(foreign)
            rec["noisy"] = max(foreign) > NOISY_CORES
        rec.update({"threads": thread_count(), "quick": settings.quick, "tune_malloc": settings.tune_malloc})
        rec.update(case.info)
        out.append(rec)
    return out


def run_timing(args, settings, twins, torch_device):
    sync = make_sync(settings, twins, torch_device)
    for name in args.names:
        mod = workload_module(name)
        if args.wait_idle > 0:
            waited = wait_idle(args.wait_idle)
            print(f"# {name}: waited {waited:.0f} s for an idle machine", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        case = mod.build(settings, twins, torch_device)
        memory = memory_alone(args, name, case) if args.memory else None
        results = measure(case.engines, settings_for(case, settings), sync)
        for rec in timing_records(name, case, results, settings, memory):
            emit(rec)
        print(f"# {name} {mod.TITLE}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return 0


# ----------------------------------------------------------------------------
# --memory: every engine alone in its own process
# ----------------------------------------------------------------------------

def memory_alone(args, name, case):
    """engine -> {peak_rss_mb, rss_before_mb, step_rss_mb}, each engine of ``case``'s rows run in a
    fresh ``python -m benchmarks --memory-engine`` process (one after the other, never two at once),
    so that a minigen step's memory is not mixed with PyTorch's libraries and buffers, and vice versa."""
    engines = []
    for row in case.rows:
        engines += [e for e in (row.minigen, row.torch) if e is not None and e not in engines]
    out = {}
    for engine in engines:
        cmd = [sys.executable, "-m", "benchmarks", "--only", name, "--memory-engine", engine,
               "--device", args.device, "--tune-malloc" if args.tune_malloc else "--no-tune-malloc"]
        if args.quick:
            cmd.append("--quick")
        if args.repeats:
            cmd += ["--repeats", str(args.repeats)]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)   # inherits the thread settings
        recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not recs:
            print(f"# {name} --memory: engine {engine} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        out[engine] = recs[-1]
        print(f"# {name} {engine} alone: peak {recs[-1]['peak_rss_mb']} MB", file=sys.stderr, flush=True)
    return out


def run_memory_child(args, settings):
    """The child of --memory: build workload ``args.names[0]`` with only what ``--memory-engine`` needs
    (the twins only for a torch engine; minigen's model is built in both, being the weights' source),
    then, with the peak-RSS mark reset right after the build, 3 calls (1 for a workload whose calls
    take minutes); one JSON line.  No warm-up outside the mark: the buffers a step leaves in the
    allocator's heap for the next one count in its footprint, ``step_rss_mb = peak - before``."""
    engine, name = args.memory_engine, args.names[0]
    settings.use_torch = engine.startswith("torch")
    twins, torch_device = load_twins(settings)
    case = workload_module(name).build(settings, twins, torch_device)
    if engine not in case.engines:
        print(f"--memory-engine: {name} has no engine {engine!r} here (engines: {list(case.engines)})",
              file=sys.stderr)
        return 2
    one = dataclasses.replace(settings, min_warmup=0, warmup_s=0.0, rounds=1,
                              repeats=args.repeats or (1 if case.timing else 3))
    res = measure({engine: case.engines[engine]}, one, make_sync(settings, twins, torch_device))[engine]
    emit({"memory": name, "engine": engine, "peak_rss_mb": res["peak_rss_mb"],
          "rss_before_mb": res["rss_before_mb"], "step_rss_mb": res.get("step_rss_mb")})
    return 0


def run_check(args, settings, twins, torch_device):
    if twins is None:
        print("--check compares against PyTorch, which is not available here", file=sys.stderr)
        return 2
    status = 0
    for name in args.names:
        mod = workload_module(name)
        results = mod.check(settings, twins, torch_device)
        if args.verbose:
            for q, e, tol in results:
                print(f"# {name} {q}: rel err {e:.3g} (tol {tol:g})", file=sys.stderr)
        failed = [(q, e, tol) for q, e, tol in results if not e <= tol]  # `not <=` also catches NaN
        worst = max(results, key=lambda r: r[1] / r[2])
        emit({"check": name, "ok": not failed, "compared": len(results),
              "worst": worst[0], "worst_rel_err": worst[1], "worst_tol": worst[2],
              "failed": [f"{q}: {e:.3g} > {tol:g}" for q, e, tol in failed], "quick": settings.quick})
        status |= bool(failed)
    return status


def run_profile(args, settings):
    """cProfile of the minigen engines of each workload; the top functions go to stderr."""
    calls = args.repeats or (2 if settings.quick else 10)
    for name in args.names:
        case = workload_module(name).build(settings)
        for engine, fn in case.engines.items():
            if not engine.startswith("minigen"):
                continue
            fn(), fn()  # warm-up
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            for _ in range(calls):
                fn()
            prof.disable()
            wall = (time.perf_counter() - t0) / calls * 1e3
            buf = io.StringIO()
            stats = pstats.Stats(prof, stream=buf)
            stats.sort_stats("tottime").print_stats(args.profile)
            print(f"# profile {name} {engine}: {calls} calls, {wall:.1f} ms/call under the profiler",
                  file=sys.stderr)
            print(buf.getvalue(), file=sys.stderr, flush=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = Settings(device=args.device, quick=args.quick, repeats=args.repeats,
                        budget_s=args.budget, rounds=args.rounds,
                        use_torch=not args.no_torch and not args.profile)
    if settings.device == "gpu" and not mg.gpu_available():
        try:
            backend.get_array_module("gpu")
        except RuntimeError as exc:  # the backend's one-sentence install hint
            print(f"--device gpu: {exc}", file=sys.stderr)
            return 2
    if args.tune_malloc:
        settings.tune_malloc = backend.tune_malloc()
        if not settings.tune_malloc:
            print("# tune-malloc: no glibc mallopt here; running untuned", file=sys.stderr)
    if args.memory_engine:
        return run_memory_child(args, settings)
    twins, torch_device = load_twins(settings)
    print("# " + " ".join(f"{k}={v}" for k, v in header(settings, twins).items()), file=sys.stderr, flush=True)
    if args.profile:
        return run_profile(args, settings)
    if args.check:
        return run_check(args, settings, twins, torch_device)
    if args.floor:
        from .floor import run_floor
        return run_floor(args.names, settings, twins, torch_device)
    return run_timing(args, settings, twins, torch_device)

"""Smoke tests of benchmarks/: every workload runs, prints parseable JSON, and checks out.

(The one test file that imports ``benchmarks``: it tests the benchmarks themselves.
No test of the library depends on them; the PyTorch twins both use live in
``tests/torch_twins.py``.)

``python -m benchmarks --quick`` shrinks every workload (small batches, 2 timed
calls), so this runs the real code paths of W0-W7 in a few seconds.  With
PyTorch installed the twins are timed too, and ``--check`` compares one W1 step
(loss, every gradient, the loss after Adam) with PyTorch on identical weights;
a planted discrepancy shows that the comparison can fail.
"""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package; `pytest` alone may not see it
    sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402
from benchmarks.common import Settings, measure, rel_err  # noqa: E402


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_measure_counts_calls_and_reports_positive_times():
    calls = []
    res = measure({"a": lambda: calls.append(1), "b": lambda: sum(range(1000))},
                  Settings(repeats=7, warmup_s=0.0, min_warmup=2, rounds=3))
    assert len(calls) == 2 + 7  # warm-up, then the timed calls split over 3 rounds
    for name in ("a", "b"):
        r = res[name]
        assert r["repeats"] == 7
        assert 0 < r["min_ms"] <= r["p25_ms"] <= r["ms"] <= r["p75_ms"]
        assert r["minor_faults_per_call"] >= 0 and r["peak_rss_mb"] > 0


def test_rel_err_is_scale_free_and_flags_differences():
    assert rel_err([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert rel_err([0.0, 0.0], [3.0, 4.0]) == pytest.approx(1.0)
    assert rel_err([3e-6, 4e-6], [3e-6, 4.01e-6]) == pytest.approx(rel_err([3.0, 4.0], [3.0, 4.01]))
    assert rel_err([1e-9], [0.0], scale=1.0) == pytest.approx(1e-9)
    with pytest.raises(ValueError, match="shapes differ"):
        rel_err([1.0], [1.0, 2.0])


def _run_cli(args, threads=None):
    """Run `python -m benchmarks ARGS` in a fresh process; returns (JSON records, stderr)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-m", "benchmarks"] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return _json_lines(proc.stdout), proc.stderr


def test_quick_run_of_every_workload():
    # One thread: two OpenBLAS threads stall badly when the test machine is busy.
    records, _ = _run_cli(["--quick"] + ([] if _has_torch() else ["--no-torch"]), threads=1)
    expected = {("W0", "matmul"), ("W1", "default-adam"), ("W1", "fused-adam"), ("W2", "dcgan"),
                ("W3", "ddpm-unet"), ("W4", "fwd"), ("W4", "fwd+bwd"), ("W5", "sdpa"), ("W5", "explicit"),
                ("W6", "unet-forward"), ("W7", "ddim-3")}
    assert {(r["workload"], r["variant"]) for r in records} == expected
    for r in records:
        assert r["minigen_ms"] > 0 and r["repeats"] == 2 and r["quick"] is True and r["threads"] == 1
        assert r["minor_faults_per_call"] >= 0 and r["peak_rss_mb"] > 0
        assert "meets_target" not in r        # a shrunken workload says nothing about the target
        if _has_torch():
            assert r["torch_ms"] > 0
            assert r["ratio"] == pytest.approx(r["minigen_ms"] / r["torch_ms"], rel=1e-3)


def test_command_line_sets_two_threads_and_tunes_malloc_by_default():
    """W0 only, to stay fast.  The glibc tuning is on unless --no-tune-malloc (importing minigen
    no longer applies it, so the benchmark does, to measure what it always measured)."""
    (rec,), _ = _run_cli(["--quick", "--no-torch", "--only", "W0"])
    assert rec["workload"] == "W0" and rec["threads"] == 2 and rec["numpy_ms"] > 0
    assert rec["tune_malloc"] is (platform.libc_ver()[0] == "glibc") and isinstance(rec["noisy"], bool)
    (rec,), _ = _run_cli(["--quick", "--no-torch", "--only", "W0", "--no-tune-malloc"])
    assert rec["tune_malloc"] is False


def test_unknown_workload_is_refused():
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "W9"])


def test_check_w1_matches_pytorch(capsys):
    pytest.importorskip("torch")
    assert run.main(["--check", "--quick", "--only", "W1"]) == 0
    (rec,) = _json_lines(capsys.readouterr().out)
    assert rec["check"] == "W1" and rec["ok"] is True and rec["compared"] == 16
    assert rec["worst_rel_err"] < 1e-4


def test_check_catches_a_planted_difference(capsys, monkeypatch):
    pytest.importorskip("torch")
    from tests import torch_twins

    original = torch_twins.vae_loss
    monkeypatch.setattr(torch_twins, "vae_loss", lambda model, x, eps: original(model, x, eps) * 1.001)
    assert run.main(["--check", "--quick", "--only", "W1"]) == 1
    (rec,) = _json_lines(capsys.readouterr().out)
    assert rec["ok"] is False and any(f.startswith("loss") for f in rec["failed"])


def test_measure_without_warm_up_uses_the_minimum_repeats():
    """W7's calls are minutes long: no warm-up call, then ``min_repeats`` timed calls."""
    calls = []
    res = measure({"a": lambda: calls.append(1)},
                  Settings(warmup_s=0.0, min_warmup=0, min_repeats=2, rounds=3))
    assert len(calls) == 2 and res["a"]["repeats"] == 2


def test_slow_workloads_override_timing_but_not_quick_runs():
    from benchmarks import w7_ddim
    from benchmarks.common import settings_for

    case = w7_ddim.build(Settings(quick=True))
    assert case.info["batch"] == 2 and case.info["steps"] == 3          # --quick shrinks W7
    assert settings_for(case, Settings(quick=True)).repeats == 2
    full = settings_for(case, Settings())
    assert (full.min_warmup, full.warmup_s, full.min_repeats) == (0, 0.0, 2)


def test_check_w6_w7_match_pytorch(capsys):
    """The sampling forward and a few DDIM steps against the twin (the full --check runs all 50)."""
    pytest.importorskip("torch")
    assert run.main(["--check", "--quick", "--only", "W6,W7"]) == 0
    recs = {r["check"]: r for r in _json_lines(capsys.readouterr().out)}
    assert recs["W6"]["ok"] and recs["W6"]["compared"] == 1
    assert recs["W7"]["ok"] and recs["W7"]["compared"] == 2


def test_check_w7_catches_a_wrong_update(capsys, monkeypatch):
    """A twin that walks the timesteps one off (t - 1 instead of t) must fail the check."""
    pytest.importorskip("torch")
    from tests import torch_twins

    original = torch_twins.ddim_timesteps
    monkeypatch.setattr(torch_twins, "ddim_timesteps", lambda T, steps: original(T, steps) - (original(T, steps) > 0))
    assert run.main(["--check", "--quick", "--only", "W7"]) == 1
    (rec,) = _json_lines(capsys.readouterr().out)
    assert rec["ok"] is False


def test_memory_runs_each_engine_in_its_own_process():
    """--memory: the minigen step alone (no PyTorch in that process) and the twin alone, beside the time."""
    records, stderr = _run_cli(["--quick", "--memory", "--only", "W6"] + ([] if _has_torch() else ["--no-torch"]),
                               threads=1)
    (rec,) = records
    assert rec["minigen_peak_rss_mb"] > 0 and rec["minigen_step_rss_mb"] >= 0
    assert rec["minigen_peak_rss_mb"] >= rec["minigen_rss_before_mb"]
    if _has_torch():
        # PyTorch's libraries alone outweigh minigen's whole process
        assert rec["torch_peak_rss_mb"] > rec["minigen_peak_rss_mb"] and rec["torch_step_rss_mb"] >= 0


def test_floor_records_the_im2col_products_of_a_conv_step():
    # W4 shrunk: x (2, 64, 14, 14), w (128, 64, 3, 3), stride 1, padding 1
    from benchmarks import floor, w4_conv
    case = w4_conv.build(Settings(quick=True))
    with floor.recording() as products:
        case.engines["minigen-fwd+bwd"]()
    rows = 2 * 14 * 14
    assert dict(products) == {floor.Product(1, rows, 64 * 9, 128): 1,     # forward
                              floor.Product(1, rows, 128 * 9, 64): 1,     # input gradient (gather form)
                              floor.Product(1, 128, rows, 64 * 9): 1}     # weight gradient
    flop = sum(2 * p.batch * p.m * p.k * p.n * c for p, c in products.items())
    assert flop == case.rows[1].flop                  # the workload's own count of fwd+bwd FLOPs
    from minigen.functional import conv
    assert conv._forward.__name__ == "_forward"       # the hooks are gone after the block


def test_floor_records_linear_and_attention_products():
    from benchmarks import floor, w1_vae, w5_dit_block
    case = w1_vae.build(Settings(quick=True))
    with floor.recording() as products:
        case.engines["minigen"]()
    # 7 layers: 7 forward products, 7 weight gradients, 6 input gradients (x needs none)
    assert sum(products.values()) == 20
    assert floor.Product(1, 16, 784, 512) in products and floor.Product(1, 512, 16, 784) in products
    case = w5_dit_block.build(Settings(quick=True))
    with floor.recording() as products:
        case.engines["minigen-sdpa"]()
    heads = 2 * 4                                     # batch 2, 4 heads of 49 tokens x 32
    assert products[floor.Product(heads, 49, 32, 49)] == 2           # Q K^T and dP = dY V^T
    assert products[floor.Product(heads, 49, 49, 32)] == 4           # P V, dV, dQ, dK
    assert sum(2 * p.batch * p.m * p.k * p.n * c for p, c in products.items()) == case.rows[0].flop


def test_floor_command_line(capsys):
    assert run.main(["--floor", "--quick", "--only", "W4"] + ([] if _has_torch() else ["--no-torch"])) == 0
    recs = _json_lines(capsys.readouterr().out)
    assert [(r["floor"], r["variant"]) for r in recs] == [("W4", "fwd"), ("W4", "fwd+bwd")]
    for r in recs:
        assert r["products"] == (1 if r["variant"] == "fwd" else 3) and r["numpy_products_ms"] > 0
        if _has_torch():
            assert r["floor_ratio"] == pytest.approx(r["numpy_products_ms"] / r["torch_step_ms"], rel=1e-3)
            rest = r["torch_step_ms"] - r["torch_products_ms"]          # PyTorch's time for all but the products
            assert r["parity_ratio"] == pytest.approx((r["numpy_products_ms"] + rest) / r["torch_step_ms"], rel=1e-3)
            if "target" in r:
                assert r["target_below_parity"] == (r["target"] < r["parity_ratio"])


@pytest.mark.parametrize("m, k, n", [(37, 5, 3), (4, 41, 6)])   # long rows; a long inner dimension
def test_floor_chunked_split_product_is_the_product(m, k, n, monkeypatch):
    import os
    from concurrent.futures import ThreadPoolExecutor
    from benchmarks import floor
    from minigen.functional import parallel
    pool = ThreadPoolExecutor(2)
    monkeypatch.setattr(parallel, "_state", (os.getpid(), 2, pool, None))
    monkeypatch.setattr(parallel, "MIN_SPLIT_SIZE", 0)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    out = np.empty((m, n))
    calls = parallel.split_calls
    floor._chunked_split(a, b, out, chunk_bytes=64)    # chunks of a few rows / columns
    pool.shutdown()
    assert parallel.split_calls == calls + 1
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)


def test_floor_refuses_the_gpu_in_one_line(capsys):
    from benchmarks import floor
    assert floor.run_floor(["W4"], Settings(device="gpu"), None, None) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--floor" in err[0] and "CPU" in err[0]

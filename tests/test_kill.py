"""SIGKILL at random moments of a run that checkpoints every step: no file is ever left corrupt.

A subprocess trains the tiny autoencoder with a checkpoint (and metrics rewrite) at every step;
the test kills it with SIGKILL at random times, then checks that the run directory still loads
(config, checkpoint, metrics), and finally resumes it to the end and compares the losses with an
uninterrupted run: the kills may cost steps, never correctness.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minigen.checkpoint import load_tree
from minigen.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"hidden": 16, "latent_dim": 3, "steps": 200, "batch_size": 16, "log_every": 1, "checkpoint_every": 1,
        "sample_every": 0, "n_samples": 4, "eval_samples": 0}


def _losses(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.mark.slow
def test_sigkill_never_corrupts_a_run(tmp_path):
    run = str(tmp_path / "run")
    code = ("import sys; from minigen.train import train; "
            f"train('autoencoder', {TINY!r}, out_dir=sys.argv[1], progress=False, verbose=False)")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    rng = np.random.default_rng(0)
    kills = 0
    for attempt in range(4):
        args = [sys.executable, "-c", code.replace("train('autoencoder', ", "train(None, resume=sys.argv[1]) if "
                                                   "__import__('os').path.exists(sys.argv[1] + '/checkpoint.npz') "
                                                   "else train('autoencoder', "), run]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # wait for the first checkpoint, then kill at a random moment of the next second or two
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(run, "checkpoint.npz")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.2, 1.5)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        state = load_tree(os.path.join(run, "checkpoint.npz"))       # never corrupt
        assert 1 <= int(state["step"]) <= TINY["steps"]
        with open(os.path.join(run, "config.json")) as f:
            assert json.load(f)["family"] == "autoencoder"
        assert _losses(run)                                             # metrics.jsonl parses
    assert kills >= 3
    train(None, resume=run, progress=False, verbose=False)
    full = train("autoencoder", dict(TINY), out_dir=str(tmp_path / "full"), progress=False, verbose=False)
    a, b = _losses(full), _losses(run)
    assert sorted(b) == list(range(1, TINY["steps"] + 1))
    np.testing.assert_array_equal([a[s] for s in sorted(a)], [b[s] for s in sorted(b)])

"""Run directories written by minigen before the ``families/`` refactor still restore, sample and resume.

Each fixture in ``tests/fixtures/legacy_runs/`` was trained for 2 steps by the old
code (see its README), with ``expected_full_metrics.json`` the rows of an
uninterrupted 3-step run made by that same old code.  Resuming the fixture to
step 3 with today's code must give that third step's numbers exactly: the
checkpoint's weights, optimizer moments, schedules, EMAs and random streams were
all read back into the right places.
"""
import json
import os
import shutil

import numpy as np
import pytest

from minigen.evaluate import restore_run, sample_run
from minigen.train import train

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_runs")
RUNS = sorted(d for d in os.listdir(FIXTURES) if os.path.isdir(os.path.join(FIXTURES, d)))


def _copy(name, tmp_path):
    run = str(tmp_path / name)
    shutil.copytree(os.path.join(FIXTURES, name), run)
    return run


def test_every_kind_of_legacy_run_is_covered():
    assert set(RUNS) >= {"vae", "cvae", "autoencoder", "gan", "cgan", "ddpm", "cdit"}


@pytest.mark.parametrize("name", RUNS)
def test_legacy_run_restores_and_samples(name, tmp_path):
    run = _copy(name, tmp_path)
    recipe, config, _train, _test, step = restore_run(run)
    assert step == 2 and recipe.name == name
    images = recipe.sample(4, __import__("minigen").backend.Generator(0, "cpu"),
                           labels=np.arange(4) if recipe.conditional else None)
    assert images.shape == (4, 1, 28, 28) and np.all(np.isfinite(images))
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert os.path.getsize(sample_run(run, n=4, out=str(tmp_path / "grid.png"))) > 0


@pytest.mark.parametrize("name", RUNS)
def test_legacy_run_resumes_to_the_old_codes_numbers(name, tmp_path):
    run = _copy(name, tmp_path)
    train(None, {"steps": 3}, resume=run, progress=False, verbose=False)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = {r["step"]: r for r in map(json.loads, f) if "eval" not in r}
    with open(os.path.join(FIXTURES, name, "expected_full_metrics.json")) as f:
        expected = {r["step"]: r for r in json.load(f)}
    assert sorted(rows) == [1, 2, 3]
    for key, value in expected[3].items():      # every number the old code logged at step 3
        assert rows[3][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key

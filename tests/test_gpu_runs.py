"""Whole runs on the GPU: train with a checkpoint and a resume, sample, evaluate, the ``gpu`` presets.

Skipped without CuPy and a CUDA device (the transfer budget of the same code is
checked on the CPU by test_transfers.py).  The unit tests of ops, layers and
models already run on the GPU through the ``device`` fixture; these check the
run machinery end to end: device generators saved and restored, the loop's
deferred reads, the host-side sampling and evaluation.
"""
import json
import os

import numpy as np
import pytest

import minigen as mg
from minigen.checkpoint import load_tree
from minigen.evaluate import evaluate_run, restore_run
from minigen.families import families
from minigen.train import make_config, train

pytestmark = pytest.mark.skipif(not mg.gpu_available(), reason="needs CuPy and a CUDA device")

TINY = {
    "ddpm": dict(T=20, sample_steps=5, base_channels=8, channel_mults=(1, 2), time_dim=16, dropout=0.1,
                 warmup=2, eval_images=6),
    "vae": dict(hidden=16, latent_dim=3, eval_k=4, eval_images=6),
    "dcgan": dict(latent_dim=8, channels=4),
}
RUN = dict(steps=6, batch_size=8, log_every=2, checkpoint_every=3, sample_every=0, n_samples=4, eval_samples=0,
           device="gpu")


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [(row["step"], row["loss"]) for row in map(json.loads, f) if "loss" in row]


@pytest.mark.parametrize("family", sorted(TINY))
def test_gpu_run_resumes_exactly_then_samples_and_evaluates(tmp_path, monkeypatch, family):
    options = {**TINY[family], **RUN}
    full = train(family, options, out_dir=str(tmp_path / "full"), progress=False, verbose=False)

    cls = families()[family]
    real_step, calls = cls.train_step, {"n": 0}

    def interrupted(self, x, y):      # Ctrl-C inside step 5: the checkpoint of step 3 stands
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, x, y)

    monkeypatch.setattr(cls, "train_step", interrupted)
    cut = str(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train(family, options, out_dir=cut, progress=False, verbose=False)
    monkeypatch.setattr(cls, "train_step", real_step)
    assert load_tree(os.path.join(cut, "checkpoint.npz"))["step"] == 3
    train(None, resume=cut, progress=False, verbose=False)
    # the device draws are seeded from the saved host streams: the resumed run repeats the full one
    a, b = _losses(full), _losses(cut)
    assert [s for s, _ in a] == [s for s, _ in b] == [2, 4, 6]
    np.testing.assert_allclose([l for _, l in a], [l for _, l in b], rtol=1e-6)

    recipe = restore_run(full)[0]
    assert recipe.device == "gpu"
    images = recipe.sample(4, mg.Generator(0, "gpu"))
    assert isinstance(images, np.ndarray) and images.shape == (4, 1, 28, 28)
    assert images.min() >= 0.0 and images.max() <= 1.0
    results = evaluate_run(full, eval_samples=0, verbose=False)
    assert all(np.isfinite(v) for v in results.values() if isinstance(v, float))


@pytest.mark.parametrize("family", [name for name, cls in sorted(families().items()) if "gpu" in cls.presets])
def test_gpu_presets_train_a_few_steps(tmp_path, family):
    cls = families()[family]
    config = make_config(cls, {"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 2,
                               "sample_every": 0, "n_samples": 2, "eval_samples": 0}, preset="gpu")
    assert config.device == "gpu"
    run = train(family, {"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 2, "sample_every": 0,
                         "n_samples": 2, "eval_samples": 0}, preset="gpu", out_dir=str(tmp_path / family),
                progress=False, verbose=False)
    assert [s for s, _ in _losses(run)] == [1, 2] and all(np.isfinite(l) for _, l in _losses(run))

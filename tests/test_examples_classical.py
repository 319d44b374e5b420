"""The classical-model examples run end to end (examples/gmm_toy.py, mnist_ppca_gmm.py,
autoencoder_mnist.py, each with --quick in a fresh interpreter), and ``viz.plot_gmm``
draws what its docstring says.
"""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from minigen.models import GaussianMixture
from minigen.viz import plot_gmm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = r"-?\d+\.\d+"


def run_example(name, out_dir, *extra):
    """Run examples/<name>.py --quick --out OUT_DIR; returns its stdout."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", f"{name}.py"), "--quick",
                           "--out", str(out_dir), *extra], capture_output=True, text=True, env=env,
                          cwd=str(out_dir.parent), timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def assert_pngs(out_dir, names):
    for name in names:
        path = os.path.join(out_dir, name)
        assert os.path.exists(path), f"missing {path}"
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"


def test_gmm_toy(tmp_path):
    out = tmp_path / "gmm_toy"
    stdout = run_example("gmm_toy", out)
    for name in ("ring", "moons"):
        row = re.search(rf"^{name}\s+(\d+)\s+({NUMBER})\s+({NUMBER})\s+(\d+)\s+({NUMBER})", stdout, re.M)
        assert row, f"no result row for {name} in:\n{stdout}"
        assert all(math.isfinite(float(v)) for v in row.groups())
    assert_pngs(out, ["ring_gmm.png", "ring_em.png", "moons_gmm.png", "moons_em.png"])


def test_mnist_ppca_gmm(tmp_path):
    out = tmp_path / "mnist"
    stdout = run_example("mnist_ppca_gmm", out)
    assert_pngs(out, ["samples.png"])
    with open(out / "results.json") as f:
        results = {r["model"]: r for r in json.load(f)["results"]}
    assert set(results) == {"PPCA q=8", "PPCA q=16", "PCA-GMM q=8 K=1", "PCA-GMM q=8 K=3"}
    for name, r in results.items():
        assert f"{r['test_bits_per_dim']:.4f}" in stdout                  # the printed table holds the numbers
        assert 0.0 < r["test_bits_per_dim"] < 8.0, name                 # better than uniform, yet a bound > 0
        assert r["fit_seconds"] > 0
    # a one-component PCA-GMM is PPCA with the same q: the same bits/dim
    assert results["PCA-GMM q=8 K=1"]["test_bits_per_dim"] == pytest.approx(
        results["PPCA q=8"]["test_bits_per_dim"], abs=1e-9)
    assert results["PPCA q=16"]["train_bits_per_dim"] < results["PPCA q=8"]["train_bits_per_dim"]


def test_autoencoder_mnist(tmp_path):
    out = tmp_path / "ae"
    stdout = run_example("autoencoder_mnist", out)
    assert re.search(rf"pixel MSE {NUMBER}", stdout), stdout
    assert_pngs(out, ["reconstructions.png", "latent_2d.png", "ae/samples.png", "ae/curves.png"])
    with open(out / "ae_2d" / "config.json") as f:
        assert json.load(f)["config"]["latent_dim"] == 2


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_plot_gmm_draws_the_two_sigma_ellipses(tmp_path, covariance_type):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(200, 2)) @ [[2.0, 0.5], [0.0, 0.5]], rng.normal(size=(200, 2)) + 6])
    gmm = GaussianMixture(2, covariance_type=covariance_type, generator=0).fit(X)
    fig = plot_gmm(gmm, X, tmp_path / "gmm.png", title="two blobs")
    assert_pngs(tmp_path, ["gmm.png"])
    ax = fig.axes[0]
    assert ax.get_title() == "two blobs"
    ellipses = sorted(ax.patches, key=lambda e: e.center[0])
    assert len(ellipses) == 2
    cov = np.asarray(gmm.covariances_)
    if covariance_type == "full":
        covs = cov
    elif covariance_type == "tied":
        covs = [cov, cov]
    elif covariance_type == "diag":
        covs = [np.diag(v) for v in cov]
    else:
        covs = [v * np.eye(2) for v in cov]
    order = np.argsort(gmm.means_[:, 0])
    for e, k in zip(ellipses, order):
        np.testing.assert_allclose(e.center, gmm.means_[k])
        eigvals, eigvecs = np.linalg.eigh(covs[k])
        np.testing.assert_allclose([e.width / 2, e.height / 2], 2.0 * np.sqrt(eigvals[::-1]),  # 2-sigma, major first
                                   rtol=1e-10)
        if eigvals[1] > 1.05 * eigvals[0]:                                  # the major axis has a direction
            major = [np.cos(np.radians(e.angle)), np.sin(np.radians(e.angle))]
            assert abs(np.dot(major, eigvecs[:, 1])) == pytest.approx(1.0, abs=1e-9)


def test_plot_gmm_refuses_non_2d_data(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 3))
    gmm = GaussianMixture(2, generator=0).fit(X)
    with pytest.raises(ValueError, match="plot_gmm"):
        plot_gmm(gmm, X, tmp_path / "x.png")

"""Autoencoders (minigen/models/autoencoder.py, notes §1).

The claims checked: a linear autoencoder trained with the squared error spans
PCA's principal subspace (Baldi & Hornik 1989), measured by principal angles;
the MLP, conv and linear architectures map images to codes and back with the
documented shapes; the reconstruction losses are the documented sums; the
registered recipe's loss falls over a few steps of ``minigen.train.train`` and
the trained run can be reloaded; bad architectures and configs are refused.
"""
import json
import os

import numpy as np
import pytest
import scipy.linalg

import minigen as mg
from minigen import functional as F
from minigen import optim
from minigen.autograd import no_grad
from minigen.models import PCA, Autoencoder
from minigen.evaluate import load_trained
from minigen.models.autoencoder import reconstruction_loss
from minigen.train import TrainingError, train

TINY = {"hidden": 32, "latent_dim": 4, "batch_size": 32, "log_every": 1, "checkpoint_every": 100,
        "sample_every": 0, "n_samples": 4, "eval_samples": 0}


def low_rank_data(seed, n=200, d=20, q=3):
    """n points near a q-dimensional subspace of R^d with distinct variances 25, 9, 4 (q = 3), and a mean."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, q)))[0]                 # (d, q), orthonormal columns
    scales = np.array([5.0, 3.0, 2.0, 1.5, 1.2][:q])
    return (rng.normal(size=(n, q)) * scales) @ basis.T + 0.1 * rng.normal(size=(n, d)) + rng.normal(size=d)


def test_linear_autoencoder_spans_the_principal_subspace(float64):
    n, d, q = 200, 20, 3
    X = low_rank_data(0, n, d, q)
    pca_basis = PCA(q).fit(X).components_.T                           # (d, q)
    x = mg.tensor(X.reshape(n, 1, 4, 5))                             # the model sees 1x4x5 "images"
    ae = Autoencoder("linear", latent_dim=q, image_shape=(1, 4, 5), generator=mg.Generator(0))

    def largest_angle():
        decoder_columns = ae.decoder[0].weight.numpy()                # (d, q): Linear(q, d).weight
        return scipy.linalg.subspace_angles(decoder_columns, pca_basis).max()

    assert largest_angle() > 0.5                                      # a random start is far off
    opt = optim.Adam(ae.parameters(), lr=1e-2)
    for _ in range(2000):                                             # full-batch Adam on the MSE
        opt.zero_grad()
        F.mse_loss(ae(x), x).backward()
        opt.step()
    assert largest_angle() < 1e-2
    # its error approaches PCA's, which no rank-q affine reconstruction beats (Eckart-Young);
    # the encoder's part along the tiny noise directions converges slowly, hence the 5% slack
    with no_grad():
        mse = F.mse_loss(ae(x), x).item()
    Xc = X - X.mean(axis=0)
    pca_error = ((Xc - Xc @ pca_basis @ pca_basis.T) ** 2).mean()
    assert pca_error * (1 - 1e-9) <= mse < 1.05 * pca_error


@pytest.mark.parametrize("arch", ["linear", "mlp", "conv"])
def test_encode_decode_shapes(device, arch):
    ae = Autoencoder(arch, latent_dim=5, hidden=16, generator=mg.Generator(0)).to(device)
    x = mg.tensor(np.random.default_rng(0).uniform(size=(3, 1, 28, 28)).astype(np.float32), device=device)
    z = ae.encode(x)
    assert z.shape == (3, 5)
    assert ae.decode(z).shape == (3, 1, 28, 28)
    out = ae(x)
    assert out.shape == (3, 1, 28, 28) and out.dtype == x.dtype
    reconstruction_loss(out, x, "bce").backward()
    grads = [p.grad for p in ae.parameters()]
    assert all(g is not None and float(np.abs(mg.backend.to_numpy(g.data)).sum()) > 0 for g in grads)


def test_reconstruction_losses_are_per_image_sums():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 1, 28, 28))
    x = rng.uniform(size=(4, 1, 28, 28))
    mse = reconstruction_loss(mg.tensor(logits), mg.tensor(x), "mse").item()
    assert mse == pytest.approx(((logits - x) ** 2).sum() / 4, rel=1e-5)
    bce = reconstruction_loss(mg.tensor(logits), mg.tensor(x), "bce").item()
    p = 1 / (1 + np.exp(-logits))
    assert bce == pytest.approx(-(x * np.log(p) + (1 - x) * np.log(1 - p)).sum() / 4, rel=1e-5)


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_recipe_loss_falls_and_the_run_reloads(tmp_path, loss):
    run = train("autoencoder", {**TINY, "arch": "mlp", "loss": loss, "steps": 40, "lr": 3e-3},
                out_dir=str(tmp_path / "run"), progress=False, verbose=False)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f if line.strip()]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    recipe, test_set = load_trained(run, "autoencoder")
    x = test_set.images[:6]
    recon = recipe.reconstruct(x)
    assert recon.shape == (6, 1, 28, 28) and recon.min() >= 0.0 and recon.max() <= 1.0
    assert recipe.encode(x).shape == (6, 4)
    assert recipe.sample(3, mg.Generator(0)).shape == (3, 1, 28, 28)


def test_bad_architectures_and_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="arch must be"):
        Autoencoder("rnn")
    with pytest.raises(ValueError, match="28x28"):
        Autoencoder("conv", image_shape=(1, 32, 32))
    for bad in ({"arch": "rnn"}, {"loss": "l2"}, {"latent_dim": 0}):
        with pytest.raises(TrainingError, match="config"):
            train("autoencoder", {**TINY, "steps": 1, **bad}, out_dir=str(tmp_path / "bad"), progress=False,
                  verbose=False)
    with pytest.raises(TrainingError, match="no config.json"):
        load_trained(str(tmp_path / "nowhere"))

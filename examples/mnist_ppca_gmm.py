"""Probabilistic PCA and Gaussian mixtures on MNIST digits, scored in bits/dim (notes §1).

The 8-bit digits are uniformly dequantized, y = (255 x + u) / 256 with
u ~ U[0, 1) drawn from an explicit generator (``data.transforms.dequantize``),
so every model is a density on [0, 1]^784 and its exact test log-likelihood
becomes an upper bound on the discrete data's bits/dim
(``metrics.likelihood.dequantized_bits_per_dim``), the unit the deep models
report later.  A model that knew nothing (uniform on [0, 1]^784) scores 8.

* ``PPCA(q)``: x ~ N(mu, W Wᵀ + σ² I), closed-form maximum likelihood, for several q.
* ``PCAGaussianMixture(q, K)``: a K-component full-covariance GMM on the first q
  principal coordinates, with PPCA's isotropic noise σ² in the other 784 - q
  directions, so it is a density on pixel space too.  K = 1 is PPCA(q) exactly.

Prints one row per model (train and test bits/dim, fit time), writes
DIR/results.json and DIR/samples.png (one row of samples per model; model
samples include the isotropic pixel noise, which is why they look grainy).

    python examples/mnist_ppca_gmm.py                      # the 4,000/1,000 packaged digits, ~30 s
    python examples/mnist_ppca_gmm.py --quick              # 600 training digits, small q and K
    python examples/mnist_ppca_gmm.py --ppca-q 32 64 --gmm-q 32 --gmm-k 1 5 10 --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import time

# On a shared 2-core machine one BLAS thread is faster than two fighting over it (EM makes many
# small LAPACK calls); set before NumPy loads; a setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import minigen as mg  # noqa: E402
from minigen.data import load_dataset, transforms  # noqa: E402
from minigen.metrics.likelihood import dequantized_bits_per_dim  # noqa: E402
from minigen.models import PPCA  # noqa: E402
from minigen.models.gmm import PCAGaussianMixture  # noqa: E402
from minigen.viz import save_image_grid  # noqa: E402
from minigen.checkpoint import atomic_write_text  # noqa: E402

SAMPLES_PER_ROW = 10


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few digits, small q and K (a smoke run)")
    parser.add_argument("--out", default="runs/examples/mnist_ppca_gmm", help="output directory")
    parser.add_argument("--ppca-q", type=int, nargs="+", default=None,
                        help="PPCA latent dimensions (default 16 32 64 128 256)")
    parser.add_argument("--gmm-q", type=int, default=None, help="principal coordinates for the GMM (default 64)")
    parser.add_argument("--gmm-k", type=int, nargs="+", default=None, help="GMM component counts (default 1 10 20)")
    parser.add_argument("--data-dir", default=None, help="directory with MNIST IDX files (default: packaged digits)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ppca_qs = args.ppca_q or ([8, 16] if args.quick else [16, 32, 64, 128, 256])
    gmm_q = args.gmm_q or (8 if args.quick else 64)
    gmm_ks = args.gmm_k or ([1, 3] if args.quick else [1, 10, 20])

    train, test = load_dataset("mnist", "train", args.data_dir), load_dataset("mnist", "test", args.data_dir)
    if args.quick:
        train.images, test.images = train.images[:600], test.images[:200]
    print(f"data: {train.source}")
    # dequantized pixels, flattened to (N, 784); train and test noise from their own generators
    X = transforms.dequantize(train.images, mg.Generator(args.seed, "cpu")).reshape(len(train.images), -1)
    X_test = transforms.dequantize(test.images, mg.Generator(args.seed + 1, "cpu")).reshape(len(test.images), -1)
    d = X.shape[1]
    print(f"{len(X)} train / {len(X_test)} test digits, {d} pixels, uniformly dequantized\n")

    models = [(f"PPCA q={q}", PPCA(q)) for q in ppca_qs]
    models += [(f"PCA-GMM q={gmm_q} K={k}", PCAGaussianMixture(gmm_q, k, max_iter=300, generator=args.seed))
               for k in gmm_ks]
    print(f"{'model':22s} {'train bits/dim':>15s} {'test bits/dim':>14s} {'fit s':>7s}")
    results, rows = [], []
    for name, model in models:
        start = time.perf_counter()
        model.fit(X)
        seconds = time.perf_counter() - start
        train_bpd = float(dequantized_bits_per_dim(model.score_samples(X), d).mean())
        test_bpd = float(dequantized_bits_per_dim(model.score_samples(X_test), d).mean())
        print(f"{name:22s} {train_bpd:15.4f} {test_bpd:14.4f} {seconds:7.2f}", flush=True)
        results.append({"model": name, "train_bits_per_dim": train_bpd, "test_bits_per_dim": test_bpd,
                        "fit_seconds": seconds})
        draws = model.sample(SAMPLES_PER_ROW, generator=mg.Generator(args.seed + 2, "cpu"))
        rows.append(draws[0] if isinstance(draws, tuple) else draws)     # the mixture also returns labels

    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "results.json"),
                      json.dumps({"train_digits": len(X), "test_digits": len(X_test), "data": train.source,
                                  "results": results}, indent=2))
    images = np.concatenate(rows).reshape(-1, 1, 28, 28)
    save_image_grid(images, os.path.join(args.out, "samples.png"), nrow=SAMPLES_PER_ROW,
                    row_labels=[name for name, _ in models], ylabel="model",
                    title="PPCA and PCA-GMM samples (clipped to [0, 1])")
    print(f"\nfigures and table: {args.out}/samples.png, {args.out}/results.json")


if __name__ == "__main__":
    main()

"""Autoencoders on MNIST through the training loop: reconstructions and a 2-D latent map (notes §1).

Two runs of the registered family ``autoencoder`` via ``minigen.train.train``
(checkpoints, metrics.jsonl, curves and sample grids like any CLI run):

1. the default config (``--arch mlp``, or ``conv``; a 16-dimensional code):
   DIR/reconstructions.png, ten test digits (top row) and their reconstructions
   (bottom row), and its test reconstruction error from ``evaluate_run``;
2. the same with ``latent_dim=2``: DIR/latent_2d.png, the codes of the 1,000
   test digits coloured by their label.

The sample grids in each run directory decode draws from a Gaussian fitted to
training codes: an autoencoder has no prior over codes, which is what the VAE
(notes §2) adds.

    python examples/autoencoder_mnist.py                 # 2 x 1,500 steps of the default MLP
    python examples/autoencoder_mnist.py --arch conv     # the convolutional encoder/decoder
    python examples/autoencoder_mnist.py --quick         # a small, short smoke run
    python examples/autoencoder_mnist.py --steps 3000 --out DIR   # default runs/examples/autoencoder_mnist

The same runs from the command line:

    python -m minigen train autoencoder --out DIR/ae
    python -m minigen train autoencoder --latent-dim 2 --out DIR/ae_2d
"""
from __future__ import annotations

import argparse
import os
import time

# On a shared 2-core machine one BLAS thread is several times faster than two fighting over it
# (set before NumPy loads; a setting in the environment wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from minigen.evaluate import evaluate_run, load_trained  # noqa: E402
from minigen.train import train  # noqa: E402
from minigen.viz import plot_latent, save_image_grid  # noqa: E402

QUICK = dict(steps=30, hidden=32, batch_size=32, log_every=5, checkpoint_every=30, sample_every=0,
             n_samples=16, eval_samples=0)
N_SHOWN = 10


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, short smoke run")
    parser.add_argument("--out", default="runs/examples/autoencoder_mnist", help="output directory")
    parser.add_argument("--arch", default="mlp", choices=["mlp", "conv", "linear"])
    parser.add_argument("--steps", type=int, default=None, help="training steps of each run (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    overrides = dict(QUICK) if args.quick else {}
    overrides.update(arch=args.arch, seed=args.seed)
    if args.steps:
        overrides["steps"] = args.steps

    start = time.perf_counter()
    run = train("autoencoder", overrides, out_dir=os.path.join(args.out, "ae"), progress=not args.quick)
    minutes = (time.perf_counter() - start) / 60
    scores = evaluate_run(run, eval_samples=0, verbose=False)
    print(f"{args.arch} autoencoder: {run} ({minutes:.1f} min); test reconstruction loss "
          f"{scores['test_recon_loss']:.2f} per image, pixel MSE {scores['test_pixel_mse']:.4f}", flush=True)
    recipe, test_set = load_trained(run, "autoencoder")
    x = test_set.images[:N_SHOWN]
    save_image_grid(np.concatenate([x, recipe.reconstruct(x)]), os.path.join(args.out, "reconstructions.png"),
                    nrow=N_SHOWN, row_labels=["data", "reconstruction"], ylabel="row",
                    xlabel="test digit", title=f"{args.arch} autoencoder: test digits and reconstructions")

    start = time.perf_counter()
    run_2d = train("autoencoder", {**overrides, "latent_dim": 2}, out_dir=os.path.join(args.out, "ae_2d"),
                   progress=not args.quick)
    minutes = (time.perf_counter() - start) / 60
    recipe_2d, test_set = load_trained(run_2d, "autoencoder")
    plot_latent(recipe_2d.encode(test_set.images), test_set.labels, os.path.join(args.out, "latent_2d.png"),
                title=f"{args.arch} autoencoder, 2-D codes of {len(test_set)} test digits")
    print(f"2-D code run: {run_2d} ({minutes:.1f} min)")
    print(f"figures: {args.out}/reconstructions.png, {args.out}/latent_2d.png")


if __name__ == "__main__":
    main()

"""VAE and conditional VAE on dynamically binarized MNIST (notes §2, §4).

Trains the registered families ``vae`` and ``cvae`` through ``minigen.train.train``
(checkpoints, logs, sample grids), then draws from the trained models:

    RUN/vae/samples.png          decoder means of draws z ~ N(0, I)
    RUN/vae/reconstructions.png  test digits (odd rows) and their reconstructions (even rows)
    RUN/vae/interpolations.png   decode((1 - a) mu(x0) + a mu(x1)) for pairs of test digits
    RUN/vae/manifold.png         (latent_dim 2) the decoder over a grid of equal prior mass
    RUN/vae/latent.png           the posterior means of the test set, coloured by label
    RUN/cvae/classes.png         the conditional VAE, one row per class

With ``--eval`` each run is scored by ``minigen.evaluate.evaluate_run``: test
ELBO and importance-weighted NLL (nats and bits/dim), FLD/KID of samples, and
for the CVAE the reference classifier's accuracy on its class-conditional samples.

    python examples/vae_mnist.py                     # latent_dim 2 (the manifold plot), default steps
    python examples/vae_mnist.py --latent-dim 16 --eval
    python examples/vae_mnist.py --quick             # seconds: a smoke run

The same training from the command line:

    python -m minigen train vae --latent-dim 2 --out runs/vae_mnist/vae
    python -m minigen eval runs/vae_mnist/vae
"""
from __future__ import annotations

import argparse
import os
import time

# minigen before NumPy: importing it first limits OpenBLAS's idle spin so the convolutions can use
# both cores (minigen/backend.py, minigen/functional/parallel.py)
from minigen.checkpoint import load_tree
import numpy as np

from minigen.evaluate import evaluate_run, format_results
from minigen.models.vae import latent_manifold
from minigen.train import build, read_run_config, train
from minigen.viz import plot_interpolation, plot_latent, save_image_grid

QUICK = dict(steps=30, batch_size=32, hidden=32, log_every=5, sample_every=0, checkpoint_every=30,
             n_samples=20, eval_samples=0, eval_k=10, eval_images=100)


def load_recipe(run_dir):
    """The trained recipe of a run directory, with its test set."""
    recipe_cls, config = read_run_config(run_dir)
    recipe, _train_set, test_set, *_ = build(recipe_cls, config, verbose=False)
    recipe.load_state_dict(load_tree(os.path.join(run_dir, "checkpoint.npz"))["recipe"])
    recipe.train(False)
    return recipe, test_set


def vae_figures(run_dir):
    recipe, test = load_recipe(run_dir)
    x, y = test.images, test.labels
    first = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(10)])   # two digits of each class
    rows = []
    for half in (first[:10], first[10:]):
        rows += [x[half], recipe.reconstruct(x[half])]
    save_image_grid(np.concatenate(rows), os.path.join(run_dir, "reconstructions.png"), nrow=10,
                    title="test digits and reconstructions", row_labels=["data", "recon"] * 2, ylabel="row")
    pairs = [(first[2 * c], first[2 * ((c + 3) % 10)]) for c in range(5)]      # digit c -> digit c + 3
    strips = recipe.interpolate(x[[a for a, _ in pairs]], x[[b for _, b in pairs]], steps=10)
    plot_interpolation(strips, os.path.join(run_dir, "interpolations.png"),
                       row_labels=[f"{y[a]}->{y[b]}" for a, b in pairs])
    z = recipe.encode(x)
    plot_latent(z, y, os.path.join(run_dir, "latent.png"), title="posterior means of the test set")
    if z.shape[1] == 2:
        grid = latent_manifold(recipe.model, n=20)
        save_image_grid(grid, os.path.join(run_dir, "manifold.png"), nrow=20,
                        title="decoder over the 2-D latent grid (equal prior mass per cell)", xlabel="z1", ylabel="z2")


def cvae_figures(run_dir):
    import minigen as mg

    recipe, test = load_recipe(run_dir)
    labels = np.repeat(np.arange(10), 10)
    images = recipe.sample(len(labels), mg.Generator(0, recipe.device), labels=labels)
    save_image_grid(images, os.path.join(run_dir, "classes.png"), nrow=10, title="CVAE: one row per class",
                    row_labels=list(test.classes))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few tiny steps (a smoke run)")
    parser.add_argument("--out", default="runs/vae_mnist", help="parent directory of the runs")
    parser.add_argument("--latent-dim", type=int, default=2, help="size of z (2 also draws the manifold)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the family's)")
    parser.add_argument("--families", nargs="+", default=["vae", "cvae"], choices=["vae", "conv-vae", "cvae"])
    parser.add_argument("--eval", action="store_true", help="ELBO, L_k NLL and sample metrics after training")
    parser.add_argument("--eval-samples", type=int, default=None, help="generated images for --eval")
    args = parser.parse_args(argv)

    for family in args.families:
        overrides = dict(QUICK) if args.quick else {}
        overrides["latent_dim"] = args.latent_dim
        if args.steps:
            overrides["steps"] = args.steps
        start = time.perf_counter()
        run = train(family, overrides, out_dir=os.path.join(args.out, family), progress=not args.quick)
        print(f"{family}: trained in {(time.perf_counter() - start) / 60:.1f} min -> {run}", flush=True)
        if family == "cvae":
            cvae_figures(run)
        else:
            vae_figures(run)
        if args.eval:
            results = evaluate_run(run, eval_samples=0 if args.quick else args.eval_samples, verbose=False)
            print(format_results(results), flush=True)


if __name__ == "__main__":
    main()

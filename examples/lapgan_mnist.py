"""LAPGAN on MNIST: a Laplacian pyramid of GANs, 7x7 -> 14x14 -> 28x28 (notes §3.3, §4.1).

Trains ``lapgan`` and the class-conditional ``clapgan`` through
``minigen.train.train`` (every level, one step each per loop step), then draws

    RUN/samples.png          the loop's final sample grid (clapgan: one row per class)
    RUN/pyramid_strip.png    the sampling chain of a few samples, left to right:
                             I~_2 (7x7), h~_1, I~_1 (14x14), h~_0, I~_0 (28x28)
    RUN/real_pyramid.png     the same columns for real test digits: I_2, h_1, I_1, h_0, I_0

(every image shown at 28x28, pixels repeated; residuals shown as 0.5 + h/2, so
grey is 0).  With ``--eval`` each run is scored by ``minigen.evaluate.evaluate_run``:
FLD, KID, precision/recall beside their floors, the FLD of each level's output
upsampled (``fld_level_k``) and, for clapgan, the conditional accuracy.

    python examples/lapgan_mnist.py --eval                 # both defaults
    python examples/lapgan_mnist.py --runs runs/lapgan     # pictures (and --eval) of finished runs
    python examples/lapgan_mnist.py --quick                # a tiny smoke run

The same training from the command line:

    python -m minigen train lapgan --out runs/lapgan_mnist/lapgan
    python -m minigen eval runs/lapgan_mnist/lapgan
"""
from __future__ import annotations

import argparse
import os
import time

# minigen before NumPy: importing it first limits OpenBLAS's idle spin so the convolutions can use
# both cores (minigen/backend.py, minigen/functional/parallel.py)
from minigen import backend
import numpy as np

from minigen.autograd import Tensor, no_grad
from minigen.evaluate import evaluate_run, restore_run
from minigen.families.lapgan import ConditionalLAPGANRecipe, LAPGANRecipe
from minigen.models.lapgan import gaussian_pyramid, upsample
from minigen.train import train
from minigen.viz import make_grid

FAMILIES = {"lapgan": LAPGANRecipe, "clapgan": ConditionalLAPGANRecipe}
QUICK = dict(steps=4, batch_size=8, latent_dim=8, channels=(4, 4, 4), log_every=1, sample_every=0,
             checkpoint_every=4, n_samples=10, eval_samples=0)
METRICS = ["fld", "kid", "precision", "recall", "conditional_accuracy", "fld_level_2", "fld_level_1", "fld_level_0"]


def _full_size(images, side=28):
    """(N, C, h, w) -> (N, C, side, side) by repeating pixels, for display only."""
    f = side // images.shape[-1]
    return np.repeat(np.repeat(images, f, axis=2), f, axis=3)


def _strip_columns(coarse_to_fine, mode):
    """[I_K, h_{K-1}, I_{K-1}, ..., h_0, I_0] (host, [0, 1]; residuals as 0.5 + h/2) from the images I_K .. I_0."""
    columns = [coarse_to_fine[0]]
    for coarser, finer in zip(coarse_to_fine[:-1], coarse_to_fine[1:]):
        with no_grad():
            low = upsample(Tensor(coarser), mode).numpy()
        columns += [0.5 + (finer - low) / 2, finer]
    return columns


def save_strip(columns, names, path, title):
    """One row per image, one column per pyramid image (a few lines of matplotlib over minigen.viz.make_grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(columns[0])
    tiles = np.stack([_full_size(c) for c in columns], axis=1)             # (n, columns, C, 28, 28)
    grid = make_grid(tiles.reshape(-1, *tiles.shape[2:]), nrow=len(columns))
    fig, ax = plt.subplots(figsize=(0.55 * len(columns) + 1.2, 0.55 * n + 0.9))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([2 + k * 30 + 14 for k in range(len(columns))], names, fontsize=7)
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pictures(run, n=8):
    """pyramid_strip.png (the sampling chain) and real_pyramid.png of a run directory."""
    recipe, config, _train, test_set, step = restore_run(run)
    K = recipe.model.coarsest
    sizes = [f"{s[1]}x{s[2]}" for s in reversed(recipe.model.shapes)]
    names = [f"I~{K} {sizes[0]}"]
    for k in reversed(range(K)):
        names += [f"h~{k}", f"I~{k} {sizes[K - k]}"]
    labels = np.arange(n) % 10 if recipe.conditional else None
    with no_grad():
        chain = recipe.sample_pyramid(n, backend.Generator(config.seed + 5, recipe.device), labels=labels)
    save_strip(_strip_columns(chain, config.upsample), names, os.path.join(run, "pyramid_strip.png"),
               f"{recipe.name}: sampling chain, coarse to fine (step {step}; grey = 0)")
    with no_grad():
        real = [g.numpy() for g in reversed(gaussian_pyramid(Tensor(test_set.images[:n]), recipe.model.levels))]
    save_strip(_strip_columns(real, config.upsample), [s.replace("~", "") for s in names],
               os.path.join(run, "real_pyramid.png"), "real test digits: the Laplacian pyramid (residuals h: grey = 0)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few tiny steps (a smoke run)")
    parser.add_argument("--out", default="runs/lapgan_mnist", help="parent directory of the runs")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--steps", type=int, default=None, help="loop steps (default: the family's)")
    parser.add_argument("--runs", nargs="+", default=None, help="existing run directories: pictures only, no training")
    parser.add_argument("--eval", action="store_true", help="sample metrics after training (FLD, KID, ...)")
    args = parser.parse_args(argv)

    summary = []
    runs = [(None, run) for run in args.runs] if args.runs else [(f, None) for f in args.families]
    for family, run in runs:
        start = time.perf_counter()
        if run is None:
            overrides = dict(QUICK) if args.quick else {}
            if args.steps:
                overrides["steps"] = args.steps
            run = train(FAMILIES[family], overrides, out_dir=os.path.join(args.out, family), progress=not args.quick)
        minutes = (time.perf_counter() - start) / 60
        pictures(run)
        row = {"run": run, "minutes": minutes}
        if args.eval:
            row.update(evaluate_run(run, verbose=False))
        summary.append(row)
        print(f"{run} ({minutes:.1f} min): samples.png, pyramid_strip.png, real_pyramid.png", flush=True)

    columns = [m for m in METRICS if any(m in r for r in summary)]
    if columns:
        print(f"\n{'run':32s}" + "".join(f" {m:>14s}" for m in columns))
        for r in summary:
            print(f"{r['run'][-32:]:32s}" + "".join(f" {r[m]:14.4f}" if m in r else f" {'-':>14s}" for m in columns))


if __name__ == "__main__":
    main()

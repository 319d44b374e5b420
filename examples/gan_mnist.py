"""DCGAN and conditional GAN on MNIST through the training loop (notes §3.3, §4.1).

Trains the registered families ``dcgan`` and ``cgan`` with their default
configs via ``minigen.train.train`` (checkpoints, logs, sample grids: the cGAN
grid has one row per class), draws the two players' loss curves, and with
``--eval`` scores each run with ``minigen.evaluate.evaluate_run``: FLD, KID,
precision/recall in the reference classifier's feature space (each beside its
real-vs-real floor) and, for the cGAN, the classifier's accuracy on its
class-conditional samples.

    python examples/gan_mnist.py --eval            # both defaults (~10 min each on 2 CPU cores)
    python examples/gan_mnist.py --quick           # a tiny smoke run
    python examples/gan_mnist.py --families cgan --steps 500 --out runs/gan_mnist

The same runs from the command line:

    python -m minigen train dcgan --out runs/gan_mnist/dcgan
    python -m minigen train cgan  --out runs/gan_mnist/cgan
    python -m minigen eval runs/gan_mnist/dcgan
"""
from __future__ import annotations

import argparse
import os
import time

from minigen.evaluate import evaluate_run
from minigen.train import train
from minigen.viz import plot_curves

QUICK = dict(steps=20, batch_size=16, channels=8, log_every=5, sample_every=0, checkpoint_every=20,
             n_samples=20, eval_samples=0)
METRICS = ["fld", "kid", "precision", "recall", "conditional_accuracy"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few tiny steps (a smoke run)")
    parser.add_argument("--out", default="runs/gan_mnist", help="parent directory of the runs")
    parser.add_argument("--families", nargs="+", default=["dcgan", "cgan"], choices=["gan", "dcgan", "cgan"])
    parser.add_argument("--steps", type=int, default=None, help="generator steps (default: the family's)")
    parser.add_argument("--eval", action="store_true", help="sample metrics after training (FLD, KID, ...)")
    parser.add_argument("--eval-samples", type=int, default=None, help="generated images for --eval")
    args = parser.parse_args(argv)

    summary = []
    for family in args.families:
        overrides = dict(QUICK) if args.quick else {}
        if args.steps:
            overrides["steps"] = args.steps
        start = time.perf_counter()
        run = train(family, overrides, out_dir=os.path.join(args.out, family), progress=not args.quick)
        minutes = (time.perf_counter() - start) / 60
        plot_curves(os.path.join(run, "metrics.jsonl"), os.path.join(run, "gan_losses.png"),
                    keys=["loss_d", "loss_g", "d_real", "d_fake"], title=f"{family}: the two players")
        row = {"family": family, "run": run, "minutes": minutes}
        if args.eval:
            row.update(evaluate_run(run, eval_samples=args.eval_samples, verbose=False))
        summary.append(row)
        print(f"{family}: {run} ({minutes:.1f} min); samples.png, curves.png, gan_losses.png", flush=True)

    columns = [m for m in METRICS if any(m in r for r in summary)]
    print(f"\n{'family':8s} {'minutes':>8s}" + "".join(f" {m:>20s}" for m in columns))
    for r in summary:
        cells = "".join(f" {r[m]:20.4f}" if m in r else f" {'-':>20s}" for m in columns)
        print(f"{r['family']:8s} {r['minutes']:8.1f}{cells}")

if __name__ == "__main__":
    main()

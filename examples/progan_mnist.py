"""Progressive GAN on MNIST: the growth strip, the final EMA samples, the loss curves by phase (notes §3.3).

Trains the family ``progan`` (7x7 -> 14x14 -> 28x28, see
``minigen/models/progan.py``) through ``minigen.train.train``, stopping at the
end of every phase of the growth schedule and in the middle of every fade-in to
draw the same eight latent vectors from the EMA generator, then continuing with
``resume`` (the checkpoint holds the schedule's position, so the pieces add up
to exactly the uninterrupted run).  It writes, into the run directory:

    progan_growth.png   the growth strip: one row per z, one column per stop
    progan_samples.png  the final sample grid of the EMA generator
    progan_curves.png   the losses, the critic's Wasserstein estimate and the
                        gradient penalty, with the phases shaded

and with ``--eval`` the sample metrics of ``minigen.evaluate.evaluate_run``
(FLD, KID, precision/recall beside their real-vs-real floors).

    python examples/progan_mnist.py --eval            # the default run
    python examples/progan_mnist.py --quick           # a tiny smoke run
    python examples/progan_mnist.py --docs docs/img   # also copy the three pictures there

The same run from the command line (without the stops):

    python -m minigen train progan --out runs/progan_mnist/progan
    python -m minigen eval runs/progan_mnist/progan
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

# minigen before NumPy: importing it first limits OpenBLAS's idle spin so the convolutions can use
# both cores (minigen/backend.py, minigen/functional/parallel.py)
from minigen import backend
import numpy as np

from minigen.evaluate import evaluate_run, load_trained
from minigen.families import get_family, make_config
from minigen.models.progan import growth_stage, phase_boundaries
from minigen.train import train
from minigen.viz import read_metrics

QUICK = dict(steps=24, batch_size=4, channels=(8, 4, 4), latent_dim=8, mbstd_group=2, stabilize_images=16,
             transition_images=16, log_every=2, sample_every=0, checkpoint_every=100, n_samples=16,
             eval_samples=0)
N_STRIP = 8          # latent vectors in the growth strip


def stops(config, n_levels):
    """Steps at which to stop and draw: the middle and the end of every phase, and the last step."""
    per_step = config.batch_size
    out = []
    for start, level, kind in phase_boundaries(n_levels, config.stabilize_images, config.transition_images)[1:]:
        if kind == "transition":
            out.append(start // per_step)                                             # end of the stable phase
            out.append((start + config.transition_images // 2) // per_step)          # the middle of the fade-in
        else:
            out.append(start // per_step)                                             # end of the fade-in
    out.append(config.steps)
    return sorted({s for s in out if 0 < s <= config.steps})


def stage_label(config, n_levels, step, base):
    """What the generator draws after ``step`` steps, e.g. "14x14" or "7->14, a=0.50"."""
    level, alpha = growth_stage(step * config.batch_size, n_levels, config.stabilize_images,
                                config.transition_images)
    if alpha == 0.0:                       # alpha = 0: exactly the previous level's output, upsampled
        level, alpha = level - 1, 1.0
    r = base * 2 ** level
    return f"{r}x{r}" if alpha >= 1.0 else f"{r // 2}->{r}\na={alpha:.2f}"


def plot_growth(columns, labels, path, title):
    """columns: a list of (N, 1, 28, 28) arrays, one per stop -> a grid with one column per stop."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, k = len(columns[0]), len(columns)
    fig, axes = plt.subplots(n, k, figsize=(0.75 * k + 0.6, 0.75 * n + 1.0), squeeze=False)
    for j, (images, label) in enumerate(zip(columns, labels)):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(images[i, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == n - 1:
                ax.set_xlabel(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_phases(metrics_path, config, n_levels, path, title):
    """Loss curves against images shown, with the fade-in phases shaded and the phase starts marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    steps = np.array([r["step"] for r in rows], dtype=float)
    keys = [("loss_d", "D loss (WGAN-GP + drift)"), ("loss_g", "G loss"),
            ("wasserstein", "critic's W estimate"), ("gp", "gradient penalty")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 2.9))
    bounds = phase_boundaries(n_levels, config.stabilize_images, config.transition_images)
    window = max(1, len(rows) // 60)  # a running mean, the raw values behind it
    for ax, (key, name) in zip(axes, keys):
        values = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        ax.plot(steps, values, color="0.75", lw=0.6)
        if len(values) >= window:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color="C0", lw=1.2)
        for start, level, kind in bounds:
            s = start / config.batch_size
            if s > steps[-1]:
                break
            if kind == "transition":
                ax.axvspan(s, s + config.transition_images / config.batch_size, color="C1", alpha=0.15, lw=0)
            ax.axvline(s, color="C1" if kind == "transition" else "C2", lw=0.8, ls="--")
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
        if key == "gp" and np.nanmin(values) > 0:
            ax.set_yscale("log")          # large for the first steps of a new level, then small
    fig.suptitle(title + "  (orange: fade-in, green line: a new resolution is stable)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few tiny steps (a smoke run)")
    parser.add_argument("--out", default="runs/progan_mnist", help="parent directory of the run")
    parser.add_argument("--steps", type=int, default=None, help="loop steps (default: the family's)")
    parser.add_argument("--eval", action="store_true", help="sample metrics after training (FLD, KID, ...)")
    parser.add_argument("--docs", default=None, help="also copy the pictures into this directory")
    args = parser.parse_args(argv)

    recipe_cls = get_family("progan")
    overrides = dict(QUICK) if args.quick else {}
    if args.steps:
        overrides["steps"] = args.steps
    config = make_config(recipe_cls, overrides)
    n_levels = len(config.channels)
    run = os.path.join(args.out, "progan")
    if os.path.exists(os.path.join(run, "config.json")):
        raise SystemExit(f"{run} exists already; pass another --out")

    start = time.perf_counter()
    columns, labels = [], []
    for i, stop in enumerate(stops(config, n_levels)):
        if i == 0:
            train("progan", {**overrides, "steps": stop}, out_dir=run, progress=not args.quick, verbose=False)
        else:
            train(None, {"steps": stop}, resume=run, progress=not args.quick, verbose=False)
        recipe, _ = load_trained(run)
        columns.append(recipe.sample(N_STRIP, backend.Generator(config.seed + 3, recipe.device)))
        labels.append(f"step {stop}\n{stage_label(config, n_levels, stop, config.base_resolution)}")
        print(f"step {stop}: {labels[-1].splitlines()[1]} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    minutes = (time.perf_counter() - start) / 60

    pictures = {
        "progan_growth.png": lambda p: plot_growth(columns, labels, p, "Progressive GAN: the same z as G grows"),
        "progan_curves.png": lambda p: plot_phases(os.path.join(run, "metrics.jsonl"), config, n_levels, p,
                                                   "Progressive GAN on MNIST"),
    }
    for name, draw in pictures.items():
        draw(os.path.join(run, name))
    shutil.copy(os.path.join(run, "samples.png"), os.path.join(run, "progan_samples.png"))
    print(f"progan: {run} ({minutes:.1f} min); progan_growth.png, progan_samples.png, progan_curves.png")
    if args.docs:
        os.makedirs(args.docs, exist_ok=True)
        for name in ("progan_growth.png", "progan_samples.png", "progan_curves.png"):
            shutil.copy(os.path.join(run, name), os.path.join(args.docs, name))
    if args.eval:
        results = evaluate_run(run, verbose=False)
        print("  ".join(f"{k} {v:.4g}" for k, v in results.items() if isinstance(v, float)))


if __name__ == "__main__":
    main()

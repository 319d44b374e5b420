"""Diffusion models on MNIST: DDPM/DDIM with a UNet or a DiT, and classifier-free guidance (notes §5).

Trains the registered families (default ``ddpm``) through ``minigen.train.train``
(checkpoints, logs, EMA sample grids), then, with the EMA weights:

    RUN/samples.png           DDIM samples (the family's sampler) at the end of training
    RUN/curves.png            the training loss (the MSE of eps, x0 or v) and learning rate
    RUN/forward.png           forward noising q(x_t | x_0) of test digits, t = 0 ... T-1 (§5.1)
    RUN/reverse.png           one ancestral run x_{T-1} -> x_0 of 1,000 steps, every 100th step (§5.5)
    RUN/ddim_sweep.json       FLD / KID / precision / recall and seconds for 10 ... 1000 DDIM steps
                              (rows are merged across calls, so the sweep can run in parts)
    RUN/guidance.json         (conditional families) FLD and conditional accuracy per guidance scale
    RUN/eval.json             with --eval: the exact bound in bits/dim on test digits and the sample metrics

    python examples/diffusion_mnist.py --eval                        # ddpm: train, pictures, metrics
    python examples/diffusion_mnist.py --families cddpm --scales 0 1 2 3 5
    python examples/diffusion_mnist.py --families dit --eval
    python examples/diffusion_mnist.py --quick                       # seconds: a smoke run

A run directory that already holds a finished checkpoint is reused (no retraining); pass
--retrain to start over.  The same training from the command line:

    python -m minigen train ddpm --out runs/diffusion_mnist/ddpm
    python -m minigen eval runs/diffusion_mnist/ddpm
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

# minigen before NumPy: importing it first limits OpenBLAS's idle spin so the convolutions can use
# both cores (minigen/backend.py, minigen/functional/parallel.py)
from minigen import backend
import numpy as np

from minigen.autograd import Tensor, no_grad
from minigen.checkpoint import atomic_write_text, load_tree
from minigen.evaluate import evaluate_run, restore_run, sample_metrics
from minigen.data.transforms import from_symmetric_range, to_symmetric_range
from minigen.train import train
from minigen.viz import plot_trajectory

QUICK = dict(steps=4, batch_size=8, T=20, sample_steps=5, base_channels=8, channel_mults=(1, 2), time_dim=16,
             dim=16, depth=1, heads=2, log_every=1, sample_every=0, checkpoint_every=4, n_samples=10,
             eval_samples=0, eval_images=4, warmup=2)
METRICS = ["fld", "kid", "precision", "recall", "conditional_accuracy"]


def _finished(run, steps=None):
    path = os.path.join(run, "checkpoint.npz")
    if not os.path.exists(path):
        return False
    with open(os.path.join(run, "config.json")) as f:
        target = json.load(f)["config"]["steps"] if steps is None else steps
    return int(load_tree(path)["step"]) >= target


def forward_strip(recipe, images, path, n_cols=8):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for t evenly spaced in [0, T-1] (§5.1)."""
    T = recipe.diffusion.T
    ts = np.linspace(0, T - 1, n_cols).round().astype(int)
    gen = backend.Generator(0, recipe.device)
    x0 = to_symmetric_range(Tensor(backend.to_device(images, recipe.device)))
    frames = []
    for t in ts:
        tt = Tensor(backend.to_device(np.full(len(images), t, dtype=np.int64), recipe.device))
        noise = Tensor(gen.normal(tuple(x0.shape)))
        frames.append(recipe.diffusion.q_sample(x0, tt, noise).numpy())
    plot_trajectory(frames, ts.tolist(), path, title="forward process q(x_t | x_0)")


def reverse_strip(recipe, path, n=6, n_cols=11, labels=None):
    """One ancestral DDPM run over all T steps, recorded at n_cols evenly spaced times (§5.5)."""
    T = recipe.diffusion.T
    gen = backend.Generator(1, recipe.device)
    every = max(1, T // (n_cols - 1))
    _, trajectory = recipe.generate(n, gen, labels=labels, sampler="ddpm", record=every)
    ts = [t if t >= 0 else "x0" for t, _ in trajectory]   # the last frame is the clean sample
    plot_trajectory([frame for _, frame in trajectory], ts, path, title="reverse process, ancestral sampling")


def _samples(recipe, n, seed, batch=250, **kw):
    gen = backend.Generator(seed, recipe.device)
    images, labels = [], []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        lab = (np.arange(start, start + m) % 10) if recipe.conditional else None
        images.append(np.clip(from_symmetric_range(recipe.generate(m, gen, labels=lab, **kw)), 0.0, 1.0))
        if lab is not None:
            labels.append(lab)
    return np.concatenate(images), (np.concatenate(labels) if labels else None)


def _metrics(images, labels, train_set, test_set, score):
    """Sample metrics in the reference classifier's features (skipped by --quick: no classifier needed)."""
    if not score:
        return {}
    m = sample_metrics(images, train_set, test_set, labels)
    return {k: m[k] for k in METRICS + ["fld_floor"] if k in m}


def _describe(m):
    return "  ".join(f"{k} {m[k]:.3f}" for k in METRICS if k in m)


def ddim_sweep(recipe, train_set, test_set, steps_list, n, path, score=True):
    """Sample quality and time against the number of DDIM steps (eta = 0)."""
    rows = []
    for steps in steps_list:
        if steps > recipe.diffusion.T:
            continue
        start = time.perf_counter()
        images, labels = _samples(recipe, n, seed=10, sampler="ddim", steps=steps, eta=0.0)
        seconds = time.perf_counter() - start
        m = _metrics(images, labels, train_set, test_set, score)
        rows.append({"steps": steps, "seconds": seconds, "samples": n, **m})
        print(f"  DDIM {steps:5d} steps: {seconds:7.1f} s  {_describe(m)}", flush=True)
    return _merge_rows(path, rows, "steps")


def _merge_rows(path, rows, key):
    """Write rows to a JSON list, replacing earlier rows with the same ``key`` (sweeps run in parts)."""
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = [r for r in json.load(f) if r[key] not in {n[key] for n in rows}]
    merged = sorted(old + rows, key=lambda r: r[key])
    atomic_write_text(path, json.dumps(merged, indent=2))
    return merged


def guidance_sweep(recipe, train_set, test_set, scales, n, path, steps=None, score=True):
    """Classifier-free guidance: FLD and conditional accuracy against the scale s (s = 1: no guidance)."""
    steps = steps or recipe.config.sample_steps
    rows = []
    for s in scales:
        start = time.perf_counter()
        images, labels = _samples(recipe, n, seed=11, guidance_scale=s, sampler="ddim", steps=steps)
        seconds = time.perf_counter() - start
        m = _metrics(images, labels, train_set, test_set, score)
        rows.append({"guidance_scale": s, "seconds": seconds, "samples": n, "steps": steps, **m})
        print(f"  guidance {s:4.1f}: {seconds:7.1f} s  {_describe(m)}", flush=True)
    return _merge_rows(path, rows, "guidance_scale")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few tiny steps (a smoke run)")
    parser.add_argument("--out", default="runs/diffusion_mnist", help="parent directory of the runs")
    parser.add_argument("--families", nargs="+", default=["ddpm"], choices=["ddpm", "dit", "cddpm", "cdit"])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the family's)")
    parser.add_argument("--retrain", action="store_true", help="train again even if a finished run exists")
    parser.add_argument("--eval", action="store_true", help="the bound in bits/dim and sample metrics")
    parser.add_argument("--eval-samples", type=int, default=None, help="generated images for --eval")
    parser.add_argument("--sweep-steps", type=int, nargs="*", default=[10, 20, 50, 100, 1000],
                        help="DDIM step counts to compare (none: skip the sweep)")
    parser.add_argument("--sweep-samples", type=int, default=1000, help="samples per sweep entry")
    parser.add_argument("--scales", type=float, nargs="*", default=[0.0, 1.0, 2.0, 3.0, 5.0],
                        help="guidance scales to compare (conditional families)")
    parser.add_argument("--guidance-steps", type=int, default=None,
                        help="DDIM steps in the guidance sweep (default: the run's sample_steps)")
    parser.add_argument("--no-strips", action="store_true", help="skip the forward/reverse pictures")
    args = parser.parse_args(argv)
    if args.quick:  # tiny nets, timed sweeps without the classifier's metrics
        args.sweep_steps, args.sweep_samples, args.scales = [2, 5], 20, [0.0, 2.0]

    for family in args.families:
        run = os.path.join(args.out, family)
        overrides = dict(QUICK) if args.quick else {}
        if args.steps:
            overrides["steps"] = args.steps
        if args.retrain and os.path.isdir(run):
            shutil.rmtree(run)
        start = time.perf_counter()
        if _finished(run, args.steps):
            print(f"{family}: reusing the finished run in {run}")
        elif os.path.exists(os.path.join(run, "checkpoint.npz")):
            train(None, {"steps": args.steps} if args.steps else None, resume=run, progress=not args.quick)
        else:
            train(family, overrides, out_dir=run, progress=not args.quick)
        print(f"{family}: trained in {(time.perf_counter() - start) / 60:.1f} min -> {run}", flush=True)

        recipe, config, train_set, test_set, step = restore_run(run)
        with no_grad():
            if not args.no_strips:
                forward_strip(recipe, test_set.images[:6], os.path.join(run, "forward.png"))
                reverse_strip(recipe, os.path.join(run, "reverse.png"),
                              labels=np.arange(6) if recipe.conditional else None)
            if args.sweep_steps:
                print(f"{family}: DDIM step sweep ({args.sweep_samples} samples each)")
                ddim_sweep(recipe, train_set, test_set, args.sweep_steps, args.sweep_samples,
                           os.path.join(run, "ddim_sweep.json"), score=not args.quick)
            if recipe.conditional and args.scales:
                print(f"{family}: guidance sweep ({args.sweep_samples} samples each)")
                guidance_sweep(recipe, train_set, test_set, args.scales, args.sweep_samples,
                               os.path.join(run, "guidance.json"), steps=args.guidance_steps, score=not args.quick)
        if args.eval:
            start = time.perf_counter()
            evaluate_run(run, eval_samples=args.eval_samples)
            print(f"{family}: evaluated in {(time.perf_counter() - start) / 60:.1f} min")
        pictures = [n for n in ("samples.png", "curves.png", "forward.png", "reverse.png")
                    if os.path.exists(os.path.join(run, n))]          # --no-strips draws no strips
        print(f"{family}: pictures in {run}: {', '.join(pictures)}", flush=True)


if __name__ == "__main__":
    main()

"""StyleGAN on MNIST: samples, the style-mixing grid, the truncation sweep and the noise picture (notes §3.3).

Trains the family ``stylegan`` with its CPU defaults through ``minigen.train.train``
(or takes an existing run with ``--run``), then draws, with the moving average
of G's weights:

    stylegan_samples.png      64 samples (psi = 1)
    stylegan_mixing.png       top row: sources of the coarse styles (layers < crossover,
                              the 4x4 and 8x8 layers by default); left column: sources of
                              the fine styles; each cell mixes its column's coarse and its
                              row's fine styles (Karras et al. 2019, Figure 3)
    stylegan_truncation.png   the same z's with psi = 0, 0.5, 0.7, 1 (one row each)
    stylegan_noise.png        one w with 8 noise draws, and the per-pixel std over 32 draws

With ``--eval`` the run is scored with ``minigen.evaluate.evaluate_run``
(FLD, KID, precision/recall with their floors) for each psi of ``--psis``
(psi = 1 last, so the run's eval.json holds the untruncated scores); the table
goes to fld_vs_psi.json.

    python examples/stylegan_mnist.py --eval                       # default run, then the pictures
    python examples/stylegan_mnist.py --run runs/stylegan --eval   # an existing run
    python examples/stylegan_mnist.py --quick                      # a tiny smoke run

The same from the command line:

    python -m minigen train stylegan --out runs/stylegan
    python -m minigen sample runs/stylegan --truncation 0.7
    python -m minigen eval runs/stylegan
"""
from __future__ import annotations

import argparse
import json
import os

# minigen before NumPy: importing it first limits OpenBLAS's idle spin so the convolutions can use
# both cores (minigen/backend.py, minigen/functional/parallel.py)
import minigen as mg
import numpy as np

from minigen.autograd import no_grad
from minigen.evaluate import evaluate_run, restore_run
from minigen.models import stylegan as sg
from minigen.train import train
from minigen.viz import save_image_grid
from minigen.checkpoint import atomic_write_text

QUICK = dict(steps=4, batch_size=8, z_dim=16, w_dim=16, mapping_layers=2, channels=(8, 8, 8, 8), log_every=2,
             sample_every=0, checkpoint_every=4, n_samples=16, eval_samples=0)
METRICS = ["fld", "kid", "precision", "recall"]


def draw_pictures(recipe, out, crossover=3, seed=7):
    """The four pictures of the docstring, from the EMA generator of a restored recipe."""
    os.makedirs(out, exist_ok=True)
    G, z_dim = recipe.G, recipe.config.z_dim
    gen = mg.Generator(seed, recipe.device)
    with no_grad(), recipe.ema.average_parameters():
        samples = recipe.sample(64, gen, psi=1.0)
        save_image_grid(samples, os.path.join(out, "stylegan_samples.png"), nrow=8,
                        title="StyleGAN samples (EMA generator, psi = 1)")

        z_coarse, z_fine = mg.Tensor(gen.normal((6, z_dim))), mg.Tensor(gen.normal((4, z_dim)))
        grid = recipe.crop(sg.style_mixing_grid(G, z_coarse, z_fine, crossover))
        save_image_grid(grid, os.path.join(out, "stylegan_mixing.png"), nrow=7,
                        title=f"coarse styles (layers < {crossover}) from the top row", xlabel="coarse-style source",
                        ylabel=f"fine styles (layers >= {crossover}) from")

        psis = (0.0, 0.5, 0.7, 1.0)
        sweep = recipe.crop(sg.truncation_sweep(G, mg.Tensor(gen.normal((8, z_dim))), psis))
        save_image_grid(sweep, os.path.join(out, "stylegan_truncation.png"), nrow=8,
                        row_labels=[f"psi={p:g}" for p in psis], ylabel="truncation",
                        title="truncation: w' = w_avg + psi (w - w_avg)", xlabel="z (same per column)")

        w = G.mapping(mg.Tensor(gen.normal((1, z_dim))))
        images, std = sg.noise_variation(G, w, 32, gen)
        tiles = recipe.crop(images[:8])
        std_tile = recipe.crop(std[None] / max(float(std.max()), 1e-12) * 2.0 - 1.0)  # std scaled to [0, 1]
        save_image_grid(np.concatenate([tiles, std_tile]), os.path.join(out, "stylegan_noise.png"), nrow=9,
                        title="same w, 8 noise draws | per-pixel std (32 draws)",
                        xlabel=f"std tile: white = {float(std.max()) / 2:.3f} grey levels")
    return {"noise_std_max": float(std.max()) / 2, "noise_std_mean": float(std.mean()) / 2}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few tiny steps (a smoke run)")
    parser.add_argument("--out", default="runs/stylegan_mnist", help="where the run and the pictures go")
    parser.add_argument("--run", default=None, help="an existing stylegan run directory (skip training)")
    parser.add_argument("--steps", type=int, default=None, help="iterations (default: the family's)")
    parser.add_argument("--crossover", type=int, default=3, help="first layer of the fine styles in the mixing grid")
    parser.add_argument("--eval", action="store_true", help="FLD/KID/precision/recall for each psi of --psis")
    parser.add_argument("--psis", type=float, nargs="+", default=[0.5, 0.7, 1.0], help="truncations to score")
    parser.add_argument("--eval-samples", type=int, default=None, help="generated images per score")
    args = parser.parse_args(argv)

    run = args.run
    if run is None:
        overrides = dict(QUICK) if args.quick else {}
        if args.steps:
            overrides["steps"] = args.steps
        run = train("stylegan", overrides, out_dir=os.path.join(args.out, "stylegan"), progress=not args.quick)
    recipe = restore_run(run)[0]
    noise = draw_pictures(recipe, args.out, args.crossover)
    print(f"pictures in {args.out}: stylegan_samples.png, stylegan_mixing.png, stylegan_truncation.png, "
          f"stylegan_noise.png (noise std: max {noise['noise_std_max']:.4f}, mean {noise['noise_std_mean']:.4f})")

    if args.eval:
        psis = sorted(args.psis, key=lambda p: p == 1.0)                      # psi = 1 last: eval.json keeps it
        rows = []
        for psi in psis:
            scores = evaluate_run(run, eval_samples=args.eval_samples, verbose=False,
                                  overrides={"truncation_psi": psi})
            rows.append({"psi": psi, **{k: scores[k] for k in scores if k.split("_")[0] in METRICS}})
        atomic_write_text(os.path.join(args.out, "fld_vs_psi.json"), json.dumps(rows, indent=2))
        print(f"\n{'psi':>5s}" + "".join(f" {m:>10s}" for m in METRICS))
        for r in rows:
            print(f"{r['psi']:5.2f}" + "".join(f" {r[m]:10.4f}" if m in r else f" {'-':>10s}" for m in METRICS))
        floors = {m: rows[-1].get(f"{m}_floor") for m in METRICS}
        print("floor" + "".join(f" {v:10.4f}" if v is not None else f" {'-':>10s}" for v in floors.values()))


if __name__ == "__main__":
    main()

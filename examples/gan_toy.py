"""GANs on the ring of 8 Gaussians: minimax vs non-saturating generator loss, k = 1 vs 5 (notes §3.1-3.2).

For each generator loss and each number k of discriminator steps per generator
step, an MLP GAN is trained with ``minigen.models.gan.gan_step`` (each of the k
discriminator steps sees a fresh minibatch of the ring and fresh noise).
Afterwards 2,000 samples are scored with ``minigen.data.toy.count_modes``: a
sample is "high quality" when it lies within 3 standard deviations of a mode,
and a mode is captured when at least one high-quality sample lands on it
(Metz et al. 2017, "Unrolled GANs", §3.1).  The table also shows the mean
D(G(z)) the generator saw late in training: near 0 means D confidently rejects
the fakes, where the minimax loss's gradient vanishes (notes §3.2).

    python examples/gan_toy.py               # 4 runs, ~ a few minutes on 2 CPU cores
    python examples/gan_toy.py --quick       # a short smoke run
    python examples/gan_toy.py --seeds 0 1 2 # repeat each setting (GAN outcomes vary by seed)
    python examples/gan_toy.py --out DIR     # where the figure and the table go

Writes DIR/ring_samples.png (one row per run, samples at several steps over
the data) and DIR/ring_results.json, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import time

# The toy networks multiply 256 x 128 matrices: one BLAS thread is faster than two fighting
# over a shared machine (set before NumPy loads; an explicit setting in the environment wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import minigen as mg  # noqa: E402
from minigen import optim  # noqa: E402
from minigen.data import toy  # noqa: E402
from minigen.models.gan import MLPDiscriminator, MLPGenerator, gan_step, generate, sample_noise  # noqa: E402
from minigen.checkpoint import atomic_write_text  # noqa: E402

LATENT_DIM = 16


def train_ring_gan(loss, k, steps, snapshots, seed=0, batch_size=256, lr=1e-3):
    """Train one toy GAN.

    Returns ({step: samples (1000, 2)} at the snapshot steps, 2,000 final samples,
    the mean D(G(z)) over the last 10% of generator steps, the wall time in seconds).
    """
    gen = mg.Generator(seed, "cpu")           # data, noise: every draw of the run
    init = mg.Generator(seed + 100, "cpu")    # weights: the same start for every (loss, k)
    G = MLPGenerator(LATENT_DIM, (2,), hidden=(128, 128), output="linear", generator=init)
    D = MLPDiscriminator((2,), hidden=(128, 128), generator=init)
    opt_g = optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
    noise = lambda n: sample_noise(n, LATENT_DIM, gen)  # noqa: E731

    def real_batches():  # k fresh minibatches of p_data
        for _ in range(k):
            yield mg.tensor(toy.ring(batch_size, gen)), None

    shots, d_fake, start = {}, [], time.perf_counter()
    for step in range(1, steps + 1):
        logs = gan_step(G, D, opt_g, opt_d, real_batches(), noise, loss)
        d_fake.append(logs["d_fake_g"])
        if step in snapshots:
            shots[step] = generate(G, 1000, LATENT_DIM, mg.Generator(seed + 7, "cpu")).numpy()
    final = generate(G, 2000, LATENT_DIM, mg.Generator(seed + 8, "cpu")).numpy()
    late_d_fake = float(np.mean(d_fake[-max(1, steps // 10):]))  # D(G(z)) the generator saw, last 10% of steps
    return shots, final, late_d_fake, time.perf_counter() - start


def plot_rows(rows, data, path):
    """One row per run, one column per snapshot: samples (orange) over the data (grey) and the modes."""
    centers = toy.ring_centers()
    ncol = max(len(shots) for _, shots in rows)
    fig = Figure(figsize=(2.4 * ncol, 2.4 * len(rows)))
    FigureCanvasAgg(fig)
    for r, (name, shots) in enumerate(rows):
        for c, (step, pts) in enumerate(sorted(shots.items())):
            ax = fig.add_subplot(len(rows), ncol, r * ncol + c + 1)
            ax.scatter(data[:, 0], data[:, 1], s=2, c="0.7")
            ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:orange", alpha=0.6)
            ax.scatter(centers[:, 0], centers[:, 1], marker="x", c="k", s=15)
            ax.set_xlim(-3, 3)
            ax.set_ylim(-3, 3)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"step {step}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("GAN samples on the 8-Gaussian ring over training")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke run)")
    parser.add_argument("--out", default="runs/gan_toy", help="output directory")
    parser.add_argument("--steps", type=int, default=None, help="generator steps per run (default 3000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and setting")
    args = parser.parse_args(argv)
    steps = args.steps or (60 if args.quick else 3000)
    snapshots = sorted({max(1, steps // 10), steps // 4, steps // 2, steps})

    rows, results = [], []
    for seed in args.seeds:
        for loss in ("minimax", "non-saturating"):
            for k in (1, 5):
                shots, final, d_fake, seconds = train_ring_gan(loss, k, steps, snapshots, seed=seed)
                score = toy.count_modes(final)
                results.append({"g_loss": loss, "k": k, "seed": seed, "steps": steps, "modes": score["modes"],
                                "high_quality": score["high_quality"], "per_mode": score["counts"].tolist(),
                                "d_fake": d_fake, "seconds": round(seconds, 1)})
                if seed == args.seeds[0]:
                    rows.append((f"{loss}, k={k}", shots))
                print(f"  seed {seed} {loss:15s} k={k}: {score['modes']}/8 modes, "
                      f"{score['high_quality']:.1%} high quality ({seconds:.0f} s)", flush=True)

    data = toy.ring(2000, mg.Generator(9, "cpu"))
    plot_rows(rows, data, os.path.join(args.out, "ring_samples.png"))
    atomic_write_text(os.path.join(args.out, "ring_results.json"), json.dumps(results, indent=2))

    print(f"\n8-Gaussian ring, {steps} generator steps, batch 256, Adam lr 1e-3 (figure: seed {args.seeds[0]})")
    print(f"{'generator loss':16s} {'k':>2s} {'seed':>4s} {'modes (of 8)':>13s} {'high-quality':>13s} "
          f"{'D(G(z)) late':>13s}")
    for r in results:
        print(f"{r['g_loss']:16s} {r['k']:2d} {r['seed']:4d} {r['modes']:13d} {r['high_quality']:13.1%} "
              f"{r['d_fake']:13.3f}")
    print(f"figure: {os.path.join(args.out, 'ring_samples.png')}")


if __name__ == "__main__":
    main()

"""The VAE's prior hole, measured (notes §5.7), and what latent diffusion costs against pixels (§5.6).

One trained VAE (``conv-vae``, 16-d code), one decoder, four ways to choose the codes it decodes:

    prior      z ~ N(0, I): what a VAE does when it generates;
    posterior  z ~ q(z | x) for held-out test digits: draws of the aggregated posterior
               q(z) = E_x q(z | x) itself, the codes the decoder was trained on (the best this
               decoder can do with codes from anywhere);
    gmm        z from a 10-component full-covariance ``GaussianMixture`` fitted by EM to codes of the
               training digits (an ex-post density of the codes, Ghosh et al. 2020);
    ldm        z from the latent diffusion model on the frozen encoder's codes (``train ldm
               --first-stage VAE_RUN``: an MLP denoiser), DDIM with the run's steps.

For each: FLD, KID, precision and recall of the decoded samples (``minigen.evaluate.sample_metrics``,
floors = real test vs real train digits), and where its codes lie: their mean prior density log p(z),
their mean density log q_N(z) under the aggregated posterior of the training digits (the codes the
decoder was trained on), and the fraction of them in the hole (log q_N(z) below the 1st percentile of
held-out codes').  The hole's size: the ELBO's KL term split into the mutual information I_N and
KL(q_N(z) || p(z)) (a Monte-Carlo estimate, unbiased), and the moment version of that KL (a lower
bound) (``minigen.models.ldm.prior_hole``).

    python examples/ldm_prior_hole.py --out runs/ldm           # trains runs/ldm/conv-vae, runs/ldm/ldm-vae if absent
    python examples/ldm_prior_hole.py --vae runs/ldm/conv-vae --ldm runs/ldm/ldm-vae --out runs/ldm
    python examples/ldm_prior_hole.py --speed --out runs/ldm   # and the pixel-vs-latent comparison below
    python examples/ldm_prior_hole.py --quick                  # seconds of training: a smoke run

Writes OUT/prior_hole.json, OUT/prior_hole.md (the table) and OUT/prior_hole.png (decoded samples,
one row per sampler).

``--speed``: the pixel ``ddpm`` (UNet on 28 x 28) and the ``ldm`` (its own KL autoencoder, then a UNet
on 4 x 7 x 7 codes), both at batch 64 and each trained for the same budget of ``--budget`` minutes of
process CPU time (``--max-minutes --budget-clock cpu``; the ldm's budget includes its autoencoder
phase).  Reports seconds per training step (CPU and wall, from the runs' logs; the ldm's two phases
apart), and the CPU and wall seconds to draw ``--speed-samples`` images with DDIM-100 and their
sample metrics.  Runs OUT/speed/ddpm and OUT/speed/ldm are reused when present.
Writes OUT/speed.json and OUT/speed.md.
"""
from __future__ import annotations

import argparse
import json
import os
import time

# minigen before NumPy: importing it first limits OpenBLAS's idle spin so the convolutions can use
# both cores (minigen/backend.py, minigen/functional/parallel.py)
from minigen import backend
import numpy as np

from minigen.evaluate import restore_run, sample_metrics
from minigen.models.gmm import GaussianMixture
from minigen.models.ldm import prior_hole
from minigen.train import train
from minigen.viz import save_image_grid
from minigen.checkpoint import atomic_write_text

METRICS = ["fld", "kid", "precision", "recall"]
SAMPLERS = ["prior", "posterior", "gmm", "ldm"]
LABELS = {"prior": "prior N(0, I)", "posterior": "q(z given x), held-out x", "gmm": "GMM on codes",
          "ldm": "latent diffusion"}
QUICK_VAE = dict(steps=3, batch_size=16, hidden=32, log_every=1, sample_every=0, checkpoint_every=3, n_samples=4,
                 eval_samples=0)
QUICK_LDM = dict(steps=3, batch_size=16, T=20, sample_steps=5, mlp_hidden=16, mlp_depth=1, time_dim=16,
                 ae_channels=8, latent_channels=2, base_channels=8, first_stage_steps=2, warmup=2, log_every=1,
                 sample_every=0, checkpoint_every=3, n_samples=4, eval_samples=0)


def _has_checkpoint(run):
    return os.path.exists(os.path.join(run, "checkpoint.npz"))


def _fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------
# the prior hole (§5.7)
# ----------------------------------------------------------------------------

def ensure_runs(args):
    """The VAE run and the ldm run on its codes: given, found under OUT, or trained now."""
    vae_run = args.vae or os.path.join(args.out, "conv-vae")
    ldm_run = args.ldm or os.path.join(args.out, "ldm-vae")
    if not _has_checkpoint(vae_run):
        train("conv-vae", QUICK_VAE if args.quick else {}, out_dir=vae_run, progress=not args.quick)
    if not _has_checkpoint(ldm_run):
        train("ldm", {**(QUICK_LDM if args.quick else {}), "first_stage": vae_run}, out_dir=ldm_run,
              progress=not args.quick)
    return vae_run, ldm_run


def prior_hole_table(args):
    vae_run, ldm_run = ensure_runs(args)
    rec, cfg, train_set, test_set, step = restore_run(ldm_run)
    if not cfg.first_stage or not os.path.samefile(cfg.first_stage, vae_run):
        raise SystemExit(f"{ldm_run} was not trained on the codes of {vae_run} (its first_stage: {cfg.first_stage!r})")
    n, seed = args.samples, args.seed
    s = rec.ldm.scale_factor
    gen = backend.Generator(seed, rec.device)
    # posterior means and log-variances of every training and test digit (binarized once, fixed seeds)
    train_mean, train_logvar = rec.encode_images(train_set.images, backend.Generator(seed + 1, rec.device))
    test_mean, test_logvar = rec.encode_images(test_set.images[:n], backend.Generator(seed + 2, rec.device))
    d = train_mean.shape[1]

    def draw_posterior(mean, logvar):
        return mean + np.exp(0.5 * logvar) * backend.to_numpy(gen.normal(mean.shape, dtype=np.float64))

    seconds, codes = {}, {}
    t0 = time.perf_counter()
    codes["prior"] = backend.to_numpy(gen.normal((n, d), dtype=np.float64))
    seconds["prior"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes["posterior"] = draw_posterior(test_mean, test_logvar)
    seconds["posterior"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gmm = GaussianMixture(args.gmm_components, "full", generator=seed).fit(draw_posterior(train_mean, train_logvar))
    codes["gmm"] = backend.to_numpy(gmm.sample(n, generator=seed + 3)[0])
    seconds["gmm"] = time.perf_counter() - t0           # EM fit included
    t0 = time.perf_counter()
    codes["ldm"] = rec.generate_latents(n, gen).astype(np.float64) / s
    seconds["ldm"] = time.perf_counter() - t0

    images = {name: rec.decode_latents(z * s) for name, z in codes.items()}    # one decoder for all four
    hole = prior_hole(train_mean, train_logvar, test_mean, test_logvar, backend.Generator(seed + 4, "cpu"),
                      n_prior=n, draws={k: codes[k] for k in ("posterior", "gmm", "ldm")})
    rows = []
    for name in SAMPLERS:
        m = sample_metrics(images[name], train_set, test_set, verbose=True)
        rows.append({"sampler": name, **{k: m[k] for k in METRICS}, "floors": {k: m[f"{k}_floor"] for k in METRICS},
                     "log_p": hole[f"log_p_{name}"], "log_q": hole[f"log_q_{name}"],
                     "in_hole": hole[f"in_hole_{name}"], "seconds": seconds[name]})
    result = {"vae_run": vae_run, "ldm_run": ldm_run, "ldm_step": step, "samples": n, "latent_dim": d,
              "scale_factor": s, "hole": hole, "rows": rows, "gmm_components": args.gmm_components}
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "prior_hole.json"), json.dumps(result, indent=2))
    atomic_write_text(os.path.join(args.out, "prior_hole.md"), prior_hole_markdown(result))
    grid = np.concatenate([images[name][:args.grid] for name in SAMPLERS])
    save_image_grid(grid, os.path.join(args.out, "prior_hole.png"), nrow=args.grid,
                    title="one VAE decoder, four code samplers", row_labels=[LABELS[k] for k in SAMPLERS],
                    ylabel="codes from")
    print(prior_hole_markdown(result))
    return result


def prior_hole_markdown(r):
    floors = r["rows"][0]["floors"]
    lines = [f"codes: {r['latent_dim']}-d, {r['samples']} decoded samples per row; floors (real test vs train): "
             f"FLD {floors['fld']:.1f}, KID {floors['kid']:.1f}, precision {floors['precision']:.2f}, "
             f"recall {floors['recall']:.2f}", "",
             "| codes from | FLD | KID | precision | recall | mean log p(z) | mean log q(z) | in the hole | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {LABELS[row['sampler']]} | {row['fld']:.1f} | {row['kid']:.1f} | {row['precision']:.2f} | "
                     f"{row['recall']:.2f} | {row['log_p']:.1f} | {row['log_q']:.1f} | {100 * row['in_hole']:.1f}% | "
                     f"{row['seconds']:.1f} |")
    h = r["hole"]
    lines += ["", f"the hole (training digits, N = {round(np.exp(h['log_n']))}): rate E_n KL(q(z|x_n) || p(z)) = "
              f"{h['rate']:.2f} nats = I_N {h['mutual_info']:.2f} (at most log N = {h['log_n']:.2f}) + "
              f"KL(q_N(z) || p(z)) {h['marginal_kl']:.2f}; the Gaussian with q_N's mean and covariance is only "
              f"{h['moment_kl']:.2f} nats from N(0, I); mean log q_N(z) of the training codes themselves "
              f"{h['log_q_train']:.1f}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# speed (§5.6)
# ----------------------------------------------------------------------------

def _per_step(rows, key):
    """Median seconds per step between consecutive logged rows (``key``: train_seconds or train_cpu_seconds)."""
    rows = [r for r in rows if key in r]
    if len(rows) < 2:
        return None
    steps = np.array([r["step"] for r in rows], dtype=float)
    secs = np.array([r[key] for r in rows], dtype=float)
    return float(np.median(np.diff(secs) / np.diff(steps)))


def speed_of_run(run, family, args):
    """Training and sampling cost of one budget run, and its samples' metrics (cached in RUN/speed.json)."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    rec, cfg, train_set, test_set, step = restore_run(run)
    n = args.speed_samples
    cache = os.path.join(run, "speed.json")
    if os.path.exists(cache):
        with open(cache) as f:
            info = json.load(f)
        if info.get("steps") == step and info.get("samples") == n and info.get("seed") == args.seed:
            return info
    phases = {"diffusion": [r for r in rows if "ae_recon" not in r]}
    if family == "ldm":
        phases["autoencoder"] = [r for r in rows if "ae_recon" in r]
    info = {"steps": step, "train_cpu_seconds": rows[-1]["train_cpu_seconds"],
            "train_seconds": rows[-1]["train_seconds"], "seed": args.seed}
    first = min(step, cfg.first_stage_steps) if family == "ldm" else 0
    info["autoencoder_steps"], info["diffusion_steps"] = first, step - first
    for phase, phase_rows in phases.items():
        info[f"{phase}_cpu_per_step"] = _per_step(phase_rows, "train_cpu_seconds")
        info[f"{phase}_wall_per_step"] = _per_step(phase_rows, "train_seconds")
    gen = backend.Generator(args.seed, rec.device)
    c0, w0 = time.process_time(), time.perf_counter()
    samples = np.concatenate([rec.sample(min(250, n - i), gen) for i in range(0, n, 250)])
    info["sample_cpu_seconds"], info["sample_wall_seconds"] = time.process_time() - c0, time.perf_counter() - w0
    info["sample_steps"], info["samples"] = cfg.sample_steps, n
    metrics = sample_metrics(samples, train_set, test_set, verbose=True)
    info.update({k: metrics[k] for k in METRICS}, floors={k: metrics[f"{k}_floor"] for k in METRICS})
    save_image_grid(samples[:64], os.path.join(args.out, f"speed_{family}_samples.png"),
                    title=f"{family}: {args.budget:g} CPU minutes of training, {step} steps")
    atomic_write_text(cache, json.dumps(info, indent=2))
    return info


def speed_table(args):
    budget = dict(steps=10 ** 6, max_minutes=args.budget, budget_clock="cpu", batch_size=64, sample_every=0,
                  checkpoint_every=250, eval_samples=0)
    if args.quick:
        budget.update(QUICK_LDM, steps=10 ** 6, max_minutes=args.budget, budget_clock="cpu", channel_mults=(1,),
                      time_dim=16)
    result = {"budget_cpu_minutes": args.budget, "families": {}}
    for family in args.speed_families:
        run = os.path.join(args.out, "speed", family)
        if not _has_checkpoint(run):
            overrides = dict(budget)
            if family == "ddpm" and args.quick:
                overrides = {k: v for k, v in overrides.items() if k not in
                             ("ae_channels", "latent_channels", "first_stage_steps", "mlp_hidden", "mlp_depth")}
            train(family, overrides, out_dir=run, progress=not args.quick)
        result["families"][family] = speed_of_run(run, family, args)
    if set(result["families"]) != {"ddpm", "ldm"}:
        return result                      # one side only (its numbers are cached in RUN/speed.json)
    atomic_write_text(os.path.join(args.out, "speed.json"), json.dumps(result, indent=2))
    atomic_write_text(os.path.join(args.out, "speed.md"), speed_markdown(result))
    print(speed_markdown(result))
    return result


def speed_markdown(r):
    p, l = r["families"]["ddpm"], r["families"]["ldm"]

    def row(name, info, phase, sampled=True):
        cells = [name, _fmt(info[f"{phase}_cpu_per_step"], 3), _fmt(info[f"{phase}_wall_per_step"], 3),
                 str(info[f"{phase}_steps"])]
        if sampled:
            cells += [f"{info['sample_cpu_seconds']:.1f}", f"{info['fld']:.1f}", f"{info['kid']:.1f}",
                      f"{info['precision']:.2f}", f"{info['recall']:.2f}"]
        return "| " + " | ".join(cells + [""] * (9 - len(cells))) + " |"

    lines = [f"batch 64; budget {r['budget_cpu_minutes']:g} min of process CPU time each; "
             f"{p['samples']} samples of each with DDIM-{p['sample_steps']}, timed and scored "
             f"(FLD floor at {p['samples']}: {p['floors']['fld']:.1f})", "",
             "| model | CPU s / step | wall s / step | steps in the budget | CPU s for the samples | FLD | KID | "
             "precision | recall |", "|---|---|---|---|---|---|---|---|---|",
             row("`ddpm` (UNet, 1x28x28)", p, "diffusion"),
             row("`ldm` autoencoder phase", l, "autoencoder", sampled=False),
             row("`ldm` diffusion phase (UNet, 4x7x7)", l, "diffusion"), ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/ldm", help="output directory (and where runs are looked for)")
    ap.add_argument("--vae", help="a finished conv-vae/vae run (default OUT/conv-vae, trained if absent)")
    ap.add_argument("--ldm", help="a finished ldm run on the VAE's codes (default OUT/ldm-vae, trained if absent)")
    ap.add_argument("--samples", type=int, default=1000, help="decoded samples per sampler for the metrics")
    ap.add_argument("--gmm-components", type=int, default=10)
    ap.add_argument("--grid", type=int, default=12, help="images per sampler in prior_hole.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed", action="store_true", help="also the pixel ddpm vs ldm comparison")
    ap.add_argument("--no-hole", action="store_true", help="skip the prior-hole table (with --speed)")
    ap.add_argument("--budget", type=float, default=10.0, help="CPU minutes of training for each --speed run")
    ap.add_argument("--speed-samples", type=int, default=300, help="--speed: images drawn (timed) and scored")
    ap.add_argument("--speed-families", nargs="+", default=["ddpm", "ldm"], choices=["ddpm", "ldm"],
                    help="--speed: measure only these (each run's numbers are cached for the next call)")
    ap.add_argument("--quick", action="store_true", help="tiny runs and few samples: a smoke test")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.grid, args.speed_samples = min(args.samples, 50), min(args.grid, 4), 20
        args.budget = min(args.budget, 0.05)
    if not args.no_hole:
        prior_hole_table(args)
    if args.speed:
        speed_table(args)


if __name__ == "__main__":
    main()

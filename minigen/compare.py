"""One table for many runs: ``python -m minigen compare RUN_DIR...`` and ``python -m minigen zoo``.

``compare`` reads what each run directory already holds (``config.json``,
``metrics.jsonl``, ``eval.json``) and prints one Markdown table: family,
parameters, steps, training seconds (and per step), device, the test likelihood
in the unit the family has (nats for the VAEs, bits/dim for diffusion; blank
where the family has none), FLD with its floor, KID, precision/recall,
conditional accuracy, and the number of samples behind the sample metrics.

Rules that keep the table honest:
* a number is never made up: a missing metric is a blank, a missing or damaged
  ``eval.json`` is a note in the row;
* rows whose sample metrics rest on different sample counts or floors are marked
  (``*``) and the note under the table says why;
* runs of one family that differ only in their seed are one row, mean ± std
  over the seeds with their count.

``--out DIR`` also writes ``compare.md``, ``compare.csv``, ``mosaic.png`` (a
sample grid per run, same number of images from the same seed) and
``quality_vs_cost.png`` (FLD against training seconds, log axes, one point per
run).  ``zoo`` trains every family of a list at one time budget on the same
data, evaluates each with the same sample count, and writes the compare outputs.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os

import numpy as np

__all__ = ["read_run", "compare_runs", "markdown_table", "write_outputs", "zoo"]

# (column, eval.json key) of the sample metrics; the likelihood column is chosen per family
SAMPLE_COLUMNS = [("FLD", "fld"), ("KID", "kid"), ("precision", "precision"), ("recall", "recall"),
                  ("cond. acc.", "conditional_accuracy")]
# the likelihood each family reports, its eval.json key and its unit
LIKELIHOODS = [("test_nll", "nats"), ("test_bpd", "bits/dim"), ("test_bound_bpd", "bits/dim")]


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def read_run(run_dir):
    """What ``compare`` knows of one run: a dict of plain values (with a "note" when something is missing)."""
    row = {"run": run_dir, "note": ""}
    try:
        saved = _read_json(os.path.join(run_dir, "config.json"))
        row["family"] = str(saved["family"])
        config = saved.get("config", {})
    except (OSError, ValueError, KeyError, TypeError):
        return {**row, "family": "?", "note": "no readable config.json"}
    row["seed"] = config.get("seed")
    row["config"] = {k: v for k, v in config.items() if k != "seed"}
    steps = seconds = cpu_seconds = None
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if isinstance(r, dict) and "train_seconds" in r and "eval" not in r:
                    steps, seconds = r.get("step"), r.get("train_seconds")
                    cpu_seconds = r.get("train_cpu_seconds")
    except OSError:
        pass
    try:
        results = _read_json(os.path.join(run_dir, "eval.json"))
        if not isinstance(results, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        results = {}
        row["note"] = "no eval.json" if isinstance(exc, FileNotFoundError) else "damaged eval.json"
    row["steps"] = results.get("step", steps)
    row["seconds"] = results.get("train_seconds", seconds)
    row["cpu_seconds"] = results.get("train_cpu_seconds", cpu_seconds)   # fair on a shared machine
    row["parameters"] = results.get("parameters")
    row["device"] = (results.get("machine") or {}).get("device") or config.get("device")
    for key, unit in LIKELIHOODS:
        if results.get(key) is not None:
            row["likelihood"], row["unit"] = results[key], unit
            break
    for _, key in SAMPLE_COLUMNS:
        row[key] = results.get(key)
    row["fld_floor"], row["n_samples"] = results.get("fld_floor"), results.get("n_samples")
    return row


def _mean_std(values):
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values))


def compare_runs(run_dirs):
    """Rows of the table: runs of one family with one config but different seeds are merged
    (each numeric column becomes (mean, std, count))."""
    groups = {}
    for run in run_dirs:
        row = read_run(run)
        key = (row["family"], json.dumps(row.get("config", {}), sort_keys=True), row["note"])
        groups.setdefault(key, []).append(row)
    rows = []
    for members in groups.values():
        if len(members) == 1:
            rows.append(members[0])
            continue
        merged = dict(members[0])
        merged["run"] = ", ".join(m["run"] for m in members)
        merged["seeds"] = len(members)
        for key in ["seconds", "cpu_seconds", "likelihood", "fld", "kid", "precision", "recall", "conditional_accuracy"]:
            merged[key] = _mean_std(m.get(key) for m in members)
        rows.append(merged)
    return rows


def _fmt(value, digits=2):
    if value is None:
        return ""
    if isinstance(value, tuple):
        mean, std, count = value
        return f"{mean:.{digits}f} ± {std:.{digits}f} (n={count})"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def markdown_table(rows):
    """The comparison as Markdown text: the table, then the notes on marked rows."""
    counts = {(r.get("n_samples"), r.get("fld_floor")) for r in rows if r.get("fld") is not None}
    common = max(counts, key=lambda c: sum((r.get("n_samples"), r.get("fld_floor")) == c for r in rows)) \
        if counts else None
    header = ["family", "parameters", "steps", "train s", "CPU s", "s/step", "device", "test likelihood",
              "FLD (floor)", "KID", "precision / recall", "cond. acc.", "samples", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    marked = False
    for r in rows:
        seconds, steps = _first(r.get("seconds")), r.get("steps")
        per_step = seconds / steps if seconds and steps else None
        likelihood = f"{_fmt(r.get('likelihood'), 3)} {r.get('unit', '')}".strip() if r.get("likelihood") else ""
        fld = _fmt(r.get("fld"), 1)
        if fld and r.get("fld_floor") is not None:
            fld += f" ({r['fld_floor']:.1f})"
        mark = ""
        if r.get("fld") is not None and (r.get("n_samples"), r.get("fld_floor")) != common:
            mark, marked = " *", True
        pr = (f"{_fmt(r.get('precision'))} / {_fmt(r.get('recall'))}" if r.get("precision") is not None else "")
        family = r["family"] + (f" ({r['seeds']} seeds)" if r.get("seeds") else "")
        cells = [family, _fmt(r.get("parameters")), _fmt(steps), _fmt(r.get("seconds"), 0),
                 _fmt(r.get("cpu_seconds"), 0), _fmt(per_step, 3), _fmt(r.get("device")), likelihood, fld + mark, _fmt(r.get("kid"), 1), pr,
                 _fmt(r.get("conditional_accuracy"), 3), _fmt(r.get("n_samples")), r.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    if marked:
        lines.append("")
        lines.append(f"\\* sample metrics on another sample count or floor than the other rows "
                     f"({common[0]} samples, FLD floor {common[1]:.1f}); FLD grows as the count shrinks, so "
                     "compare these rows with care.")
    return "\n".join(lines)


def write_outputs(rows, out_dir, grid_images=16, seed=0):
    """compare.md, compare.csv, mosaic.png and quality_vs_cost.png in ``out_dir``."""
    import csv
    import io

    from .checkpoint import atomic_write_bytes, atomic_write_text
    from .evaluate import load_run
    from .viz import make_grid, plot_mosaic, plot_quality_vs_cost

    os.makedirs(out_dir, exist_ok=True)
    table = markdown_table(rows)
    atomic_write_text(os.path.join(out_dir, "compare.md"), table + "\n")
    buffer = io.StringIO()
    keys = ["family", "run", "parameters", "steps", "seconds", "cpu_seconds", "device", "likelihood", "unit", "fld", "fld_floor",
            "kid", "precision", "recall", "conditional_accuracy", "n_samples", "note"]
    writer = csv.writer(buffer)
    writer.writerow(keys)
    for r in rows:
        writer.writerow([_first(r.get(k)) if r.get(k) is not None else "" for k in keys])
    atomic_write_bytes(os.path.join(out_dir, "compare.csv"), lambda f: f.write(buffer.getvalue().encode()))

    # mosaic: one grid per run (the first run of a merged row), the same count and seed for every run
    panels = []
    for r in rows:
        first = r["run"].split(", ")[0]
        try:
            run = load_run(first)
            labels = np.arange(grid_images) % 10 if run.recipe.conditional else None
            panels.append((r["family"], make_grid(run.sample(grid_images, labels=labels, seed=seed),
                                                  nrow=int(math.ceil(math.sqrt(grid_images))))))
        except Exception as exc:        # noqa: BLE001  (a run that cannot sample gets a note, not a crash)
            panels.append((f"{r['family']}: {type(exc).__name__}", None))
    plot_mosaic(panels, os.path.join(out_dir, "mosaic.png"), title=f"{grid_images} samples per run, seed {seed}")
    # CPU seconds when every run has them (the fair clock on a shared machine), else wall-clock seconds
    clock = "cpu_seconds" if all(_first(r.get("cpu_seconds")) for r in rows) else "seconds"
    points = [(r["family"], _first(r.get(clock)), _first(r.get("fld"))) for r in rows]
    plot_quality_vs_cost([p for p in points if p[1] and p[2]], os.path.join(out_dir, "quality_vs_cost.png"),
                         xlabel="training CPU seconds" if clock == "cpu_seconds" else "training seconds (wall clock)")
    return table


def zoo(families, minutes, out_dir, seeds=(0,), eval_samples=1000, budget_clock="wall", extra=None,
        progress=True):
    """Train each family for ``minutes`` of training time on the default data, evaluate each with
    ``eval_samples`` samples, and write the compare outputs; returns the Markdown table."""
    from .evaluate import evaluate_run
    from .families import get_family
    from .train import train

    runs = []
    for family in families:
        recipe_cls = get_family(family)
        for seed in seeds:
            run_dir = os.path.join(out_dir, f"{recipe_cls.name}-seed{seed}")
            overrides = {"max_minutes": float(minutes), "budget_clock": budget_clock, "seed": int(seed),
                         "steps": 10 ** 7, "eval_samples": int(eval_samples), "sample_every": 0,
                         **(extra or {}).get(recipe_cls.name, {})}
            fields = {f.name for f in dataclasses.fields(recipe_cls.Config)}
            overrides = {k: v for k, v in overrides.items() if k in fields}
            if os.path.exists(os.path.join(run_dir, "eval.json")):
                runs.append(run_dir)        # already trained and evaluated: a zoo can be resumed
                continue
            train(recipe_cls, overrides, out_dir=run_dir, progress=progress, verbose=progress, overwrite=True)
            evaluate_run(run_dir, verbose=progress)
            runs.append(run_dir)
    return write_outputs(compare_runs(runs), out_dir)


def expand(patterns):
    """Run directories from command-line words (globs welcome), in order, without duplicates."""
    out = []
    for pattern in patterns:
        if glob.has_magic(pattern):      # a glob names run directories; files beside them are not runs
            matches = sorted(m for m in glob.glob(pattern) if os.path.isdir(m)) or [pattern]
        else:
            matches = [pattern]
        for m in matches:
            if m not in out:
                out.append(m)
    return out

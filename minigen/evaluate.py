"""Evaluating and sampling a finished (or interrupted) run directory.

``evaluate_run(run_dir)`` rebuilds the family from ``config.json``, loads
``checkpoint.npz`` and reports

* the family's own test metrics (``Recipe.evaluate``: an ELBO, a bound in
  bits/dim, a reconstruction error ...), and
* sample-quality metrics of ``eval_samples`` generated images in the feature
  space of the dataset's reference classifier (``minigen.metrics.classifier``):
  FLD, KID, precision/recall, the classifier score with its label histogram,
  the nearest-neighbour distance to the training set, and for conditional
  families the classifier accuracy on class-conditional samples.

Every sample metric is printed beside its *floor*: the same metric between
real test images and real training images.  A generator cannot be expected to
beat the floor, and a number far above it is a real gap; this keeps a
small-sample FLD from looking better or worse than it is.

Results go to ``eval.json`` and as an ``"eval"`` row into ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import backend
from .autograd import no_grad
from .checkpoint import CheckpointError, load_tree

__all__ = ["evaluate_run", "sample_run", "sample_metrics", "restore_run"]


def restore_run(run_dir, verbose=False, overrides=None):
    """(recipe with the checkpoint loaded, config, train set, test set, step) of a run directory.

    ``overrides`` (field -> value) change the saved config for this session only,
    e.g. ``{"eval_images": 1000, "sample_steps": 50}``; a field that changes the
    network's shape makes the checkpoint unloadable and is refused.
    """
    import dataclasses

    from .train import TrainingError, build, load_run, make_config

    recipe_cls, config = load_run(run_dir)
    if overrides:
        config = make_config(recipe_cls, {**dataclasses.asdict(config), **overrides})
    recipe, train_set, test_set, _mg, _dg, _loader = build(recipe_cls, config, verbose=verbose)
    path = os.path.join(run_dir, "checkpoint.npz")
    try:
        state = load_tree(path)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    try:
        recipe.load_state_dict(state["recipe"])
    except (KeyError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"{path} does not fit this config (an override changed the network?): {first}") from None
    recipe.train(False)
    return recipe, config, train_set, test_set, int(state["step"])


def _generate(recipe, n, seed, batch=250):
    """n samples (host array in [0, 1]) and, for conditional families, their labels."""
    gen = backend.Generator(seed, recipe.device)
    images, labels = [], []
    with no_grad():
        for start in range(0, n, batch):
            m = min(batch, n - start)
            lab = (np.arange(start, start + m) % 10) if recipe.conditional else None
            images.append(recipe.sample(m, gen, labels=lab))
            if lab is not None:
                labels.append(lab)
    return np.concatenate(images), (np.concatenate(labels) if labels else None)


def sample_metrics(samples, train_set, test_set, labels=None, verbose=False, data_dir=None):
    """Sample-quality metrics of generated images against the dataset, with floors."""
    from .metrics.classifier import get_classifier
    from .metrics.sample_quality import (classifier_score, conditional_accuracy, frechet_distance,
                                         kernel_distance, nearest_neighbour_distance, precision_recall)

    clf = get_classifier(train_set.name, data_dir=data_dir, verbose=verbose)
    n = len(samples)
    rng = np.random.default_rng(0)
    real_test = test_set.images[rng.permutation(len(test_set))[:n]]
    real_train = train_set.images[rng.permutation(len(train_set))[:max(n, 1000)]]
    f_fake, p_fake = clf.features_and_probs(samples)
    f_test, _ = clf.features_and_probs(real_test)
    f_train, _ = clf.features_and_probs(real_train)
    ref_train = f_train[:len(f_test)]
    out = {}
    out["fld"] = frechet_distance(f_fake, f_test)
    out["fld_floor"] = frechet_distance(ref_train, f_test)
    out["kid"] = kernel_distance(f_fake, f_test)[0]
    out["kid_floor"] = kernel_distance(ref_train, f_test)[0]
    p, r = precision_recall(f_test, f_fake)
    pf, rf = precision_recall(f_test, ref_train)
    out.update(precision=p, recall=r, precision_floor=pf, recall_floor=rf)
    score, hist = classifier_score(p_fake)
    out["classifier_score"] = score
    out["label_histogram"] = hist.tolist()
    out["nn_distance"] = float(nearest_neighbour_distance(f_fake, f_train).mean())
    out["nn_distance_floor"] = float(nearest_neighbour_distance(f_test, f_train).mean())
    if labels is not None:
        out["conditional_accuracy"] = conditional_accuracy(p_fake, labels)
    out["n_samples"] = n
    out["classifier_test_accuracy"] = clf.test_accuracy
    return out


def evaluate_run(run_dir, eval_samples=None, verbose=True, overrides=None):
    """Evaluate a run; returns the dict also written to RUN_DIR/eval.json.

    ``overrides``: config fields changed for this evaluation only (see ``restore_run``).
    """
    recipe, config, train_set, test_set, step = restore_run(run_dir, overrides=overrides)
    gen = backend.Generator(config.seed + 3, recipe.device)
    with no_grad():
        results = {k: float(v) for k, v in recipe.evaluate(test_set.images, test_set.labels, gen).items()}
    n = config.eval_samples if eval_samples is None else eval_samples
    if n:
        samples, labels = _generate(recipe, n, config.seed + 4)
        results.update(sample_metrics(samples, train_set, test_set, labels, verbose=verbose,
                                      data_dir=config.data_dir or None))
    results = {"step": step, **results}
    from .checkpoint import atomic_write_bytes
    atomic_write_bytes(os.path.join(run_dir, "eval.json"),
                       lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": step, "eval": results}) + "\n")
    if verbose:
        print(format_results(results))
    return results


def format_results(results):
    """A small aligned table: metric, value and, where there is one, its floor."""
    lines = [f"{'metric':24s} {'value':>12s} {'floor (real test vs train)':>28s}"]
    for key, value in results.items():
        if key.endswith("_floor") or isinstance(value, list):
            continue
        floor = results.get(f"{key}_floor")
        val = f"{value:12.4f}" if isinstance(value, float) else f"{value!s:>12s}"
        lines.append(f"{key:24s} {val} {'' if floor is None else f'{floor:28.4f}'}")
    if "label_histogram" in results:
        lines.append(f"{'label_histogram':24s} {results['label_histogram']}")
    return "\n".join(lines)


def sample_run(run_dir, n=64, out=None, seed=0):
    """Write a grid of ``n`` samples from a run; returns the PNG path."""
    from .viz import save_image_grid

    recipe, _config, _train, _test, step = restore_run(run_dir)
    images, labels = _generate(recipe, n, seed)
    out = out or os.path.join(run_dir, "samples_cli.png")
    nrow = int(np.ceil(np.sqrt(n)))
    if labels is not None:
        order = np.argsort(labels, kind="stable")
        images, nrow = images[order], max(1, n // 10)
    save_image_grid(images, out, nrow=nrow, title=f"{recipe.name} samples (step {step})")
    return out

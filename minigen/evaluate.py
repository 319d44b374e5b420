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

import os

import numpy as np

from . import backend
from .autograd import no_grad
from .checkpoint import CheckpointError, load_tree

__all__ = ["evaluate_run", "sample_run", "sample_metrics", "restore_run", "load_trained", "load_run", "LoadedRun",
           "previous_evaluation", "format_results"]


def _run_device(config, device, verbose):
    """The device to load a run onto: ``device`` if given, else the run's own, else the CPU
    (a run trained on a GPU opens on a machine without one, with a one-line note)."""
    if device is not None:
        return backend.check_device(device)
    if config.device == "gpu" and not backend.gpu_available():
        if verbose:
            print("note: this run was trained on a GPU; none is available here, so it is loaded on the CPU")
        return "cpu"
    return config.device


def restore_run(run_dir, verbose=False, overrides=None, device=None, data=True):
    """(recipe with the checkpoint loaded, config, train set, test set, step) of a run directory.

    ``overrides`` (field -> value) change the saved config for this session only,
    e.g. ``{"eval_images": 1000, "sample_steps": 50}``; a field that changes the
    network's shape makes the checkpoint unloadable and is refused.  ``device``:
    where to load the weights ("cpu", "gpu"; default: the run's device when it is
    available here, else the CPU).  ``data=False``: do not load the dataset when the
    family can sample without it (the two sets are then None); the image shape and
    the classes come from config.json.
    """
    import dataclasses

    from .train import TrainingError, build, first_non_finite, make_config, read_run_config, recipe_without_data

    recipe_cls, config = read_run_config(run_dir)
    overrides = dict(overrides or {})
    chosen = _run_device(config, overrides.pop("device", device), verbose)
    if overrides or chosen != config.device:
        config = make_config(recipe_cls, {**dataclasses.asdict(config), **overrides, "device": chosen})
    recipe = None if data else recipe_without_data(recipe_cls, config, run_dir)
    if recipe is None:
        recipe, train_set, test_set, _mg, _dg, _loader = build(recipe_cls, config, verbose=verbose)
    else:
        train_set = test_set = None
    path = os.path.join(run_dir, "checkpoint.npz")
    try:
        state = load_tree(path)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    try:
        recipe.load_state_dict(state["recipe"])
        recipe.step = int(state["step"])
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        blame = " (an override changed the network?)" if overrides else ""
        raise TrainingError(f"{path} is damaged or does not fit the run's config{blame}: {reason}") from None
    bad = first_non_finite({"modules": state["recipe"].get("modules"), "emas": state["recipe"].get("emas")})
    if bad:
        raise TrainingError(f"{path}: the weights hold NaN or inf ({bad}); this checkpoint cannot sample or "
                            "be evaluated")
    recipe.train(False)
    return recipe, config, train_set, test_set, int(state["step"])


def _generate(recipe, n, seed, batch=250, labels=None, progress=False):
    """n samples (host array in [0, 1]) and, for conditional families, their labels
    (``labels`` if given, else 0, 1, ..., 9, 0, 1, ...)."""
    from tqdm import tqdm

    gen = backend.Generator(seed, recipe.device)
    if recipe.conditional and labels is None:
        labels = np.arange(n) % recipe_num_classes(recipe)
    images = []
    with no_grad():
        for start in tqdm(range(0, n, batch), disable=not progress, desc="sampling", unit="batch", leave=False):
            m = min(batch, n - start)
            lab = None if labels is None else np.asarray(labels[start:start + m])
            images.append(recipe.sample(m, gen, labels=lab))
    return np.concatenate(images), (None if labels is None else np.asarray(labels))


def recipe_num_classes(recipe):
    """The number of classes a conditional recipe samples (10 for the digit datasets)."""
    return int(getattr(recipe, "num_classes", None) or 10)


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
    recipe.progress = verbose     # long bounds (diffusion: T denoiser calls per batch) show a bar
    with no_grad():
        results = {k: float(v) for k, v in recipe.evaluate(test_set.images, test_set.labels, gen).items()}
    n = config.eval_samples if eval_samples is None else eval_samples
    if n:
        samples, labels = _generate(recipe, n, config.seed + 4, progress=verbose)
        results.update(sample_metrics(samples, train_set, test_set, labels, verbose=verbose,
                                      data_dir=config.data_dir or None))
    from .checkpoint import atomic_write_text, to_json
    from .train import append_metrics, machine_info

    seconds = load_tree(os.path.join(run_dir, "checkpoint.npz")).get("train_seconds")
    results = {"step": step, **results,
               "parameters": int(sum(p.size for m in recipe.modules.values() for p in m.parameters())),
               "train_seconds": None if seconds is None else round(float(seconds[0]), 3),
               "train_cpu_seconds": None if seconds is None else round(float(seconds[1]), 3),
               "machine": machine_info(recipe.device)}
    atomic_write_text(os.path.join(run_dir, "eval.json"), to_json(results, indent=2) + "\n")
    append_metrics(os.path.join(run_dir, "metrics.jsonl"), [{"step": step, "eval": results}])
    if verbose:
        print(format_results(results))
    return results


def previous_evaluation(run_dir):
    """eval.json of a run when it evaluated the checkpoint that is there now (same step), else None."""
    import json

    try:
        with open(os.path.join(run_dir, "eval.json")) as f:
            results = json.load(f)
        step = int(load_tree(os.path.join(run_dir, "checkpoint.npz"))["step"])
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return None
    return results if isinstance(results, dict) and results.get("step") == step else None


def format_results(results):
    """A small aligned table: metric, value and, where there is one, its floor."""
    lines = [f"{'metric':24s} {'value':>12s} {'floor (real test vs train)':>28s}"]
    for key, value in results.items():
        if key.endswith("_floor") or isinstance(value, (list, dict)) or value is None:
            continue
        floor = results.get(f"{key}_floor")
        counts = key in ("step", "eval_k", "eval_images", "n_samples") or key.endswith("_steps")
        if isinstance(value, float) and counts and value.is_integer():
            value = int(value)                      # counts print as integers
        val = f"{value:12.4f}" if isinstance(value, float) else f"{value!s:>12s}"
        lines.append(f"{key:24s} {val} {'' if floor is None else f'{floor:28.4f}'}")
    if "label_histogram" in results:
        lines.append(f"{'label_histogram':24s} {results['label_histogram']}")
    return "\n".join(lines)


def sample_run(run_dir, n=64, out=None, seed=0, labels=None, device=None, nrow=None, overrides=None,
               progress=False):
    """Write a grid of ``n`` samples from a run; returns the PNG path.

    Conditional families: ``labels`` (one int, or a list of ``n``) picks the classes;
    by default n // 10 of each class, one row per class with the class written beside
    it.  ``overrides`` change sampling settings for this call (e.g. ``guidance_scale``,
    ``sample_steps``).  No training data is loaded where the family does not need it.
    """
    from .train import TrainingError
    from .viz import save_image_grid

    recipe, _config, _train, _test, step = restore_run(run_dir, overrides=overrides, device=device, data=False)
    k = recipe_num_classes(recipe)
    row_labels = None
    if labels is not None and not recipe.conditional:
        raise TrainingError(f"{recipe.name} is not conditional: it takes no labels")
    if recipe.conditional:
        if labels is None:
            per_class = max(1, n // k)
            labels = np.repeat(np.arange(k), per_class)
            nrow, row_labels = nrow or per_class, [str(c) for c in range(k)]
        else:
            labels = np.atleast_1d(np.asarray(labels))
            if labels.size == 1:
                labels = np.full(n, int(labels[0]))
            if labels.shape != (n,) or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= k:
                raise TrainingError(f"labels must be one class or {n} classes, integers in [0, {k}), got {labels.tolist()}")
        n = len(labels)
    images, _ = _generate(recipe, n, seed, labels=labels, progress=progress)
    out = out or os.path.join(run_dir, "samples_cli.png")
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    save_image_grid(images, out, nrow=nrow, row_labels=row_labels, title=f"{recipe.name} samples (step {step})")
    return out


class LoadedRun:
    """A trained run, ready to use from Python (``minigen.load_run``).

    ``recipe``: the family's recipe with the checkpoint loaded (its networks in
    ``models``, the EMA weights used by ``sample`` where the family keeps them);
    ``config``, ``family``, ``step``, ``run_dir``.  No training data is loaded
    unless a method needs it.
    """

    def __init__(self, run_dir, device=None):
        self.run_dir = run_dir
        self.recipe, self.config, _train, _test, self.step = restore_run(run_dir, device=device, data=False)
        self.family = self.recipe.name
        self.models = dict(self.recipe.modules)

    def __repr__(self):
        return f"LoadedRun({self.run_dir!r}, family={self.family!r}, step={self.step}, device={self.recipe.device!r})"

    def sample(self, n, labels=None, seed=0, generator=None):
        """n images as a host array (n, C, H, W) in [0, 1]; ``labels`` (n,) for conditional families."""
        gen = generator or backend.Generator(seed, self.recipe.device)
        if labels is not None:
            labels = np.asarray(labels)
        with no_grad():
            return self.recipe.sample(int(n), gen, labels=labels)

    def evaluate(self, eval_samples=None, overrides=None):
        """The family's test metrics and the sample metrics (loads the data; writes eval.json)."""
        return evaluate_run(self.run_dir, eval_samples=eval_samples, verbose=False, overrides=overrides)


def load_run(run_dir, device=None):
    """Open a trained run directory for use from Python: ``run = minigen.load_run("runs/vae")``,
    then ``run.sample(16)``, ``run.models``, ``run.config``, ``run.evaluate()``."""
    return LoadedRun(run_dir, device=device)


def load_trained(run_dir, family=None):
    """The trained recipe of a run directory (in eval mode) and the run's test set.

    The config comes from RUN_DIR/config.json and the weights from
    RUN_DIR/checkpoint.npz, exactly as ``python -m minigen eval`` loads a run.
    ``family`` (a name), if given, must be the run's family.  Use the recipe's
    methods on host images, e.g. ``recipe.reconstruct(x)``, ``recipe.encode(x)``
    or ``recipe.sample(n, generator)``.
    """
    from .train import TrainingError

    recipe, _config, _train_set, test_set, _step = restore_run(run_dir)
    if family is not None and recipe.name != family:
        raise TrainingError(f"{run_dir} is a {recipe.name!r} run, not a {family!r} run")
    return recipe, test_set

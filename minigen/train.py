"""The family registry and the training loop shared by every model family.

A model family joins the command line by subclassing ``Recipe`` and calling
``register``.  A recipe says how to build the family from its ``@dataclass``
config, how to take one training step on a batch, how to sample images and how
to evaluate itself; the loop below does everything else, the same way for every
family:

    run directory/
      config.json      family name and every config field (enough to rebuild it)
      metrics.jsonl    one JSON object per logged step (and "eval" rows)
      checkpoint.npz   models, optimizers, EMAs, generator and loader states, step
      samples_XXXXXX.png, samples.png, curves.png, eval.json

Reproducibility and resume.  All randomness of a run comes from two explicit
generators seeded by ``config.seed``: one for the model (noise, dropout, latent
draws) and one for the data loader (shuffling, dynamic binarization).  A
checkpoint stores both generators' states, the loader's position inside its
epoch, the optimizers' moments and the step, so ``--resume`` continues to exactly
the numbers an uninterrupted run would have produced (a test checks the losses
step for step).

Nothing is lost.  Checkpoints are written atomically (``minigen.checkpoint``),
every ``checkpoint_every`` steps, at the end, and when Ctrl-C interrupts the
run.  A non-finite loss stops the run with a message naming the step and the
last good checkpoint, which is left as it was.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from . import backend
from .autograd import Tensor, no_grad
from .checkpoint import CheckpointError, load_tree, save_tree

__all__ = ["RunConfig", "Recipe", "register", "get_family", "families", "train", "load_run",
           "TrainingError", "NonFiniteLossError"]


class TrainingError(RuntimeError):
    """A run cannot start or continue (bad config, unreadable checkpoint ...)."""


class NonFiniteLossError(TrainingError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunConfig:
    """Options every family shares.  Families subclass it and add their own fields."""

    dataset: str = "mnist"          # "mnist" (full IDX files or the packaged 5,000 digits) or "fashion-mnist"
    data_dir: str = ""              # directory with IDX files; empty: $MINIGEN_DATA, then built-in data
    steps: int = 2000               # optimisation steps (one batch each)
    batch_size: int = 64            # examples per step
    lr: float = 1e-3                # learning rate of the family's optimizer(s)
    seed: int = 0                   # seeds the model and data generators
    device: str = "cpu"             # "cpu" or "gpu"
    log_every: int = 10             # steps between rows of metrics.jsonl
    checkpoint_every: int = 500     # steps between checkpoints (also written at the end and on Ctrl-C)
    sample_every: int = 500         # steps between sample grids (0: only at the end)
    n_samples: int = 64             # images in each sample grid
    eval_samples: int = 1000        # generated images for the end-of-run sample metrics (0: skip)

    def validate(self):
        """Raise TrainingError for settings that cannot work."""
        positive = ["steps", "batch_size", "log_every", "checkpoint_every", "n_samples"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise TrainingError(f"config: {name} must be positive, got {getattr(self, name)}")
        for name in ["sample_every", "eval_samples"]:
            if getattr(self, name) < 0:
                raise TrainingError(f"config: {name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"config: lr must be a positive number, got {self.lr}")
        try:
            if backend.check_device(self.device) == "gpu":
                backend.get_array_module("gpu")        # CuPy and a CUDA device, or a one-line reason
        except (ValueError, RuntimeError) as exc:
            raise TrainingError(f"config: {exc}") from None


class Recipe:
    """How one model family trains.  Subclasses set ``name``, ``Config`` and implement the hooks.

    Hooks
    -----
    ``__init__(config, data, device, generator)``: build models/optimizers; put
        them in ``self.modules``, ``self.optimizers``, ``self.emas`` (dicts) so the
        base class can checkpoint them.  ``data`` is the training ``Dataset``.
    ``prepare(x, y, generator)``: turn a host batch (float32 images in [0, 1], int
        labels) into what ``train_step`` needs (binarize, rescale to [-1, 1] ...).
    ``train_step(x, y)``: one optimisation step; returns a dict of floats, one of
        them named ``loss`` (checked for finiteness).
    ``sample(n, generator, labels=None)``: n images as a host array in [0, 1], NCHW.
    ``evaluate(x, y, generator)``: family-specific test metrics (dict of floats).
    """

    name = "recipe"
    Config = RunConfig
    description = ""
    conditional = False  # True when sample() accepts class labels
    # Named sets of config overrides, e.g. {"gpu": {...}} for a larger run on a GPU;
    # ``train FAMILY --preset NAME`` applies one, and explicit options still win.
    presets: dict = {}

    def __init__(self, config, data, device, generator):
        self.config = config
        self.device = device
        self.generator = generator
        self.modules = {}
        self.optimizers = {}
        self.emas = {}

    def prepare(self, x, y, generator):
        return x, y

    def train_step(self, x, y) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must implement train_step")

    def sample(self, n, generator, labels=None) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement sample")

    def evaluate(self, x, y, generator) -> dict:
        return {}

    # state -------------------------------------------------------------------
    def state_dict(self):
        return {"modules": {k: m.state_dict() for k, m in self.modules.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "emas": {k: e.state_dict() for k, e in self.emas.items()}}

    def load_state_dict(self, state):
        for group in ("modules", "optimizers", "emas"):
            mine, theirs = getattr(self, group), state.get(group, {})
            if set(mine) != set(theirs):
                raise TrainingError(f"checkpoint holds {group} {sorted(theirs)} but this family has {sorted(mine)}")
            for key, obj in mine.items():
                obj.load_state_dict(theirs[key])

    def train(self, mode=True):
        for m in self.modules.values():
            m.train(mode)


_REGISTRY = {}


def register(recipe_cls):
    """Add a family to the registry (usable as a class decorator)."""
    if not (isinstance(recipe_cls, type) and issubclass(recipe_cls, Recipe)):
        raise TypeError("register expects a Recipe subclass")
    _REGISTRY[recipe_cls.name] = recipe_cls
    return recipe_cls


def _load_families():
    """Import the model modules so that their ``register`` calls run."""
    from . import models  # noqa: F401  (models/__init__ imports every family module)


def families() -> dict:
    """Registered families, name -> Recipe class."""
    _load_families()
    return dict(sorted(_REGISTRY.items()))


def get_family(name):
    fams = families()
    if name not in fams:
        raise TrainingError(f"unknown family {name!r}; known families: {', '.join(fams) or '(none)'}")
    return fams[name]


# ----------------------------------------------------------------------------
# config files
# ----------------------------------------------------------------------------

def make_config(recipe_cls, overrides=None, preset=None):
    """The family's config with ``preset`` (a name in ``recipe_cls.presets``), then
    ``overrides`` (a dict of field -> value) applied, and checked."""
    if preset is not None:
        if preset not in recipe_cls.presets:
            known = ", ".join(sorted(recipe_cls.presets)) or "none"
            raise TrainingError(f"unknown preset {preset!r} for {recipe_cls.name}; known: {known}")
        overrides = {**recipe_cls.presets[preset], **(overrides or {})}
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(recipe_cls.Config)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TrainingError(f"unknown option(s) for {recipe_cls.name}: {', '.join(unknown)}; "
                            f"known: {', '.join(fields)}")
    config = recipe_cls.Config(**overrides)
    config.validate()
    return config


def _write_json(path, obj):
    from .checkpoint import atomic_write_bytes
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load_run(run_dir):
    """(recipe class, config) of an existing run directory."""
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise TrainingError(f"{run_dir}: not a run directory (no config.json)") from None
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path}: unreadable ({exc})") from None
    recipe_cls = get_family(saved.get("family", "?"))
    return recipe_cls, make_config(recipe_cls, saved.get("config", {}))


# ----------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------

def _log_rows(path, rows):
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _truncate_log(path, last_step):
    """Keep only metrics rows up to ``last_step`` (a resumed run rewrites what followed)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    kept = [r for r in rows if r.get("step", 0) <= last_step]
    from .checkpoint import atomic_write_bytes
    atomic_write_bytes(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))


def build(recipe_cls, config, verbose=True):
    """Load the data and build a recipe: (recipe, train set, test set, generators, loader)."""
    from .data import DataLoader, load_dataset

    device = backend.check_device(config.device)
    try:
        train_set = load_dataset(config.dataset, "train", data_dir=config.data_dir or None)
        test_set = load_dataset(config.dataset, "test", data_dir=config.data_dir or None)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainingError(str(exc)) from None
    if verbose:
        print(f"data: {train_set.source} ({len(train_set)} train / {len(test_set)} test images)")
    model_gen = backend.Generator(config.seed, device)
    data_gen = backend.Generator(config.seed + 1, "cpu")
    recipe = recipe_cls(config, train_set, device, model_gen)
    loader = DataLoader((train_set.images, train_set.labels), batch_size=config.batch_size, shuffle=True,
                        drop_last=True, generator=data_gen, device=device)
    return recipe, train_set, test_set, model_gen, data_gen, loader


def _streams(model_gen, data_gen, loader):
    """The random streams' and the loader's positions (small dicts), as a checkpoint stores them."""
    return {"model_generator": model_gen.get_state(), "data_generator": data_gen.get_state(),
            "loader": loader.state_dict()}


def _checkpoint(path, recipe, step, model_gen, data_gen, loader, streams=None):
    save_tree(path, {"step": step, "recipe": recipe.state_dict(),
                     **(streams or _streams(model_gen, data_gen, loader)), "format": "minigen-checkpoint-1"})


class _GracefulStop:
    """While training, the first Ctrl-C only asks the loop to stop after the current step.

    The step then completes (parameters, optimizer and generators stay consistent),
    a checkpoint is written and KeyboardInterrupt is raised.  A second Ctrl-C
    interrupts at once.  Outside the main thread signals cannot be caught, and a
    KeyboardInterrupt raised inside a step rewinds the random streams to the
    start of that step instead (see ``before`` in ``train``).
    """

    def __init__(self):
        import signal
        import threading

        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        import signal

        if self.requested:  # second Ctrl-C: stop now
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def train(family, overrides=None, out_dir=None, resume=None, progress=True, verbose=True, preset=None):
    """Train a family; returns the run directory.

    ``family``: a registered name; ``overrides``: config fields to change;
    ``preset``: a named set of overrides of the family (``Recipe.presets``),
    applied before ``overrides``;
    ``out_dir``: where the run goes (default runs/<family>-<time>);
    ``resume``: an existing run directory to continue (its config is reused and
    ``overrides`` may only raise ``steps``).
    """
    if resume:
        if preset is not None:
            raise TrainingError("--resume continues a run with its saved config; --preset applies only to new runs")
        recipe_cls, config = load_run(resume)
        if overrides:
            extra = set(overrides) - {"steps"}
            if extra:
                raise TrainingError(f"--resume continues a run with its saved config; only steps may change "
                                    f"(got {', '.join(sorted(extra))})")
            config = make_config(recipe_cls, {**dataclasses.asdict(config), **overrides})
            _write_json(os.path.join(resume, "config.json"),   # the run now aims at the new step count
                        {"family": recipe_cls.name, "config": dataclasses.asdict(config)})
        run_dir = resume
    else:
        recipe_cls = get_family(family)
        config = make_config(recipe_cls, overrides, preset)
        run_dir = out_dir or os.path.join("runs", f"{recipe_cls.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(run_dir, exist_ok=True)
        _write_json(os.path.join(run_dir, "config.json"),
                    {"family": recipe_cls.name, "config": dataclasses.asdict(config)})

    recipe, train_set, test_set, model_gen, data_gen, loader = build(recipe_cls, config, verbose)
    ckpt_path = os.path.join(run_dir, "checkpoint.npz")
    log_path = os.path.join(run_dir, "metrics.jsonl")
    step = 0
    if resume:
        try:
            state = load_tree(ckpt_path)
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from None
        recipe.load_state_dict(state["recipe"])
        model_gen.set_state(state["model_generator"])
        data_gen.set_state(state["data_generator"])
        loader.load_state_dict(state["loader"])
        step = int(state["step"])
        _truncate_log(log_path, step)
        if verbose:
            print(f"resumed {run_dir} at step {step}")

    from tqdm import tqdm

    from .viz import plot_curves, save_image_grid

    last_good = step if resume else None
    before = (None, None)
    stop = _GracefulStop()
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc=recipe_cls.name, dynamic_ncols=True)
    batches = iter(loader)
    pending_rows = []
    recipe.train(True)
    try:
        while step < config.steps:
            before = (step, _streams(model_gen, data_gen, loader))  # where a Ctrl-C inside this step rewinds to
            try:
                xb, yb = next(batches)
            except StopIteration:
                batches = iter(loader)
                xb, yb = next(batches)
            x, y = recipe.prepare(xb, yb, data_gen)
            logs = recipe.train_step(x, y)
            step += 1
            loss = logs.get("loss")
            if loss is None or not math.isfinite(loss):
                where = (f"the last good checkpoint is {ckpt_path} (step {last_good})" if last_good is not None
                         else "no checkpoint was written yet")
                raise NonFiniteLossError(f"step {step}: loss is {loss}; stopping. {where}. "
                                         "Try a lower --lr or check the data.")
            if step % config.log_every == 0 or step == config.steps:
                pending_rows.append({"step": step, **{k: float(v) for k, v in logs.items()}})
                bar.set_postfix(loss=f"{loss:.4g}")
            bar.update(1)
            if step % config.checkpoint_every == 0 or step == config.steps:
                _log_rows(log_path, pending_rows)
                pending_rows = []
                _checkpoint(ckpt_path, recipe, step, model_gen, data_gen, loader)
                last_good = step
            if config.sample_every and step % config.sample_every == 0 and step != config.steps:
                _save_samples(recipe, config, os.path.join(run_dir, f"samples_{step:06d}.png"), step)
            if stop.requested:  # Ctrl-C arrived during the step: it was finished, now stop cleanly
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        _log_rows(log_path, [r for r in pending_rows if r["step"] <= step])
        # interrupted inside a step (before it counted): save the streams as they were before it
        _checkpoint(ckpt_path, recipe, step, model_gen, data_gen, loader,
                    streams=before[1] if before[0] == step else None)
        print(f"\ninterrupted at step {step}; checkpoint saved. Continue with: "
              f"python -m minigen train --resume {run_dir}")
        raise
    except NonFiniteLossError:
        bar.close()
        _log_rows(log_path, [r for r in pending_rows if r["step"] < step])
        raise
    finally:
        stop.restore()
    bar.close()

    recipe.train(False)
    _save_samples(recipe, config, os.path.join(run_dir, "samples.png"), step)
    plot_curves(log_path, os.path.join(run_dir, "curves.png"), title=f"{recipe_cls.name}: training curves")
    return run_dir


def _save_samples(recipe, config, path, step):
    from .viz import save_image_grid

    gen = backend.Generator(config.seed + 2, recipe.device)  # a fixed stream: grids comparable across steps
    labels = None
    if recipe.conditional:
        per_class = max(1, config.n_samples // 10)
        labels = np.repeat(np.arange(10), per_class)
    was_training = [m.training for m in recipe.modules.values()]
    recipe.train(False)
    with no_grad():
        images = recipe.sample(len(labels) if labels is not None else config.n_samples, gen, labels=labels)
    for m, mode in zip(recipe.modules.values(), was_training):
        m.train(mode)
    nrow = per_class if labels is not None else int(math.ceil(math.sqrt(len(images))))
    save_image_grid(images, path, nrow=nrow, title=f"{recipe.name} samples, step {step}")

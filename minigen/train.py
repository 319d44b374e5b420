"""The training loop shared by every model family: open a run, loop over steps, finish.

A family (``minigen/families/``) says how to build its networks, how to take
one step and how to sample; this file does everything else, the same way for
every family:

    run directory/
      config.json      family name and every config field (enough to rebuild it)
      metrics.jsonl    one JSON object per logged step (and "eval" rows)
      checkpoint.npz   models, optimizers, schedules, EMAs, generator and loader states, step
      samples_XXXXXX.png, samples.png, curves.png, eval.json

``train`` is three parts: ``open_run`` (config, run directory, data, the
recipe, and on ``--resume`` the checkpoint), ``run_loop`` (the steps, logs,
checkpoints, Ctrl-C) and ``finish`` (the final sample grid and curves).

Reproducibility and resume.  All randomness of a run comes from two explicit
generators seeded by ``config.seed``: one for the model (noise, dropout, latent
draws) and one for the data loader (shuffling, dynamic binarization).  A
checkpoint stores both generators' states, the loader's position inside its
epoch, the optimizers' moments, the schedules and the step, so ``--resume``
continues to exactly the numbers an uninterrupted run would have produced (a
test checks the losses step for step).

Nothing is lost.  Checkpoints are written atomically (``minigen.checkpoint``),
every ``checkpoint_every`` steps, at the end, and when Ctrl-C or SIGTERM stops
the run.  A non-finite loss stops the run with a message naming the step and
the last good checkpoint, which is left as it was.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from . import backend
from .autograd import Tensor, no_grad
from .checkpoint import (CheckpointError, atomic_write_text, load_tree,
                         remove_stray_temp_files, save_tree, to_json)
from .families import families, get_family
from .families.base import NonFiniteLossError, Recipe, RunConfig, TrainingError, make_config

__all__ = ["train", "open_run", "run_loop", "finish", "read_run_config", "build", "append_metrics", "first_non_finite",
           "make_config", "recipe_without_data", "machine_info", "families",
           "get_family", "Recipe", "RunConfig", "TrainingError", "NonFiniteLossError"]

# options that ``--resume`` may change: how long the run goes on, its cadence, and the learning rate
RESUMABLE_OPTIONS = ("steps", "max_minutes", "budget_clock", "lr", "lr_d", "log_every", "checkpoint_every",
                     "sample_every", "n_samples", "eval_samples")
# the files a run writes into its directory (what --overwrite may delete)
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.npz", "eval.json", "samples.png", "curves.png",
             "samples_cli.png", "samples_over_training.png")


# ----------------------------------------------------------------------------
# config files
# ----------------------------------------------------------------------------

def _write_json(path, obj):
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def _write_config(run_dir, recipe_cls, config, run_id, data=None):
    """config.json: the family, the run's id, every config field, and the data's shape and classes
    (so that sampling a run later needs no dataset)."""
    saved = {"family": recipe_cls.name, "run_id": run_id, "config": dataclasses.asdict(config)}
    if data is not None:
        saved["data"] = {"image_shape": list(data.images.shape[1:]), "classes": list(data.classes),
                         "name": data.name}
    elif os.path.exists(os.path.join(run_dir, "config.json")):
        try:
            with open(os.path.join(run_dir, "config.json")) as f:
                previous = json.load(f).get("data")
            if previous:
                saved["data"] = previous
        except (OSError, ValueError, AttributeError):
            pass
    _write_json(os.path.join(run_dir, "config.json"), saved)


def recipe_without_data(recipe_cls, config, run_dir):
    """The family's recipe built from the data shape recorded in config.json, without loading the
    dataset; None when the family needs its data to sample or the run predates the record."""
    if recipe_cls.samples_need_data:
        return None
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            info = json.load(f).get("data")
        shape, classes, name = tuple(int(n) for n in info["image_shape"]), list(info["classes"]), str(info["name"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    from .data import Dataset

    placeholder = Dataset(np.zeros((0,) + shape, np.float32), np.zeros(0, np.int64), name, "train",
                          "no data loaded (shape from config.json)", classes)
    device = backend.check_device(config.device)
    try:
        return recipe_cls(config, placeholder, device, backend.Generator(config.seed, device))
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


def read_run_config(run_dir):
    """(recipe class, config) of an existing run directory."""
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise TrainingError(f"{run_dir}: not a run directory (no config.json)") from None
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path}: unreadable ({exc})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config", {}), dict):
        raise TrainingError(f"{path}: expected an object with 'family' and 'config'")
    recipe_cls = get_family(saved.get("family", "?"))
    values = dict(recipe_cls.options_added_later, **saved.get("config", {}))  # older runs keep their behaviour
    try:
        config = make_config(recipe_cls, values)
    except TrainingError as exc:
        raise TrainingError(f"{path}: {exc}") from None
    return recipe_cls, config


def run_id_of(run_dir):
    """The id a run's config.json carries ("" for runs written before ids existed)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return str(json.load(f).get("run_id", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def build(recipe_cls, config, verbose=True):
    """Load the data and build a recipe: (recipe, train set, test set, model generator, data generator, loader)."""
    from .data import DataLoader, load_dataset

    device = backend.check_device(config.device)
    try:
        train_set = load_dataset(config.dataset, "train", data_dir=config.data_dir or None)
        test_set = load_dataset(config.dataset, "test", data_dir=config.data_dir or None)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainingError(str(exc)) from None
    if verbose:
        print(f"data: {train_set.source} ({len(train_set)} train / {len(test_set)} test images)")
    if config.batch_size > len(train_set):
        raise TrainingError(f"config: batch_size {config.batch_size} is larger than the training set "
                            f"({len(train_set)} images)")
    model_gen = backend.Generator(config.seed, device)
    data_gen = backend.Generator(config.seed + 1, "cpu")
    try:
        recipe = recipe_cls(config, train_set, device, model_gen)
    except ValueError as exc:           # a model refusing its config (e.g. an image size it cannot take)
        raise TrainingError(str(exc)) from None
    loader = DataLoader((train_set.images, train_set.labels), batch_size=config.batch_size, shuffle=True,
                        drop_last=True, generator=data_gen, device=device)
    return recipe, train_set, test_set, model_gen, data_gen, loader


def machine_info(device="cpu"):
    """Where a run ran, for honest cost figures: CPU model, cores, BLAS threads, device."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    if not model:
        import platform

        model = platform.processor() or platform.machine()
    threads = next((os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                    if os.environ.get(v)), "default")
    return {"cpu": model, "cores": os.cpu_count(), "blas_threads": threads, "device": device}


# ----------------------------------------------------------------------------
# opening a run
# ----------------------------------------------------------------------------

@dataclass
class Run:
    """Everything the loop works on."""

    recipe_cls: type
    config: RunConfig
    run_dir: str
    recipe: Recipe
    train_set: object
    test_set: object
    model_gen: backend.Generator
    data_gen: backend.Generator
    loader: object
    step: int = 0
    resumed: bool = False
    train_seconds: tuple = (0.0, 0.0)   # training time before this sitting: (wall, CPU)
    run_id: str = ""                    # written into config.json and every checkpoint: they must agree

    @property
    def checkpoint_path(self):
        """The run's checkpoint file, RUN_DIR/checkpoint.npz."""
        return os.path.join(self.run_dir, "checkpoint.npz")

    @property
    def log_path(self):
        """The run's metrics log, RUN_DIR/metrics.jsonl (one JSON object per line)."""
        return os.path.join(self.run_dir, "metrics.jsonl")


def _check_directory(run_dir, overwrite):
    """Refuse an ``--out`` that cannot hold a new run (checked before anything is loaded or written)."""
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise TrainingError(f"--out {run_dir}: exists and is not a directory")
    if os.path.isdir(run_dir):
        present = sorted(os.listdir(run_dir))
        if present and not overwrite:
            hint = (f"continue it with --resume {run_dir}, " if "config.json" in present else "")
            raise TrainingError(f"--out {run_dir}: the directory is not empty ({', '.join(present[:4])}"
                                f"{' ...' if len(present) > 4 else ''}); {hint}choose another --out, "
                                "or add --overwrite to replace the run in it")
        remove_stray_temp_files(run_dir)   # leftovers of killed writes never count as content
        foreign = [n for n in os.listdir(run_dir)
                   if not (n in RUN_FILES or (n.startswith("samples_") and n.endswith(".png")))]
        if foreign:
            raise TrainingError(f"--out {run_dir}: holds files a run does not write ({', '.join(sorted(foreign)[:4])}); "
                                "--overwrite only replaces a run directory")


def _prepare_directory(run_dir):
    """A fresh run directory: created, or emptied of the previous run's files (``_check_directory`` passed)."""
    if os.path.isdir(run_dir):
        for name in os.listdir(run_dir):
            os.unlink(os.path.join(run_dir, name))
    os.makedirs(run_dir, exist_ok=True)


def open_run(family, overrides=None, out_dir=None, resume=None, preset=None, verbose=True, overwrite=False):
    """The config, the run directory (config.json written), data, recipe and, on resume, the checkpoint."""
    if resume:
        if preset is not None:
            raise TrainingError("--resume continues a run with its saved config; --preset applies only to new runs")
        if overwrite:
            raise TrainingError("--resume continues a run; --overwrite starts one afresh: choose one")
        recipe_cls, saved = read_run_config(resume)
        if family is not None and get_family(family) is not recipe_cls:
            raise TrainingError(f"{resume} is a {recipe_cls.name!r} run; it cannot be resumed as {family!r}")
        config = saved
        if overrides:
            extra = set(overrides) - set(RESUMABLE_OPTIONS)
            if extra:
                raise TrainingError(f"--resume continues a run with its saved config; only "
                                    f"{', '.join(RESUMABLE_OPTIONS)} may change (got {', '.join(sorted(extra))})")
            config = make_config(recipe_cls, {**dataclasses.asdict(saved), **overrides})
        run_dir = resume
        if not os.path.exists(os.path.join(run_dir, "checkpoint.npz")):
            raise TrainingError(f"{run_dir}: no checkpoint yet (the run stopped before its first one), so there is "
                                f"nothing to resume; start it again with: python -m minigen train "
                                f"{recipe_cls.name} --out {run_dir} --overwrite")
        remove_stray_temp_files(run_dir)
    else:
        recipe_cls = get_family(family)
        config = make_config(recipe_cls, overrides, preset)
        run_dir = out_dir or os.path.join("runs", f"{recipe_cls.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        _check_directory(run_dir, overwrite)

    recipe, train_set, test_set, model_gen, data_gen, loader = build(recipe_cls, config, verbose)
    run = Run(recipe_cls, config, run_dir, recipe, train_set, test_set, model_gen, data_gen, loader)
    if resume:
        run.run_id = run_id_of(run_dir)
        _restore(run)
        if config.steps < run.step:
            raise TrainingError(f"--steps {config.steps} is below the checkpoint's step {run.step}; "
                                "a run cannot be shortened")
        if overrides:
            recipe.change_learning_rate(saved, config)
            _write_config(run_dir, recipe_cls, config, run.run_id)   # the run now aims at the new settings
        if verbose:
            print(f"resumed {run_dir} at step {run.step}")
    else:
        import uuid

        _prepare_directory(run_dir)   # only now, so a config or data error leaves no directory behind
        run.run_id = uuid.uuid4().hex
        _write_config(run_dir, recipe_cls, config, run.run_id, train_set)
    return run


def _restore(run):
    try:
        state = load_tree(run.checkpoint_path)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    try:
        step = int(state["step"])
    except (KeyError, TypeError, ValueError):
        raise TrainingError(f"{run.checkpoint_path} is damaged: its step is {state.get('step')!r}") from None
    try:
        run.recipe.load_state_dict(state["recipe"])
        run.model_gen.set_state(state["model_generator"])
        run.data_gen.set_state(state["data_generator"])
        run.loader.load_state_dict(state["loader"])
        run.step = step
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise TrainingError(f"{run.checkpoint_path} is damaged or does not fit this run's config "
                            f"({type(exc).__name__}: {reason})") from None
    saved_id = str(state.get("run_id", ""))
    if saved_id != run.run_id:
        raise TrainingError(f"{run.checkpoint_path} belongs to another run than {run.run_dir}/config.json "
                            f"(run ids {saved_id or 'none'} and {run.run_id or 'none'}); refusing to mix them")
    seconds = state.get("train_seconds")
    run.train_seconds = (float(seconds[0]), float(seconds[1])) if seconds is not None else (0.0, 0.0)
    run.recipe.step = run.step
    run.resumed = True
    _truncate_log(run.log_path, run.step)


# ----------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------

def _read_rows(path):
    """The rows of metrics.jsonl; a damaged line (a crash mid-write, an editor) is dropped."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    return rows


def _write_rows(path, rows):
    atomic_write_text(path, "".join(to_json(r) + "\n" for r in rows))


def append_metrics(path, rows):
    """Append rows to metrics.jsonl: the file is rewritten atomically (never appended through a link)."""
    if rows:
        _write_rows(path, _read_rows(path) + list(rows))


def _truncate_log(path, last_step):
    """Keep only metrics rows up to ``last_step`` (a resumed run rewrites what followed)."""
    if os.path.exists(path):
        _write_rows(path, [r for r in _read_rows(path) if isinstance(r.get("step", 0), (int, float))
                           and r.get("step", 0) <= last_step])


def _streams(run):
    """The random streams' and the loader's positions (small dicts), as a checkpoint stores them."""
    return {"model_generator": run.model_gen.get_state(), "data_generator": run.data_gen.get_state(),
            "loader": run.loader.state_dict()}


def first_non_finite(tree, path=""):
    """The path of the first array (or float) in a state tree holding NaN or inf, or None."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            found = first_non_finite(value, f"{path}/{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            found = first_non_finite(value, f"{path}/{i}")
            if found:
                return found
        return None
    data = tree.data if isinstance(tree, Tensor) else tree
    if hasattr(data, "dtype") and getattr(data.dtype, "kind", "") in "fc":
        return None if bool(backend.xp_of(data).isfinite(data).all()) else path
    if isinstance(tree, float) and not math.isfinite(tree):
        return path
    return None


def _checkpoint(run, step, seconds, last_good=None, streams=None, rows=()):
    """Save the run at ``step``, after checking that every array of the state is finite.

    ``rows`` (the metrics logged since the last checkpoint) are written first: a kill between
    the two writes leaves rows ahead of the checkpoint, which the resume truncates and redoes,
    never a checkpoint ahead of its rows.
    """
    state = run.recipe.state_dict()
    bad = first_non_finite(state)
    if bad:
        where = (f"the last good checkpoint is {run.checkpoint_path} (step {last_good})" if last_good is not None
                 else "no checkpoint was written yet")
        raise NonFiniteLossError(f"step {step}: the training state holds NaN or inf ({bad}); not saving it. "
                                 f"{where}. Try a lower --lr (resume with --resume RUN --lr VALUE).")
    append_metrics(run.log_path, rows)
    save_tree(run.checkpoint_path, {"step": step, "recipe": state, **(streams or _streams(run)),
                                    "train_seconds": np.asarray(seconds, dtype=np.float64),
                                    "run_id": run.run_id, "format": "minigen-checkpoint-1"})


class _GracefulStop:
    """While training, the first Ctrl-C (SIGINT) or SIGTERM only asks the loop to stop after the current step.

    The step then completes (parameters, optimizer and generators stay consistent),
    a checkpoint is written and KeyboardInterrupt is raised.  A second signal
    interrupts at once.  Outside the main thread signals cannot be caught, and a
    KeyboardInterrupt raised inside a step rewinds the random streams to the
    start of that step instead (see ``before`` in ``run_loop``).
    """

    def __init__(self):
        import signal
        import threading

        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # second signal: stop now
            self.restore()
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        import signal

        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.default_int_handler)
        self._previous = {}


class _Clock:
    """Training time of a run, wall and CPU, across sittings (the budget of ``max_minutes``)."""

    def __init__(self, before):
        self.before = before
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def seconds(self):
        return (self.before[0] + time.perf_counter() - self.wall0, self.before[1] + time.process_time() - self.cpu0)

    def over_budget(self, config):
        if not config.max_minutes:
            return False
        wall, cpu = self.seconds()
        return (cpu if config.budget_clock == "cpu" else wall) >= 60.0 * config.max_minutes


def run_loop(run, progress=True):
    """Train ``run`` up to ``config.steps`` (or its time budget); returns the last step."""
    from tqdm import tqdm

    recipe, config = run.recipe, run.config
    step = run.step
    last_good = step if run.resumed else None
    before = (None, None)
    clock = _Clock(run.train_seconds)
    stop = _GracefulStop()
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc=run.recipe_cls.name, dynamic_ncols=True)
    batches = iter(run.loader)
    pending_rows = []
    unread = []    # (step, logs) of the steps whose logged numbers have not been read from the device yet
    last_plot = time.perf_counter()
    recipe.train(True)
    try:
        while step < config.steps:
            before = (step, None)  # a KeyboardInterrupt while this is the step saves nothing
            try:
                xb, yb = next(batches)
            except StopIteration:
                batches = iter(run.loader)
                xb, yb = next(batches)
            x, y = recipe.prepare(xb, yb, run.data_gen)
            recipe.step = step
            logs = recipe.train_step(x, y)
            step += 1
            recipe.step = step
            if "loss" not in logs:
                _raise_non_finite(run, step, {}, last_good)
            unread.append((step, logs))
            out_of_time = clock.over_budget(config)
            last = step == config.steps or out_of_time
            logging = step % config.log_every == 0 or last
            if logging or step % config.checkpoint_every == 0 or stop.requested:
                # the losses of every step since the last look, read in one transfer (none on the other
                # steps): a non-finite loss still stops the run, naming its step, before any checkpoint
                _check_losses(run, unread, last_good)
                unread = []
            if logging:
                wall, cpu = clock.seconds()
                pending_rows.append({"step": step, **{k: float(v) for k, v in logs.items()},
                                     "train_seconds": round(wall, 3), "train_cpu_seconds": round(cpu, 3)})
                bar.set_postfix({k: f"{logs[k]:.4g}" for k in shown_keys(logs) if k.startswith("loss")})
            bar.update(1)
            if step % config.checkpoint_every == 0 or last:
                _checkpoint(run, step, clock.seconds(), last_good, rows=pending_rows)
                pending_rows = []
                last_good = step
                if not last and time.perf_counter() - last_plot > 60.0:
                    _plot_curves(run)    # a run stopped early still has its curves (at most one plot a minute)
                    last_plot = time.perf_counter()
            if config.sample_every and step % config.sample_every == 0 and not last:
                save_samples(recipe, config, os.path.join(run.run_dir, f"samples_{step:06d}.png"), step)
            if stop.requested:  # Ctrl-C or SIGTERM arrived during the step: it was finished, now stop cleanly
                raise KeyboardInterrupt
            if out_of_time:
                bar.close()
                print(f"time budget of {config.max_minutes:g} {config.budget_clock} minutes reached at step {step}")
                break
    except KeyboardInterrupt:
        bar.close()
        if before[0] == step:
            # interrupted inside a step: parameters, moments or buffers may be half updated, so
            # nothing is saved; the last checkpoint stands and a resume repeats the lost steps exactly
            kept = f"the last checkpoint (step {last_good}) stands" if last_good is not None else "no checkpoint exists yet"
            print(f"\ninterrupted inside step {step + 1}; its half-done update was not saved and {kept}. "
                  f"Continue with: python -m minigen train --resume {run.run_dir}")
            raise
        _check_losses(run, unread, last_good)   # never checkpoint past a non-finite loss nobody read
        _checkpoint(run, step, clock.seconds(), last_good, rows=[r for r in pending_rows if r["step"] <= step])
        print(f"\ninterrupted at step {step}; checkpoint saved. Continue with: "
              f"python -m minigen train --resume {run.run_dir}")
        raise
    except NonFiniteLossError:
        bar.close()
        append_metrics(run.log_path, [r for r in pending_rows if r["step"] < step])
        raise
    finally:
        stop.restore()
    bar.close()
    run.step = step
    return step


def _check_losses(run, unread, last_good):
    """Read the logs of the ``unread`` (step, logs) pairs together; stop at the first non-finite loss.

    A recipe's ``train_step`` may return a ``backend.StepLogs`` whose numbers are still
    on the device: ``backend.read_logs`` copies all of them to the host in one transfer.
    Plain dicts of floats (recipes that read their own numbers) pass through.
    """
    backend.read_logs([logs for _, logs in unread])
    for step, logs in unread:
        bad = {k: v for k, v in logs.items() if k.startswith("loss") and not math.isfinite(v)}
        if bad:
            _raise_non_finite(run, step, bad, last_good)


def _raise_non_finite(run, step, bad, last_good):
    """Raise the ``NonFiniteLossError`` of ``step`` (``bad``: the non-finite losses; empty: no loss returned)."""
    where = (f"the last good checkpoint is {run.checkpoint_path} (step {last_good})"
             if last_good is not None else "no checkpoint was written yet")
    what = ", ".join(f"{k} is {v}" for k, v in bad.items()) or "no loss was returned"
    raise NonFiniteLossError(f"step {step}: {what}; stopping. {where}. Try a lower --lr or check the data.")


def shown_keys(row):
    """The logged numbers worth showing in the progress bar and curves.png, in order.

    ``loss`` is the loop's generic copy of the quantity it checks for finiteness
    (for a GAN, the discriminator's loss); where a family also logs named losses
    (``loss_d``, ``loss_g``) the generic copy is left out, so no picture calls the
    discriminator's loss just "loss".  The clock columns are not curves.
    """
    keys = [k for k, v in row.items() if k not in ("step", "train_seconds", "train_cpu_seconds")
            and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if any(k.startswith("loss_") for k in keys):
        keys = [k for k in keys if k != "loss"]
    return keys


def _plot_curves(run):
    from .viz import plot_curves, read_metrics

    try:
        rows = [r for r in read_metrics(run.log_path) if "eval" not in r]
        keys = []
        for row in rows:
            keys += [k for k in shown_keys(row) if k not in keys]
        plot_curves(rows, os.path.join(run.run_dir, "curves.png"), keys=keys or None,
                    title=f"{run.recipe_cls.name}: training curves")
    except ValueError:      # no rows yet (a checkpoint before the first log row)
        pass


def finish(run):
    """The final sample grid, the training curves, and the grids saved during training side by side."""
    import glob

    from .viz import plot_sample_strip

    run.recipe.train(False)
    save_samples(run.recipe, run.config, os.path.join(run.run_dir, "samples.png"), run.step)
    _plot_curves(run)
    grids = sorted(glob.glob(os.path.join(run.run_dir, "samples_[0-9]*.png")))
    if grids:
        steps = [int(os.path.basename(g)[len("samples_"):-len(".png")]) for g in grids]
        plot_sample_strip(grids + [os.path.join(run.run_dir, "samples.png")], steps + [run.step],
                          os.path.join(run.run_dir, "samples_over_training.png"),
                          title=f"{run.recipe_cls.name}: samples over training")


def train(family, overrides=None, out_dir=None, resume=None, progress=True, verbose=True, preset=None,
          overwrite=False):
    """Train a family; returns the run directory.

    ``family``: a name of ``minigen.families.FAMILIES`` or a Recipe class (None with ``resume``);
    ``overrides``: config fields to change; ``preset``: a named set of overrides of the
    family (``Recipe.presets``), applied before ``overrides``; ``out_dir``: where the run
    goes (default runs/<family>-<time>); ``resume``: an existing run directory to continue
    (its config is reused; ``overrides`` may change only ``RESUMABLE_OPTIONS``);
    ``overwrite``: replace the run in a non-empty ``out_dir`` (otherwise refused).
    A file-system failure (read-only, full disk, a file where the directory should be)
    becomes one TrainingError naming the path and the reason; the last checkpoint is
    never damaged by it (checkpoints are replaced atomically).
    """
    try:
        run = open_run(family, overrides, out_dir, resume, preset, verbose, overwrite)
        run_loop(run, progress)
        finish(run)
    except OSError as exc:
        path = exc.filename or out_dir or resume or ""
        raise TrainingError(f"{path}: {exc.strerror or exc}; the last checkpoint, if any, is intact") from None
    return run.run_dir


def save_samples(recipe, config, path, step):
    """A grid of ``config.n_samples`` images from a fixed stream (grids comparable across steps)."""
    from .nn import eval_mode
    from .viz import save_image_grid

    gen = backend.Generator(config.seed + 2, recipe.device)
    labels = None
    if recipe.conditional:
        per_class = max(1, config.n_samples // 10)
        labels = np.repeat(np.arange(10), per_class)
    with no_grad(), contextlib.ExitStack() as modes:
        for module in recipe.modules.values():
            modes.enter_context(eval_mode(module))
        images = recipe.sample(len(labels) if labels is not None else config.n_samples, gen, labels=labels)
    nrow = per_class if labels is not None else int(math.ceil(math.sqrt(len(images))))
    save_image_grid(images, path, nrow=nrow, title=f"{recipe.name} samples, step {step}")

"""What every model family shares on the command line: run options, the Recipe, errors.

A *family* (``vae``, ``dcgan``, ``ddpm`` ...) is a model of ``minigen/models/``
plus the wiring that lets ``minigen.train`` run it: how to build the networks
and optimizers from a config, how to turn a data batch into one training step,
how to draw samples and how to score itself.  That wiring is a ``Recipe``
subclass in ``minigen/families/<family>.py``; the step itself is a plain
function at the end of the model file (``vae.train_step``, ``gan.gan_step``,
``diffusion.train_step``), which the recipe calls in a line or two.

Configs.  A model file's ``@dataclass`` config holds the architecture and the
objective only (``VAEConfig``: ``latent_dim``, ``decoder``, ``beta`` ...).  A
family's run config is that dataclass and ``RunConfig`` (data, steps, batch,
learning rate, seed, device, logging cadence) in one flat dataclass, so every
field is one ``--option`` and one key of ``config.json``.  Model configs raise
``ValueError`` for impossible settings; ``make_config`` turns that into a
``TrainingError`` with the same one-line message.

Layering: this package imports ``models/`` and the engine, never ``train``,
``evaluate`` or ``cli`` (``tests/test_layering.py`` checks the imports).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .. import backend
from ..autograd import Tensor

__all__ = ["TrainingError", "NonFiniteLossError", "RunConfig", "Recipe", "make_config", "field_help"]


class TrainingError(RuntimeError):
    """A run cannot start or continue (bad config, unreadable checkpoint ...): one line for the user."""


class NonFiniteLossError(TrainingError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunConfig:
    """Options every family shares.  A family's config is its model config plus these."""

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
    max_minutes: float = 0.0        # stop training after this many minutes (0: no limit); the run ends as at `steps`
    budget_clock: str = "wall"      # what max_minutes counts: "wall" (elapsed time) or "cpu" (this process's CPU time)

    def validate(self):
        """Raise TrainingError (run fields) or ValueError (model fields) for settings that cannot work."""
        positive = ["steps", "batch_size", "log_every", "checkpoint_every", "n_samples"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise TrainingError(f"config: {name} must be positive, got {getattr(self, name)}")
        for name in ["sample_every", "eval_samples"]:
            if getattr(self, name) < 0:
                raise TrainingError(f"config: {name} must be >= 0, got {getattr(self, name)}")
        if self.seed < 0:
            raise TrainingError(f"config: seed must be >= 0, got {self.seed}")
        if not (self.max_minutes >= 0 and math.isfinite(self.max_minutes)):
            raise TrainingError(f"config: max_minutes must be a number >= 0, got {self.max_minutes}")
        if self.budget_clock not in ("wall", "cpu"):
            raise TrainingError(f"config: budget_clock must be wall or cpu, got {self.budget_clock!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"config: lr must be a positive number, got {self.lr}")
        try:
            if backend.check_device(self.device) == "gpu":
                backend.get_array_module("gpu")        # CuPy and a CUDA device, or a one-line reason
        except (ValueError, RuntimeError) as exc:
            raise TrainingError(f"config: {exc}") from None
        # the model half of the config (a dataclass from models/) checks its own fields
        for base in type(self).__mro__[1:]:
            check = base.__dict__.get("validate")
            if check is not None and base is not RunConfig and not issubclass(base, RunConfig):
                check(self)


class Recipe:
    """How one model family trains.  Subclasses set ``name``, ``Config`` and implement the hooks.

    Hooks
    -----
    ``__init__(config, data, device, generator)``: build models and optimizers and
        put them in the dicts ``self.modules``, ``self.optimizers``,
        ``self.schedulers`` and ``self.emas`` so that checkpoints hold them.
        ``data`` is the training ``Dataset`` (host images (N, C, H, W) in [0, 1],
        integer labels, ``classes``).
    ``prepare(x, y, generator)``: turn a batch (Tensors on the device: images in
        [0, 1], int labels) into what ``train_step`` needs (binarize, rescale ...).
    ``train_step(x, y)``: one optimisation step; returns a dict of floats.  Every
        value whose key starts with ``loss`` is checked for finiteness; ``loss``
        itself must be present.
    ``sample(n, generator, labels=None)``: n images as a host array in [0, 1], NCHW.
    ``evaluate(x, y, generator)``: family-specific test metrics (dict of floats).
    ``extra_state()`` / ``load_extra_state(state)``: anything else a resume needs
        (a dict of numbers and arrays), e.g. a growth phase.

    ``self.step`` is the number of finished training steps; the loop keeps it
    current (also after a resume), so a schedule may read it in ``train_step``.
    """

    name = "recipe"
    Config = RunConfig
    description = ""
    conditional = False  # True when sample() accepts class labels
    samples_need_data = False  # True when sample() uses training images (then `sample` loads the dataset)
    # options whose default changed after runs were written: {option: the value those runs used}, applied
    # when a run's config.json does not name the option (read_run_config)
    options_added_later = {}
    progress = False  # evaluate() may show progress bars (evaluate_run sets it when verbose)
    # Named sets of config overrides, e.g. {"gpu": {...}} for a larger run on a GPU;
    # ``train FAMILY --preset NAME`` applies one, and explicit options still win.
    presets: dict = {}

    def __init__(self, config, data, device, generator):
        self.config = config
        self.device = device
        self.generator = generator
        self.step = 0
        self.modules = {}
        self.optimizers = {}
        self.schedulers = {}
        self.emas = {}

    def prepare(self, x, y, generator):
        """Device batch (images (B, C, H, W) in [0, 1], labels (B,)) -> ``train_step``'s inputs; identity here."""
        return x, y

    def train_step(self, x, y) -> dict:
        """One optimisation step on a prepared batch; returns a mapping that contains ``loss``.

        Either a dict of floats, or a ``backend.StepLogs`` of device scalars: the loop
        then reads them only on logging and checkpoint steps, all in one transfer.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement train_step")

    def sample(self, n, generator, labels=None) -> np.ndarray:
        """``n`` images as a host array (n, C, H, W) in [0, 1], for class ``labels`` (n,) if given."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample")

    def sampling_labels(self, n, generator, labels=None):
        """The class labels of ``n`` conditional samples, as a (n,) int64 Tensor on the run's device.

        ``labels`` given: checked (n integers in [0, num_classes)); else drawn uniformly from
        ``generator``.  None for an unconditional family.  Conditional recipes set ``num_classes``.
        """
        if not self.conditional:
            return None
        if labels is None:
            labels = generator.host_integers(0, self.num_classes, shape=(n,))   # host: checked, then sent once
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"{self.name}: labels must be {n} integers in [0, {self.num_classes}), got {labels}")
        return Tensor(backend.to_device(labels, self.device))

    def evaluate(self, x, y, generator) -> dict:
        """Family-specific test metrics of a batch (images (B, C, H, W), labels (B,)); a dict, empty here."""
        return {}

    def extra_state(self) -> dict:
        """What else besides modules/optimizers/schedulers/EMAs a resume needs (a dict); empty here."""
        return {}

    def load_extra_state(self, state) -> None:
        """Restore what ``extra_state`` returned; nothing by default."""
        pass

    # state -------------------------------------------------------------------
    _GROUPS = ("modules", "optimizers", "schedulers", "emas")

    def state_dict(self):
        """What a checkpoint holds: the state of every module, optimizer, scheduler, EMA, and ``extra_state()``."""
        out = {group: {k: obj.state_dict() for k, obj in getattr(self, group).items()} for group in self._GROUPS}
        extra = self.extra_state()
        if extra:
            out["extra"] = extra
        return out

    def upgrade_state(self, state):
        """A checkpoint written by an older minigen, brought to today's layout (override to rename keys).

        Before ``schedulers`` existed a learning-rate schedule was stored among the
        optimizers; an entry there that is not one of this recipe's optimizers is
        moved to its single scheduler.
        """
        if "schedulers" not in state:
            state = dict(state)
            optimizers = dict(state.get("optimizers", {}))
            extra = [k for k in optimizers if k not in self.optimizers]
            if len(extra) == 1 and len(self.schedulers) == 1:
                state["schedulers"] = {next(iter(self.schedulers)): optimizers.pop(extra[0])}
            else:
                state["schedulers"] = {}
            state["optimizers"] = optimizers
        return state

    def load_state_dict(self, state):
        """Restore a ``state_dict`` (older layouts upgraded first); refuses keys that do not match this family."""
        state = self.upgrade_state(state)
        for group in self._GROUPS:
            mine, theirs = getattr(self, group), state.get(group, {})
            if set(mine) != set(theirs):
                raise TrainingError(f"checkpoint holds {group} {sorted(theirs)} but this family has {sorted(mine)}")
        for group in self._GROUPS:
            for key, obj in getattr(self, group).items():
                obj.load_state_dict(state[group][key])
        self.load_extra_state(state.get("extra", {}))

    def train(self, mode=True):
        """Put every module in training (``mode=True``) or evaluation mode."""
        for m in self.modules.values():
            m.train(mode)

    @classmethod
    def uses_option(cls, name, help_text):
        """Whether option ``name`` (with its one-line ``help_text``) matters to this family; the
        command line lists only those.  A help text "conditional: ..." belongs to conditional
        families only; families with more such groups override this."""
        return cls.conditional or not help_text.startswith("conditional:")

    def change_learning_rate(self, old, new):
        """After a resume with a new ``lr``: scale every optimizer's rate (and its schedule's base
        rates) by new.lr / old.lr.  Families with more than one rate override this."""
        self._scale_rates(self.optimizers.values(), new.lr / old.lr)

    def _scale_rates(self, optimizers, factor):
        if factor == 1.0:
            return
        optimizers = list(optimizers)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] *= factor
        for sched in self.schedulers.values():
            if getattr(sched, "optimizer", None) in optimizers and hasattr(sched, "base_lrs"):
                sched.base_lrs = [b * factor for b in sched.base_lrs]


def _type_error(name, expected, value):
    return TrainingError(f"config: {name} must be {expected}, got {value!r} ({type(value).__name__})")


def _coerce(field, value):
    """``value`` as the type of a config field (read off its default), or TrainingError."""
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return _coerce_like(field.name, default, value)


def _coerce_like(name, default, value):
    """``value`` as the type of ``default``, or TrainingError naming the field.

    Accepted: an int for an int field (a float only when integral, e.g. 3.0 from JSON),
    an int or float for a float field, a string for a str field, a bool for a bool
    field, a list or tuple for a tuple field (elements coerced like the default's).
    """
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _type_error(name, "true or false", value)
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise _type_error(name, "an integer", value)
        if not float(value).is_integer():
            raise _type_error(name, "an integer", value)
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise _type_error(name, "a number", value)
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise _type_error(name, "a string", value)
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(name, "a list", value)
        element = default[0] if default else 0
        return tuple(_coerce_like(name, element, v) for v in value)
    return value


def make_config(recipe_cls, overrides=None, preset=None):
    """The family's config with ``preset`` (a name in ``recipe_cls.presets``), then
    ``overrides`` (a dict of field -> value) applied, and checked."""
    if preset is not None:
        if preset not in recipe_cls.presets:
            known = ", ".join(sorted(recipe_cls.presets)) or "none"
            raise TrainingError(f"unknown preset {preset!r} for {recipe_cls.name}; known: {known}")
        overrides = {**recipe_cls.presets[preset], **(overrides or {})}
    if overrides is not None and not isinstance(overrides, dict):
        raise TrainingError(f"config: expected an object of field -> value, got {type(overrides).__name__}")
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(recipe_cls.Config)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TrainingError(f"unknown option(s) for {recipe_cls.name}: {', '.join(unknown)}; "
                            f"known: {', '.join(fields)}")
    overrides = {name: _coerce(fields[name], value) for name, value in overrides.items()}
    config = recipe_cls.Config(**overrides)
    try:
        config.validate()
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    return config


def field_help(config_cls):
    """{field: its one-line description}, read from the comments beside the dataclass fields
    (the first definition's comment, which names the allowed values, wins over a subclass's
    note on its changed default): the source of ``--help`` and ``list -v``."""
    import inspect
    import re

    out = {}
    for cls in reversed(config_cls.__mro__):
        if not dataclasses.is_dataclass(cls) or cls is object:
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        for match in re.finditer(r"^\s+(\w+)\s*:[^=\n]*=[^#\n]*#\s*(.+)$", source, flags=re.M):
            out.setdefault(match.group(1), match.group(2).strip())
    return out

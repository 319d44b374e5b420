"""``python -m minigen``: train, sample, evaluate and list model families.

    python -m minigen list
    python -m minigen train FAMILY [--steps N] [--batch-size B] [--lr LR] [--device gpu] [--out DIR] [...]
    python -m minigen train --resume RUN_DIR [--steps N]
    python -m minigen sample RUN_DIR [--n 64] [--out PATH] [--seed S]
    python -m minigen eval RUN_DIR [--eval-samples N] [--set FIELD=VALUE ...]

The options of ``train`` come from the family's ``@dataclass`` config: every
field ``batch_size`` becomes ``--batch-size`` with the field's type and default,
so a family adds an option by adding a field.  No per-family code lives here.
Errors (unknown family or option, impossible config, unreadable checkpoint)
print one line and exit with status 2; Ctrl-C exits with 130 after saving.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

__all__ = ["main"]


def _bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _config_fields(config_cls):
    """(name, default, parse, is_sequence) per field of a config dataclass.

    ``parse`` turns one command-line word into a value of the field's type (for a
    tuple/list field: one element); the type is read off the field's default.
    """
    for field in dataclasses.fields(config_cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kind = type(default)
        if kind in (tuple, list):
            yield field.name, default, (type(default[0]) if default else int), True
        else:
            yield field.name, default, (_bool if kind is bool else kind), False


def _shown(default):
    """A default as the command line takes it: ``1 2 2`` for a tuple, ``0.001``, ``mlp``."""
    if isinstance(default, (tuple, list)):
        return " ".join(map(str, default))
    return str(default)


def _options(recipe_cls):
    """(name, default, parse, is_sequence, help, used) for each config field of a family."""
    from .families.base import field_help

    helps = field_help(recipe_cls.Config)
    for name, default, parse, sequence in _config_fields(recipe_cls.Config):
        text = helps.get(name, "")
        yield name, default, parse, sequence, text, recipe_cls.uses_option(name, text)


def _add_config_options(parser, recipe_cls):
    """One ``--field-name`` option per dataclass field, typed by its default, described by its comment
    (options the family does not use are accepted but not listed)."""
    for name, default, parse, sequence, text, used in _options(recipe_cls):
        option = "--" + name.replace("_", "-")
        shown = argparse.SUPPRESS if not used else f"{text} (default {_shown(default)})".replace("%", "%%")
        if sequence:
            parser.add_argument(option, type=parse, nargs="+", dest=name, default=argparse.SUPPRESS, help=shown,
                                metavar=parse.__name__.upper())
        elif parse is _bool:
            parser.add_argument(option, type=_bool, dest=name, default=argparse.SUPPRESS, metavar="BOOL", help=shown)
        else:
            parser.add_argument(option, type=parse, dest=name, default=argparse.SUPPRESS, help=shown,
                                metavar=parse.__name__.upper())


class _Parser(argparse.ArgumentParser):
    """argparse, but errors exit with one line and status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"minigen: error: {message}\n")


def _cmd_list(args):
    from .train import families

    for name, recipe in families().items():
        print(f"{name:14s} {recipe.description}")
        if args.verbose:
            for option, default, _parse, _seq, text, used in _options(recipe):
                if used:
                    print(f"    --{option.replace('_', '-'):18s} {_shown(default):>10s}  {text}")
            for preset, values in sorted(recipe.presets.items()):
                options = " ".join(f"--{k.replace('_', '-')} "
                                   + (" ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
                                   for k, v in values.items())
                print(f"    --preset {preset:11s} = {options}")
    return 0


def _family_word(argv):
    """The FAMILY word of ``train`` arguments: the first known family name, wherever it stands
    (``train --steps 5 vae`` and ``train vae --steps 5`` mean the same), else the first word
    that is neither an option nor an option's value (so a typo gets a "did you mean")."""
    from .families import FAMILIES

    for word in argv:
        if word in FAMILIES:
            return word
    previous = ""
    for word in argv:
        if not word.startswith("-") and not (previous.startswith("--") and "=" not in previous):
            return word
        previous = word
    return None


def _cmd_train(argv):
    from .train import get_family, read_run_config, train

    if argv and argv[0] in ("-h", "--help") or argv == ["help"]:
        print(_TRAIN_USAGE)
        return 0
    pre = _Parser(prog="minigen train", add_help=False)
    pre.add_argument("--resume", metavar="RUN_DIR")
    known, _ = pre.parse_known_args(argv)
    word = _family_word(argv)
    if known.resume:
        recipe_cls, _config = read_run_config(known.resume)
        if word is not None and get_family(word) is not recipe_cls:
            pre.error(f"{known.resume} is a {recipe_cls.name!r} run; it cannot be resumed as {word!r}")
    elif word is not None:
        recipe_cls = get_family(word)
    else:
        pre.error("train needs a FAMILY (see `minigen list`) or --resume RUN_DIR")

    parser = _Parser(prog=f"minigen train {recipe_cls.name}",
                     description=f"Train {recipe_cls.name}: {recipe_cls.description}")
    parser.add_argument("family", nargs="?")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--out", metavar="DIR", help="run directory (default runs/FAMILY-TIME); must be new or empty")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in a non-empty --out directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    presets = ", ".join(sorted(recipe_cls.presets)) or "none"
    parser.add_argument("--preset", metavar="NAME", default=None,
                        help=f"a named set of options, applied before the explicit ones (this family: {presets})")
    _add_config_options(parser, recipe_cls)
    args = vars(parser.parse_args(argv))
    family, resume, out = args.pop("family"), args.pop("resume"), args.pop("out")
    progress, preset, overwrite = not args.pop("no_progress"), args.pop("preset"), args.pop("overwrite")
    if family is not None and family != recipe_cls.name:
        parser.error(f"unexpected word {family!r} (the family is {recipe_cls.name})")
    run_dir = train(None if resume else recipe_cls.name, overrides=args, out_dir=out, resume=resume,
                    progress=progress, preset=preset, overwrite=overwrite)
    print(f"run directory: {run_dir}")
    from .evaluate import evaluate_run, format_results, previous_evaluation

    done = previous_evaluation(run_dir) if resume else None
    if done is not None:      # a resume that trained nothing new: the evaluation on file still holds
        print(f"(eval.json already holds the evaluation of step {done['step']})")
        print(format_results(done))
        return 0
    evaluate_run(run_dir, verbose=True)
    return 0


def _cmd_sample(args):
    from .evaluate import sample_run
    from .train import TrainingError, read_run_config

    overrides = {}
    if args.guidance is not None or args.sample_steps is not None or args.truncation is not None:
        recipe_cls, _config = read_run_config(args.run_dir)
        fields = {f.name for f in dataclasses.fields(recipe_cls.Config)}
        for option, field, value in (("--guidance", "guidance_scale", args.guidance),
                                     ("--sample-steps", "sample_steps", args.sample_steps),
                                     ("--truncation", "truncation_psi", args.truncation)):
            if value is None:
                continue
            if field not in fields or (field == "guidance_scale" and not recipe_cls.conditional):
                raise TrainingError(f"{option}: a {recipe_cls.name} run has no {field}")
            overrides[field] = value
    labels = args.labels if args.labels is not None else args.class_
    path = sample_run(args.run_dir, n=args.n, out=args.out, seed=args.seed, labels=labels, device=args.device,
                      nrow=args.nrow, overrides=overrides, progress=True)
    print(f"wrote {path}")
    return 0


def _parse_sets(run_dir, pairs):
    """``--set FIELD=VALUE`` pairs -> {field: value}, each VALUE parsed by the field's type."""
    from .train import read_run_config

    if not pairs:
        return None
    recipe_cls, _config = read_run_config(run_dir)
    return _parse_pairs(recipe_cls, pairs)


def _parse_pairs(recipe_cls, pairs, only_known=False):
    """``FIELD=VALUE`` pairs -> {field: value} for ``recipe_cls``'s config; ``only_known``: skip other fields."""
    from .train import TrainingError

    fields = {name: (parse, sequence) for name, _default, parse, sequence in _config_fields(recipe_cls.Config)}
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if sep and only_known and name not in fields:
            continue
        if not sep or name not in fields:
            raise TrainingError(f"--set expects FIELD=VALUE with a field of {recipe_cls.name} "
                                f"({', '.join(fields)}), got {pair!r}")
        parse, sequence = fields[name]
        try:
            out[name] = tuple(parse(v) for v in text.replace(",", " ").split()) if sequence else parse(text)
        except (ValueError, argparse.ArgumentTypeError):
            raise TrainingError(f"--set {name}: expected {'a list of ' if sequence else 'a '}"
                                f"{getattr(parse, '__name__', 'value').lstrip('_')}, got {text!r}") from None
    return out


def _cmd_eval(args):
    from .evaluate import evaluate_run

    overrides = _parse_sets(args.run_dir, args.set) or {}
    if args.device:
        overrides["device"] = args.device
    evaluate_run(args.run_dir, eval_samples=args.eval_samples, verbose=True, overrides=overrides or None)
    return 0


def _count(minimum):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


_TRAIN_USAGE = """usage: minigen train FAMILY [--OPTION VALUE ...] [--out DIR] [--overwrite] [--preset NAME]
       minigen train --resume RUN_DIR [--steps N] [--lr LR] [--max-minutes M] ...

Train a model family (see `minigen list`); `minigen train FAMILY --help` lists its options."""


def _cmd_compare(args):
    from .compare import compare_runs, expand, markdown_table, write_outputs
    from .train import TrainingError

    runs = expand(args.runs)
    missing = [r for r in runs if not os.path.isdir(r)]
    if missing:
        raise TrainingError(f"compare: not a directory: {', '.join(missing)}")
    rows = compare_runs(runs)
    print(write_outputs(rows, args.out, grid_images=args.grid) if args.out else markdown_table(rows))
    if args.out:
        print(f"wrote {args.out}/compare.md, compare.csv, mosaic.png, quality_vs_cost.png")
    return 0


def _cmd_zoo(args):
    from .compare import zoo
    from .families import FAMILIES, get_family

    from .train import TrainingError

    names = args.families or sorted(FAMILIES)
    recipes = [get_family(name) for name in names]   # a mistyped family fails before hours of training
    for item in args.set or []:
        key, sep, _value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise TrainingError(f"zoo: --set takes KEY=VALUE, got {item!r}")
        if not any(key in {f.name for f in dataclasses.fields(r.Config)} for r in recipes):
            raise TrainingError(f"zoo: no chosen family has an option {key!r}")
    extra = {r.name: _parse_pairs(r, args.set, only_known=True) for r in recipes} if args.set else None
    print(zoo(names, args.minutes, args.out, seeds=tuple(range(args.seeds)), eval_samples=args.eval_samples,
              budget_clock=args.budget_clock, extra=extra, progress=not args.no_progress))
    return 0


def main(argv=None):
    """``python -m minigen``: run the subcommand in ``argv`` (default sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from . import __version__

    prog = "minigen" if os.path.basename(sys.argv[0] or "") == "minigen" else "python -m minigen"
    parser = _Parser(prog=prog, description="minigen: train and evaluate generative models")
    parser.add_argument("--version", action="version", version=f"minigen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{list,train,sample,eval,compare,zoo}")
    p_list = sub.add_parser("list", help="list the model families")
    p_list.add_argument("-v", "--verbose", action="store_true", help="also list each family's options")
    sub.add_parser("train", help="train a family (options: python -m minigen train FAMILY --help)",
                   add_help=False)
    p_sample = sub.add_parser("sample", help="write a grid of samples from a run")
    p_sample.add_argument("run_dir")
    p_sample.add_argument("--n", type=_count(1), default=64, help="number of images")
    p_sample.add_argument("--out", help="output PNG (default RUN_DIR/samples_cli.png)")
    p_sample.add_argument("--seed", type=_count(0), default=0, help="seed of the sampling noise")
    p_sample.add_argument("--nrow", type=_count(1), default=None, help="images per row of the grid")
    p_sample.add_argument("--device", choices=["cpu", "gpu"], default=None,
                          help="where to load the run (default: its own device if present here, else cpu)")
    p_sample.add_argument("--labels", type=_count(0), nargs="+", default=None, metavar="K",
                          help="conditional families: the class of each image (n of them)")
    p_sample.add_argument("--class", dest="class_", type=_count(0), default=None, metavar="K",
                          help="conditional families: every image of class K")
    p_sample.add_argument("--guidance", type=float, default=None, metavar="S",
                          help="conditional diffusion: classifier-free guidance scale")
    p_sample.add_argument("--sample-steps", type=_count(1), default=None, metavar="N", help="diffusion: DDIM steps")
    p_sample.add_argument("--truncation", type=float, default=None, metavar="PSI",
                          help="StyleGAN: truncation psi (w = w_avg + psi (w - w_avg))")
    p_eval = sub.add_parser("eval", help="evaluate a run on the test set")
    p_eval.add_argument("run_dir")
    p_eval.add_argument("--eval-samples", type=_count(0), default=None, help="generated images for sample metrics")
    p_eval.add_argument("--device", choices=["cpu", "gpu"], default=None,
                        help="where to load the run (default: its own device if present here, else cpu)")
    p_eval.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="change a config field for this evaluation only (e.g. eval_images=1000, "
                             "sample_steps=50, eval_k=5000); repeatable")

    p_cmp = sub.add_parser("compare", help="one table of several runs (globs welcome)")
    p_cmp.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p_cmp.add_argument("--out", metavar="DIR", help="also write compare.md, compare.csv, mosaic.png, "
                                                    "quality_vs_cost.png there")
    p_cmp.add_argument("--grid", type=_count(1), default=16, help="images per run in the mosaic")
    p_zoo = sub.add_parser("zoo", help="train every family at one time budget, then compare them")
    p_zoo.add_argument("--minutes", type=float, required=True, help="training minutes per family")
    p_zoo.add_argument("--out", required=True, metavar="DIR", help="where the runs and the table go")
    p_zoo.add_argument("--families", nargs="+", metavar="FAMILY", help="default: all")
    p_zoo.add_argument("--seeds", type=_count(1), default=1, help="runs per family, seeds 0..N-1")
    p_zoo.add_argument("--eval-samples", type=_count(1), default=1000, help="samples behind every sample metric")
    p_zoo.add_argument("--budget-clock", choices=["wall", "cpu"], default="wall",
                       help="what --minutes counts (cpu: this process's CPU time, fair on a shared machine)")
    p_zoo.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="an option for every chosen family that has it (repeatable), e.g. eval_images=50")
    p_zoo.add_argument("--no-progress", action="store_true")

    from .checkpoint import CheckpointError
    from .train import TrainingError

    if argv and argv[0] in ("train", "eval", "sample", "zoo"):
        from . import backend

        backend.tune_malloc()   # training and sampling reuse freed activations (see its docstring)
    try:
        if argv and argv[0] == "train":
            return _cmd_train(argv[1:])
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return {"list": _cmd_list, "sample": _cmd_sample, "eval": _cmd_eval, "compare": _cmd_compare,
                "zoo": _cmd_zoo}[args.command](args)
    except (TrainingError, CheckpointError) as exc:
        print(f"minigen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:          # `minigen list -v | head`: the reader left; nothing to report
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0

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


def _add_config_options(parser, config_cls):
    """One ``--field-name`` option per dataclass field, typed by its default."""
    for name, default, parse, sequence in _config_fields(config_cls):
        option = "--" + name.replace("_", "-")
        if sequence:
            parser.add_argument(option, type=parse, nargs="+", dest=name, default=argparse.SUPPRESS,
                                help=f"(default {' '.join(map(str, default))})")
        elif parse is _bool:
            parser.add_argument(option, type=_bool, dest=name, default=argparse.SUPPRESS,
                                metavar="BOOL", help=f"(default {default})")
        else:
            parser.add_argument(option, type=parse, dest=name, default=argparse.SUPPRESS,
                                help=f"(default {default!r})")


class _Parser(argparse.ArgumentParser):
    """argparse, but errors exit with one line and status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"minigen: error: {message}\n")


def _cmd_list(args):
    from .train import families

    for name, recipe in families().items():
        print(f"{name:14s} {recipe.description}")
        if args.verbose:
            for field in dataclasses.fields(recipe.Config):
                print(f"    --{field.name.replace('_', '-'):20s} default {field.default!r}")
            for preset, values in sorted(recipe.presets.items()):
                options = " ".join(f"--{k.replace('_', '-')} "
                                   + (" ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
                                   for k, v in values.items())
                print(f"    --preset {preset:11s} = {options}")
    return 0


def _cmd_train(argv):
    from .train import get_family, train

    pre = _Parser(prog="minigen train", add_help=False)
    pre.add_argument("family", nargs="?")
    pre.add_argument("--resume", metavar="RUN_DIR")
    known, _ = pre.parse_known_args(argv)
    if known.resume:
        from .train import load_run
        recipe_cls, _config = load_run(known.resume)
    elif known.family and not known.family.startswith("-"):
        recipe_cls = get_family(known.family)
    else:
        pre.error("train needs a FAMILY (see `python -m minigen list`) or --resume RUN_DIR")

    parser = _Parser(prog=f"minigen train {recipe_cls.name}",
                     description=f"Train {recipe_cls.name}: {recipe_cls.description}")
    parser.add_argument("family", nargs="?")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--out", metavar="DIR", help="run directory (default runs/FAMILY-TIME)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    presets = ", ".join(sorted(recipe_cls.presets)) or "none"
    parser.add_argument("--preset", metavar="NAME", default=None,
                        help=f"a named set of options, applied before the explicit ones (this family: {presets})")
    _add_config_options(parser, recipe_cls.Config)
    args = vars(parser.parse_args(argv))
    family, resume, out = args.pop("family"), args.pop("resume"), args.pop("out")
    progress, preset = not args.pop("no_progress"), args.pop("preset")
    run_dir = train(family or recipe_cls.name, overrides=args, out_dir=out, resume=resume, progress=progress,
                    preset=preset)
    print(f"run directory: {run_dir}")
    from .evaluate import evaluate_run

    evaluate_run(run_dir, verbose=True)
    return 0


def _cmd_sample(args):
    from .evaluate import sample_run

    path = sample_run(args.run_dir, n=args.n, out=args.out, seed=args.seed)
    print(f"wrote {path}")
    return 0


def _parse_sets(run_dir, pairs):
    """``--set FIELD=VALUE`` pairs -> {field: value}, each VALUE parsed by the field's type."""
    from .train import TrainingError, load_run

    if not pairs:
        return None
    recipe_cls, _config = load_run(run_dir)
    fields = {name: (parse, sequence) for name, _default, parse, sequence in _config_fields(recipe_cls.Config)}
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
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

    overrides = _parse_sets(args.run_dir, args.set)
    evaluate_run(args.run_dir, eval_samples=args.eval_samples, verbose=True, overrides=overrides)
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="python -m minigen", description="minigen: train and evaluate generative models")
    sub = parser.add_subparsers(dest="command", metavar="{list,train,sample,eval}")
    p_list = sub.add_parser("list", help="list the model families")
    p_list.add_argument("-v", "--verbose", action="store_true", help="also list each family's options")
    sub.add_parser("train", help="train a family (options: python -m minigen train FAMILY --help)",
                   add_help=False)
    p_sample = sub.add_parser("sample", help="write a grid of samples from a run")
    p_sample.add_argument("run_dir")
    p_sample.add_argument("--n", type=int, default=64, help="number of images")
    p_sample.add_argument("--out", help="output PNG (default RUN_DIR/samples_cli.png)")
    p_sample.add_argument("--seed", type=int, default=0)
    p_eval = sub.add_parser("eval", help="evaluate a run on the test set")
    p_eval.add_argument("run_dir")
    p_eval.add_argument("--eval-samples", type=int, default=None, help="generated images for sample metrics")
    p_eval.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="change a config field for this evaluation only (e.g. eval_images=1000, "
                             "sample_steps=50, eval_k=5000); repeatable")

    from .checkpoint import CheckpointError
    from .train import TrainingError

    try:
        if argv and argv[0] == "train":
            return _cmd_train(argv[1:])
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return {"list": _cmd_list, "sample": _cmd_sample, "eval": _cmd_eval}[args.command](args)
    except (TrainingError, CheckpointError) as exc:
        print(f"minigen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

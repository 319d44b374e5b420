"""The package's layers import only downwards (checked on the import statements of every module).

    engine      backend, autograd, creation, functional/, nn/, optim, distributions, testing, checkpoint
    data        data/, metrics/ (and viz)
    models      models/            -- never families/, train, evaluate, cli
    families    families/          -- never train, evaluate, cli
    loop        train              -- never evaluate, cli
    commands    evaluate, compare, cli, __main__
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "minigen")

LAYERS = [
    ("engine", ["backend", "autograd", "creation", "functional", "nn", "optim", "distributions", "testing",
                "checkpoint", "__init__"]),
    ("data", ["data", "metrics", "viz"]),
    ("models", ["models"]),
    ("families", ["families"]),
    ("loop", ["train"]),
    ("commands", ["evaluate", "compare", "cli", "__main__"]),
]
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}


def _modules():
    for dirpath, _dirs, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
                yield rel, path


def _top(rel):
    """The layer key of a module path inside the package: its first path component (no .py)."""
    head = rel.split("/")[0]
    return head[:-3] if head.endswith(".py") else head


def _imports(path, rel):
    """Top-level minigen components that a module imports (absolute or relative, anywhere in the file)."""
    tree = ast.parse(open(path).read())
    package = ["minigen"] + rel.split("/")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                parts = base + (node.module.split(".") if node.module else [])
            else:
                parts = (node.module or "").split(".")
            if parts[0] != "minigen":
                continue
            if len(parts) == 1:      # from minigen import x, y  /  from . import x
                out.update(alias.name for alias in node.names)
            else:
                out.add(parts[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "minigen" and len(parts) > 1:
                    out.add(parts[1])
    return out


def test_every_module_has_a_layer():
    unknown = sorted({_top(rel) for rel, _ in _modules()} - set(RANK))
    assert not unknown, f"add these to LAYERS: {unknown}"


@pytest.mark.parametrize("rel, path", sorted(_modules()))
def test_no_module_imports_a_layer_above_its_own(rel, path):
    mine = RANK[_top(rel)]
    if rel == "__init__.py":
        return           # the package front door re-exports the engine only (checked below)
    above = sorted(name for name in _imports(path, rel) if name in RANK and RANK[name] > mine)
    assert not above, f"minigen/{rel} imports {above} from a layer above its own"


def test_models_never_import_the_run_wiring():
    for rel, path in _modules():
        if rel.startswith("models/"):
            bad = _imports(path, rel) & {"families", "train", "evaluate", "cli"}
            assert not bad, f"minigen/{rel} imports {sorted(bad)}"


def test_the_check_sees_a_bad_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ..train import train\nfrom minigen import evaluate\n")
    assert _imports(str(bad), "models/bad.py") == {"train", "evaluate"}


def test_package_init_imports_only_the_engine():
    # apart from the lazy ``minigen.load_run`` (a module __getattr__ that imports evaluate on first use)
    tree = ast.parse(open(os.path.join(ROOT, "__init__.py")).read())
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name if node.level else (node.module or "").split(".")[-1] for node in top
             for alias in node.names} | {node.module for node in top if isinstance(node, ast.ImportFrom) and node.module}
    assert not names & {"evaluate", "cli", "train", "families", "models"}, names

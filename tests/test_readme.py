"""Every code block of the README runs (or, for long commands, is checked as far as it can be
without hours of training).

* ``python`` blocks are executed as they are, from the repository root.
* ``bash`` blocks, line by line: ``minigen ...`` / ``python -m minigen ...`` go through the real
  command-line parser, with the long-running parts (training, evaluation, sampling, the zoo)
  replaced by recorders, so every family, option, value and preset is checked; ``python
  examples/X.py ARGS`` has its arguments parsed by the example's own parser; ``python -m
  benchmarks ARGS`` likewise; the install and test commands are what ``.ci/run`` runs.
"""
import argparse
import os
import re
import runpy
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _blocks(kind):
    text = open(README).read()
    return [m.group(1) for m in re.finditer(rf"```{kind}\n(.*?)```", text, flags=re.S)]


def _commands():
    """Each command line of the bash blocks (continuation lines joined, comments dropped)."""
    out = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def test_readme_has_code_blocks():
    assert len(_blocks("python")) >= 2 and len(_commands()) >= 10


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    code = _blocks("python")[index]
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"README python block {index}", "exec"), namespace)
    assert set(namespace) - {"__name__", "__builtins__"}, f"README python block {index} ran but defined nothing"


class _Parsed(Exception):
    pass


def _parse_only(monkeypatch):
    """Make every argparse parser stop right after a successful parse."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)


def _check_minigen(words, monkeypatch, tmp_path):
    import minigen.cli as cli
    import minigen.compare as compare
    import minigen.evaluate as evaluate
    import minigen.train as train_module

    calls = []
    monkeypatch.setattr(train_module, "train", lambda *a, **k: calls.append(("train", a, k)) or str(tmp_path))
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a, **k: calls.append(("eval", a, k)) or {})
    monkeypatch.setattr(evaluate, "sample_run", lambda *a, **k: calls.append(("sample", a, k)) or "x.png")
    monkeypatch.setattr(compare, "zoo", lambda *a, **k: calls.append(("zoo", a, k)) or "")
    # run directories named in the README exist only after training: point them at fixture runs
    fixtures = os.path.join(ROOT, "tests", "fixtures", "legacy_runs")
    runs = {"runs/ae2d": "autoencoder", "runs/cddpm": "cdit", "runs/ddpm": "ddpm", "runs/vae": "vae"}
    words = [os.path.join(fixtures, runs[w]) if w in runs else w for w in words]
    if words and words[0] in ("sample", "eval") and not os.path.isdir(words[1]):
        pytest.skip(f"no stand-in run for {words[1]}")
    if words[:1] == ["compare"]:
        words = ["compare", os.path.join(fixtures, "*")]
    if "--resume" in words:
        i = words.index("--resume")
        if not os.path.isdir(words[i + 1]):
            words[i + 1] = os.path.join(fixtures, "autoencoder")
    code = cli.main(words)
    assert code == 0, words


def _check_gpu_install(args):
    """``pip install -e ".[gpu]"`` / ``-e . cupy-cudaNNx``: the extra exists and names a binary wheel."""
    import configparser

    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    extras = config["options.extras_require"]
    for word in args:
        if word.startswith(".["):
            for extra in word[2:-1].split(","):
                assert extra in extras, f"setup.cfg has no extra {extra!r}"
                if extra == "gpu":
                    assert re.search(r"cupy-cuda\d+x", extras["gpu"]), extras["gpu"]
        elif word.startswith("cupy"):
            assert re.fullmatch(r"cupy-cuda\d+x", word), word
        else:
            assert word in ("-e", "."), word


def _run_snippet(code):
    """``python3 -c CODE``: run it here; on a machine without CuPy, with the device word 'gpu' -> 'cpu'."""
    from minigen import backend

    try:
        backend.get_array_module("gpu")
    except (RuntimeError, ValueError, ImportError):
        code = code.replace("'gpu'", "'cpu'")
    exec(compile(code, "<README python3 -c>", "exec"), {})


@pytest.mark.parametrize("line", _commands())
def test_bash_line(line, monkeypatch, tmp_path, capsys):
    words = shlex.split(line)
    if words[:4] == ["python3", "-m", "pip", "install"] and "&&" not in words and words[-1] != '.[test]':
        return _check_gpu_install(words[4:])
    if words[:2] == ["python3", "-c"]:
        return _run_snippet(words[2])
    if words[:3] in (["python3", "-m", "pip"], ["python3", "-m", "pytest"], ["python", "-m", "pytest"]):
        if words[:3] == ["python3", "-m", "pip"] and "&&" in words:      # install && the main job
            rest = words[words.index("&&") + 1:]
            return _check_minigen(rest[3:] if rest[:3] == ["python3", "-m", "minigen"] else rest[1:],
                                  monkeypatch, tmp_path)
        return                                                      # what .ci/run runs
    if words[0] == "minigen":
        return _check_minigen(words[1:], monkeypatch, tmp_path)
    if words[:3] in (["python", "-m", "minigen"], ["python3", "-m", "minigen"]):
        return _check_minigen(words[3:], monkeypatch, tmp_path)
    if words[0] in ("python", "python3") and words[1].startswith("examples/"):
        path = os.path.join(ROOT, words[1])
        assert os.path.exists(path), path
        _parse_only(monkeypatch)
        monkeypatch.setattr(sys, "argv", [path] + words[2:])
        with pytest.raises(_Parsed):
            runpy.run_path(path, run_name="__main__")
        return
    if words[:3] in (["python", "-m", "benchmarks"], ["python3", "-m", "benchmarks"]):
        monkeypatch.chdir(ROOT)
        monkeypatch.syspath_prepend(ROOT)
        _parse_only(monkeypatch)
        monkeypatch.setattr(sys, "argv", ["benchmarks"] + words[3:])
        with pytest.raises(_Parsed):
            runpy.run_module("benchmarks", run_name="__main__")
        return
    pytest.fail(f"the README runs a command this test does not know how to check: {line}")

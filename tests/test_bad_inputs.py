"""Bad input gets one clear line: the command line (through ``python -m minigen`` in a subprocess,
exit status 2, one line on stderr naming the problem, no traceback) and damaged run files.

Each case is a row of a table: what a careless or unlucky user does, and the words the one-line
answer must contain.  A shared tiny run directory (2 steps of the autoencoder) is the victim.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minigen.checkpoint import load_tree, save_tree
from minigen.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"hidden": 16, "latent_dim": 3, "steps": 2, "batch_size": 16, "log_every": 1, "checkpoint_every": 1,
        "sample_every": 0, "n_samples": 4, "eval_samples": 0}


def _cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "minigen", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _assert_one_clear_line(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train("autoencoder", dict(TINY), out_dir=str(tmp_path_factory.mktemp("bad") / "run"),
                 progress=False, verbose=False)


@pytest.fixture
def victim(run_dir, tmp_path):
    """A private copy of the tiny run, free to damage."""
    copy = str(tmp_path / "victim")
    shutil.copytree(run_dir, copy)
    return copy


CLI_CASES = [
    (["train"], ["needs a FAMILY"]),
    (["train", "autoencodr"], ["unknown family 'autoencodr'", "did you mean 'autoencoder'"]),
    (["train", "autoencoder", "--colour", "red"], ["unrecognized arguments: --colour"]),
    (["train", "autoencoder", "--steps", "abc"], ["--steps", "invalid int value"]),
    (["train", "autoencoder", "--steps", "0"], ["steps must be positive"]),
    (["train", "autoencoder", "--seed", "-1"], ["seed must be >= 0"]),
    (["train", "autoencoder", "--batch-size", "100000"], ["batch_size 100000 is larger than the training set"]),
    (["train", "autoencoder", "--arch", "rnn"], ["arch must be mlp, conv or linear"]),
    (["train", "autoencoder", "--lr", "-1"], ["lr must be a positive number"]),
    (["train", "autoencoder", "--budget-clock", "sun"], ["budget_clock must be wall or cpu"]),
    (["train", "ddpm", "--preset", "tpu"], ["unknown preset 'tpu'"]),
    (["train", "autoencoder", "--dataset", "cifar"], ["cifar"]),
    (["sample", "{run}", "--n", "0"], ["--n", "must be >= 1"]),
    (["sample", "{run}", "--n", "-3"], ["--n", "must be >= 1"]),
    (["sample", "{run}", "--seed", "-1"], ["--seed", "must be >= 0"]),
    (["eval", "{run}", "--eval-samples", "-5"], ["--eval-samples", "must be >= 0"]),
    (["eval", "{run}", "--set", "latent_dim"], ["--set expects FIELD=VALUE"]),
    (["eval", "{run}", "--set", "eval_samples=many"], ["--set eval_samples"]),
    (["sample", "{missing}"], ["not a run directory (no config.json)"]),
    (["train", "--resume", "{missing}"], ["not a run directory"]),
    (["train", "--resume", "{run}", "--steps", "1"], ["below the checkpoint's step 2"]),
    (["train", "--resume", "{run}", "--latent-dim", "5"], ["only steps", "latent_dim"]),
    (["train", "vae", "--resume", "{run}"], ["is a 'autoencoder' run", "cannot be resumed as 'vae'"]),
    (["train", "autoencoder", "--out", "{run}"], ["not empty", "--resume", "--overwrite"]),
    (["train", "autoencoder", "--out", "{file}"], ["exists and is not a directory"]),
    (["train", "--resume", "{run}", "--overwrite"], ["choose one"]),
]


@pytest.mark.parametrize("args, words", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_bad_input_gets_one_clear_line(args, words, victim, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    subs = {"{run}": victim, "{missing}": str(tmp_path / "nowhere"), "{file}": str(a_file)}
    code, _out, err = _cli(*[subs.get(a, a) for a in args])
    _assert_one_clear_line(code, err, *words)


def _edit_config(run, change):
    path = os.path.join(run, "config.json")
    with open(path) as f:
        saved = json.load(f)
    change(saved)
    with open(path, "w") as f:
        json.dump(saved, f)


CONFIG_CASES = [
    ("steps", "abc", "steps must be an integer"), ("lr", "0.001", "lr must be a number"),
    ("batch_size", 3.5, "batch_size must be an integer"), ("seed", 1.5, "seed must be an integer"),
    ("steps", None, "steps must be an integer"), ("latent_dim", [3], "latent_dim must be an integer"),
    ("arch", 7, "arch must be a string"), ("log_every", True, "log_every must be an integer"),
]


@pytest.mark.parametrize("field, value, words", CONFIG_CASES, ids=[f"{f}={v!r}" for f, v, _ in CONFIG_CASES])
def test_config_json_with_wrong_types(field, value, words, victim):
    _edit_config(victim, lambda saved: saved["config"].__setitem__(field, value))
    code, _out, err = _cli("sample", victim, "--n", "4")
    _assert_one_clear_line(code, err, "config.json", words)


def test_config_json_that_is_a_list_or_not_json(victim):
    with open(os.path.join(victim, "config.json"), "w") as f:
        f.write("[1, 2, 3]")
    _assert_one_clear_line(*_cli("sample", victim)[::2], "expected an object")
    with open(os.path.join(victim, "config.json"), "w") as f:
        f.write("{not json")
    _assert_one_clear_line(*_cli("sample", victim)[::2], "config.json: unreadable")


def _damage(run, change):
    path = os.path.join(run, "checkpoint.npz")
    state = load_tree(path)
    change(state)
    save_tree(path, state)


CHECKPOINT_CASES = [
    ("wrong-shape weight", lambda s: s["recipe"]["modules"]["model"].__setitem__(
        "encoder.1.weight", np.zeros((2, 2), np.float32)), "encoder.1.weight"),
    ("missing recipe", lambda s: s.pop("recipe"), "recipe"),
    ("non-numeric step", lambda s: s.__setitem__("step", "five"), "step"),
    ("garbage generator state", lambda s: s.__setitem__("model_generator", {"x": 1}), "damaged"),
    ("wrong-shape moment", lambda s: s["recipe"]["optimizers"]["model"]["state"]["0"].__setitem__(
        "exp_avg", np.zeros(3, np.float32)), "damaged"),
]


@pytest.mark.parametrize("what, change, word", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_damaged_checkpoint_on_resume(what, change, word, victim):
    _damage(victim, change)
    code, _out, err = _cli("train", "--resume", victim, "--steps", "3")
    _assert_one_clear_line(code, err, "checkpoint.npz", word)


def test_random_bytes_and_npy_checkpoints(victim):
    path = os.path.join(victim, "checkpoint.npz")
    with open(path, "wb") as f:
        f.write(os.urandom(300))
    code, _out, err = _cli("sample", victim)
    _assert_one_clear_line(code, err, "not a readable minigen checkpoint")
    assert "allow_pickle" not in err
    np.save(path + ".npy", np.zeros(3))
    os.replace(path + ".npy", path)
    _assert_one_clear_line(*_cli("train", "--resume", victim, "--steps", "3")[::2], "checkpoint")


def test_nan_checkpoint_is_refused_by_sample_and_eval(victim):
    _damage(victim, lambda s: s["recipe"]["modules"]["model"]["encoder.1.weight"].fill(np.nan))
    for args in (["sample", victim], ["eval", victim]):
        _assert_one_clear_line(*_cli(*args)[::2], "NaN or inf")


def test_checkpoint_of_another_run_is_refused(victim, tmp_path):
    other = train("autoencoder", {**TINY, "seed": 5}, out_dir=str(tmp_path / "other"), progress=False, verbose=False)
    shutil.copy(os.path.join(other, "checkpoint.npz"), os.path.join(victim, "checkpoint.npz"))
    _assert_one_clear_line(*_cli("train", "--resume", victim, "--steps", "3")[::2], "belongs to another run")


def test_run_killed_before_its_first_checkpoint_says_how_to_start_again(victim):
    os.unlink(os.path.join(victim, "checkpoint.npz"))
    _assert_one_clear_line(*_cli("train", "--resume", victim)[::2], "no checkpoint yet", "--overwrite")


def test_damaged_last_metrics_line_does_not_block_resume(victim):
    with open(os.path.join(victim, "metrics.jsonl"), "a") as f:
        f.write('{"step": 3, "lo')                  # a crash in the middle of a write
    train(None, {"steps": 3}, resume=victim, progress=False, verbose=False)
    with open(os.path.join(victim, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]      # every line is JSON again
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_outputs_are_never_written_through_symlinks(victim, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    for name in ("samples.png", "curves.png", "metrics.jsonl"):
        path = os.path.join(victim, name)
        os.unlink(path)
        os.symlink(target, path)
    train(None, {"steps": 3}, resume=victim, progress=False, verbose=False)
    assert target.read_text() == "keep me"
    for name in ("samples.png", "curves.png", "metrics.jsonl"):
        assert not os.path.islink(os.path.join(victim, name)) and os.path.getsize(os.path.join(victim, name)) > 0


def test_stray_temp_files_are_cleaned_on_resume(victim):
    stray = os.path.join(victim, "checkpoint.npz.abcd1234.tmp")
    with open(stray, "wb") as f:
        f.write(b"x" * 1000)
    train(None, {"steps": 3}, resume=victim, progress=False, verbose=False)
    assert not os.path.exists(stray)


def test_read_only_out_directory_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o500)
    try:
        _assert_one_clear_line(*_cli("train", "autoencoder", "--steps", "1", "--out", str(parent / "run"))[::2],
                               str(parent))
    finally:
        os.chmod(parent, 0o700)


def test_no_nan_in_json_files(victim):
    from minigen.checkpoint import to_json

    assert to_json({"a": float("nan"), "b": [float("inf"), 1.0]}) == '{"a": null, "b": [null, 1.0]}'


def test_every_run_file_has_the_same_permissions(run_dir):
    modes = {name: os.stat(os.path.join(run_dir, name)).st_mode & 0o777 for name in os.listdir(run_dir)}
    assert len(set(modes.values())) == 1, modes


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_checkpoint(victim, monkeypatch):
    import errno

    import minigen.train as train_module

    before = open(os.path.join(victim, "checkpoint.npz"), "rb").read()

    def disk_full(path, tree):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(train_module, "save_tree", disk_full)
    from minigen.train import TrainingError

    with pytest.raises(TrainingError, match=r"checkpoint.npz: No space left on device; the last checkpoint"):
        train(None, {"steps": 4}, resume=victim, progress=False, verbose=False)
    assert open(os.path.join(victim, "checkpoint.npz"), "rb").read() == before


def test_unwritable_out_directory_is_one_line(tmp_path, monkeypatch):
    import errno

    import minigen.train as train_module
    from minigen.train import TrainingError

    def refuse(path, exist_ok=False):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(train_module.os, "makedirs", refuse)
    with pytest.raises(TrainingError, match=r"ro/run: Permission denied"):
        train("autoencoder", dict(TINY), out_dir=str(tmp_path / "ro" / "run"), progress=False, verbose=False)

"""The training loop and CLI: run files, exact resume, Ctrl-C, non-finite losses, error paths."""
import json
import os
import signal

import numpy as np
import pytest

from minigen import backend
from minigen.checkpoint import load_tree
from minigen.cli import main
from minigen.train import NonFiniteLossError, TrainingError, families, train

TINY = {"arch": "mlp", "hidden": 16, "latent_dim": 3, "steps": 6, "batch_size": 16, "log_every": 1,
        "checkpoint_every": 2, "sample_every": 0, "n_samples": 4, "eval_samples": 0}


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_autoencoder_is_registered():
    assert "autoencoder" in families()


def test_run_writes_its_files(tmp_path):
    run = train("autoencoder", dict(TINY), out_dir=str(tmp_path / "run"), progress=False, verbose=False)
    for name in ["config.json", "metrics.jsonl", "checkpoint.npz", "samples.png", "curves.png"]:
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    assert [s for s, _ in _losses(run)] == list(range(1, 7))
    assert load_tree(os.path.join(run, "checkpoint.npz"))["step"] == 6


def test_resume_after_ctrl_c_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    full = train("autoencoder", dict(TINY), out_dir=str(tmp_path / "full"), progress=False, verbose=False)

    from minigen.families.autoencoder import AutoencoderRecipe
    real_step = AutoencoderRecipe.train_step
    calls = {"n": 0}

    def interrupted_step(self, x, y):
        calls["n"] += 1
        if calls["n"] == 4:  # a real Ctrl-C (SIGINT) arrives during step 4
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, x, y)

    monkeypatch.setattr(AutoencoderRecipe, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train("autoencoder", dict(TINY), out_dir=str(tmp_path / "cut"), progress=False, verbose=False)
    monkeypatch.setattr(AutoencoderRecipe, "train_step", real_step)
    # the loop finished step 4, saved, then stopped
    assert load_tree(os.path.join(tmp_path / "cut", "checkpoint.npz"))["step"] == 4

    train(None, resume=str(tmp_path / "cut"), progress=False, verbose=False)
    a, b = _losses(full), _losses(str(tmp_path / "cut"))
    assert [s for s, _ in b] == list(range(1, 7))
    np.testing.assert_array_equal([l for _, l in a], [l for _, l in b])  # bit-for-bit the same losses


def test_resume_with_more_steps_extends_the_run_and_records_it(tmp_path):
    run = train("autoencoder", dict(TINY), out_dir=str(tmp_path / "run"), progress=False, verbose=False)
    train(None, {"steps": 8}, resume=run, progress=False, verbose=False)
    assert [s for s, _ in _losses(run)] == list(range(1, 9))
    assert load_tree(os.path.join(run, "checkpoint.npz"))["step"] == 8
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["config"]["steps"] == 8   # a later eval/resume sees the run's real length
    with pytest.raises(TrainingError, match="only steps, max_minutes, .* may change .got latent_dim"):
        train(None, {"latent_dim": 5}, resume=run, progress=False, verbose=False)
    with pytest.raises(TrainingError, match="--steps 3 is below the checkpoint's step 8"):
        train(None, {"steps": 3}, resume=run, progress=False, verbose=False)


def test_resume_may_lower_the_learning_rate(tmp_path):
    run = train("autoencoder", dict(TINY), out_dir=str(tmp_path / "run"), progress=False, verbose=False)
    train(None, {"steps": 7, "lr": 1e-4}, resume=run, progress=False, verbose=False)
    state = load_tree(os.path.join(run, "checkpoint.npz"))
    assert state["recipe"]["optimizers"]["model"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["config"]["lr"] == 1e-4


def test_interrupt_inside_a_step_saves_nothing_and_resume_repeats_exactly(tmp_path, monkeypatch):
    # A KeyboardInterrupt raised inside a step (a second Ctrl-C) may leave weights or moments half
    # updated: nothing is saved, the checkpoint of step 2 stands, and a resume redoes steps 3-4.
    full = train("autoencoder", dict(TINY), out_dir=str(tmp_path / "full"), progress=False, verbose=False)
    from minigen.families.autoencoder import AutoencoderRecipe
    real_step = AutoencoderRecipe.train_step
    calls = {"n": 0}

    def raising(self, x, y):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(self, x, y)

    monkeypatch.setattr(AutoencoderRecipe, "train_step", raising)
    with pytest.raises(KeyboardInterrupt):
        train("autoencoder", dict(TINY), out_dir=str(tmp_path / "cut"), progress=False, verbose=False)
    monkeypatch.setattr(AutoencoderRecipe, "train_step", real_step)
    assert load_tree(os.path.join(tmp_path / "cut", "checkpoint.npz"))["step"] == 2
    train(None, resume=str(tmp_path / "cut"), progress=False, verbose=False)
    np.testing.assert_array_equal([l for _, l in _losses(full)], [l for _, l in _losses(str(tmp_path / "cut"))])


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from minigen.families.autoencoder import AutoencoderRecipe
    real_step = AutoencoderRecipe.train_step
    calls = {"n": 0}

    def exploding(self, x, y):
        calls["n"] += 1
        out = real_step(self, x, y)
        return {"loss": float("nan")} if calls["n"] == 5 else out

    monkeypatch.setattr(AutoencoderRecipe, "train_step", exploding)
    run = str(tmp_path / "nan")
    with pytest.raises(NonFiniteLossError, match=r"step 5: loss is nan.*checkpoint.npz \(step 4\)"):
        train("autoencoder", dict(TINY), out_dir=run, progress=False, verbose=False)
    assert load_tree(os.path.join(run, "checkpoint.npz"))["step"] == 4
    assert [s for s, _ in _losses(run)] == [1, 2, 3, 4]


def test_bad_configs_are_refused():
    with pytest.raises(TrainingError, match="unknown family 'nope'"):
        train("nope", {}, progress=False)
    with pytest.raises(TrainingError, match="unknown option.*colour"):
        train("autoencoder", {"colour": 3}, progress=False)
    with pytest.raises(TrainingError, match="batch_size must be positive"):
        train("autoencoder", {"batch_size": 0}, progress=False)
    with pytest.raises(TrainingError, match="arch must be"):
        train("autoencoder", {"arch": "transformer"}, progress=False)
    with pytest.raises(TrainingError, match="unknown device 'tpu'"):
        train("autoencoder", {"device": "tpu"}, progress=False)


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is here")
def test_gpu_device_without_cupy_is_a_config_error(tmp_path):
    # refused while the config is checked, before a run directory or data exist
    with pytest.raises(TrainingError, match="config: device 'gpu' needs CuPy"):
        train("autoencoder", {"device": "gpu"}, out_dir=str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def _cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_error_paths_exit_2_with_one_line(capsys, tmp_path):
    code, _, err = _cli(capsys, "train", "nope")
    assert code == 2 and "unknown family 'nope'" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["train", "autoencoder", "--colour", "red"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --colour" in capsys.readouterr().err
    code, _, err = _cli(capsys, "train", "autoencoder", "--batch-size", "0", "--out", str(tmp_path / "x"))
    assert code == 2 and "batch_size must be positive" in err
    code, _, err = _cli(capsys, "eval", str(tmp_path / "missing"))
    assert code == 2 and "not a run directory" in err


def test_cli_unreadable_checkpoint(capsys, tmp_path):
    run = train("autoencoder", dict(TINY), out_dir=str(tmp_path / "run"), progress=False, verbose=False)
    with open(os.path.join(run, "checkpoint.npz"), "wb") as f:
        f.write(b"garbage")
    code, _, err = _cli(capsys, "sample", run)
    assert code == 2 and "checkpoint.npz: not a readable minigen checkpoint" in err and "allow_pickle" not in err


def test_cli_train_list_and_sample(capsys, tmp_path):
    run = str(tmp_path / "cli")
    code, out, _ = _cli(capsys, "train", "autoencoder", "--steps", "3", "--batch-size", "8", "--hidden", "8",
                        "--eval-samples", "0", "--sample-every", "0", "--no-progress", "--out", run)
    assert code == 0 and "test_recon_loss" in out
    assert json.load(open(os.path.join(run, "config.json")))["config"]["hidden"] == 8
    code, out, _ = _cli(capsys, "list")
    assert code == 0 and "autoencoder" in out
    code, out, _ = _cli(capsys, "sample", run, "--n", "9")
    assert code == 0 and os.path.exists(os.path.join(run, "samples_cli.png"))


def test_cli_eval_set_overrides_for_one_evaluation(capsys, tmp_path):
    run = train("autoencoder", dict(TINY), out_dir=str(tmp_path / "run"), progress=False, verbose=False)
    code, out, _ = _cli(capsys, "eval", run, "--set", "eval_samples=0", "--set", "batch_size=4")
    assert code == 0 and "test_recon_loss" in out
    assert json.load(open(os.path.join(run, "config.json")))["config"]["batch_size"] == 16  # saved config kept
    code, _, err = _cli(capsys, "eval", run, "--set", "colour=red")
    assert code == 2 and "--set expects FIELD=VALUE" in err
    code, _, err = _cli(capsys, "eval", run, "--set", "eval_samples=many")
    assert code == 2 and "expected a int" in err
    code, _, err = _cli(capsys, "eval", run, "--set", "hidden=32")    # another network: refused, one line
    assert code == 2 and "does not fit the run's config (an override changed the network?)" in err and "Traceback" not in err


def test_time_budget_stops_the_run_and_it_resumes_exactly(tmp_path):
    full = train("autoencoder", dict(TINY), out_dir=str(tmp_path / "full"), progress=False, verbose=False)
    # a budget far below one step: the run stops after its first step, checkpointed, as at a normal end
    cut = train("autoencoder", {**TINY, "max_minutes": 1e-9, "budget_clock": "cpu"}, out_dir=str(tmp_path / "cut"),
                progress=False, verbose=False)
    assert load_tree(os.path.join(cut, "checkpoint.npz"))["step"] == 1
    assert os.path.getsize(os.path.join(cut, "samples.png")) > 0
    rows = [json.loads(line) for line in open(os.path.join(cut, "metrics.jsonl"))]
    assert rows[-1]["step"] == 1 and rows[-1]["train_cpu_seconds"] > 0 and rows[-1]["train_seconds"] > 0
    train(None, {"max_minutes": 0.0}, resume=cut, progress=False, verbose=False)   # lift the budget
    np.testing.assert_array_equal([l for _, l in _losses(full)], [l for _, l in _losses(cut)])
    with pytest.raises(TrainingError, match="budget_clock must be wall or cpu"):
        train("autoencoder", {**TINY, "budget_clock": "gpu"}, out_dir=str(tmp_path / "bad"), progress=False,
              verbose=False)


def test_train_takes_a_recipe_class_and_resume_keeps_the_family(tmp_path):
    from minigen.families.autoencoder import AutoencoderRecipe

    run = train(AutoencoderRecipe, {**TINY, "steps": 2}, out_dir=str(tmp_path / "run"), progress=False, verbose=False)
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["family"] == "autoencoder"
    with pytest.raises(TrainingError, match="is a 'autoencoder' run; it cannot be resumed as 'vae'"):
        train("vae", resume=run, progress=False, verbose=False)
    with pytest.raises(TrainingError, match="did you mean 'autoencoder'"):
        train("autoencodr", {}, out_dir=str(tmp_path / "x"), progress=False, verbose=False)


def test_sigterm_saves_like_ctrl_c(tmp_path, monkeypatch):
    from minigen.families.autoencoder import AutoencoderRecipe

    real_step = AutoencoderRecipe.train_step
    calls = {"n": 0}

    def terminated_step(self, x, y):
        calls["n"] += 1
        if calls["n"] == 3:  # what `timeout`, job schedulers and container runtimes send
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, x, y)

    handler_before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(AutoencoderRecipe, "train_step", terminated_step)
    with pytest.raises(KeyboardInterrupt):
        train("autoencoder", dict(TINY), out_dir=str(tmp_path / "cut"), progress=False, verbose=False)
    assert load_tree(os.path.join(tmp_path / "cut", "checkpoint.npz"))["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == handler_before        # the loop gave the signal back


def test_progress_bar_and_curves_name_the_gan_losses():
    from minigen.train import shown_keys
    gan_row = {"step": 10, "loss_d": 0.5, "d_real": 0.7, "loss_g": 1.2, "loss": 0.5, "train_seconds": 1.0,
               "train_cpu_seconds": 0.9}
    assert shown_keys(gan_row) == ["loss_d", "d_real", "loss_g"]     # no bare "loss" beside the named ones
    vae_row = {"step": 10, "loss": 97.0, "kl": 22.0, "train_seconds": 1.0}
    assert shown_keys(vae_row) == ["loss", "kl"]

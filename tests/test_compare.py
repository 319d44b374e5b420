"""``minigen compare`` on hand-made run directories: units, blanks, flags, seed aggregation, damage."""
import json
import os

import numpy as np
import pytest

from minigen.cli import main
from minigen.compare import compare_runs, markdown_table, read_run


def _run(tmp_path, name, family, seed=0, results=None, eval_text=None, config=None):
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": family, "config": {"seed": seed, "lr": 0.001,
                                                                              **(config or {})}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 100, "loss": 1.0, "train_seconds": 50.0}) + "\n")
    if eval_text is not None:
        (run / "eval.json").write_text(eval_text)
    elif results is not None:
        (run / "eval.json").write_text(json.dumps({"step": 100, "train_seconds": 50.0, **results}))
    return str(run)


SAMPLES = {"fld": 30.0, "fld_floor": 9.9, "kid": 12.0, "precision": 0.7, "recall": 0.8, "n_samples": 1000}


def test_units_and_blanks(tmp_path):
    vae = _run(tmp_path, "vae", "vae", results={"test_nll": 99.5, **SAMPLES})
    ddpm = _run(tmp_path, "ddpm", "ddpm", results={"test_bpd": 2.08, **SAMPLES})
    gan = _run(tmp_path, "gan", "dcgan", results=dict(SAMPLES))
    table = markdown_table(compare_runs([vae, ddpm, gan]))
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert "99.500 nats" in lines["vae"] and "2.080 bits/dim" in lines["ddpm"]
    cells = [c.strip() for c in lines["dcgan"].split("|")]
    assert cells[8] == ""                               # a GAN has no likelihood: blank, not 0 or nan
    assert "30.0 (9.9)" in lines["dcgan"] and "0.70 / 0.80" in lines["dcgan"]
    assert "| 0.500 |" in lines["vae"]                  # 50 s / 100 steps
    assert "*" not in table                             # same sample count and floor everywhere
    assert cells[5] == ""                               # no CPU time recorded: blank
    timed = _run(tmp_path, "timed", "vae", results={"test_nll": 99.5, "train_cpu_seconds": 41.0, **SAMPLES})
    row = markdown_table(compare_runs([timed])).splitlines()[2]
    assert [c.strip() for c in row.split("|")][4:6] == ["50", "41"]   # wall and CPU seconds of training


def test_mismatched_sample_counts_are_flagged(tmp_path):
    a = _run(tmp_path, "a", "dcgan", results=dict(SAMPLES))
    b = _run(tmp_path, "b", "dcgan", config={"lr": 0.002}, results={**SAMPLES, "n_samples": 200, "fld_floor": 36.8})
    c = _run(tmp_path, "c", "gan", results=dict(SAMPLES))
    table = markdown_table(compare_runs([a, b, c]))
    flagged = [line for line in table.splitlines() if "36.8) *" in line]
    assert len(flagged) == 1 and "200 samples" not in flagged[0]
    assert "another sample count or floor than the other rows (1000 samples, FLD floor 9.9)" in table


def test_seeds_are_aggregated_as_mean_and_std(tmp_path):
    flds = [30.0, 34.0, 41.0]
    runs = [_run(tmp_path, f"s{i}", "dcgan", seed=i, results={**SAMPLES, "fld": f}) for i, f in enumerate(flds)]
    rows = compare_runs(runs)
    assert len(rows) == 1 and rows[0]["seeds"] == 3
    mean, std, count = rows[0]["fld"]
    assert count == 3 and mean == pytest.approx(np.mean(flds)) and std == pytest.approx(np.std(flds, ddof=1))
    assert "35.0 ± 5.6 (n=3)" in markdown_table(rows) and "dcgan (3 seeds)" in markdown_table(rows)


def test_missing_or_damaged_eval_json_is_a_note(tmp_path):
    missing = _run(tmp_path, "missing", "vae")
    damaged = _run(tmp_path, "damaged", "vae", eval_text="{not json")
    assert read_run(missing)["note"] == "no eval.json" and read_run(damaged)["note"] == "damaged eval.json"
    table = markdown_table(compare_runs([missing, damaged]))
    assert "no eval.json" in table and "damaged eval.json" in table


def test_cli_compare_with_a_glob(tmp_path, capsys):
    _run(tmp_path, "r1", "vae", results={"test_nll": 99.5, **SAMPLES})
    _run(tmp_path, "r2", "ddpm", results={"test_bpd": 2.1, **SAMPLES})
    assert main(["compare", str(tmp_path / "r*")]) == 0
    out = capsys.readouterr().out
    assert "| vae |" in out and "| ddpm |" in out
    assert main(["compare", str(tmp_path / "nothing-here")]) == 2


def test_tiny_zoo_trains_evaluates_and_writes_every_output(tmp_path, reference_cache):
    from minigen.compare import zoo

    extra = {"autoencoder": {"hidden": 16, "latent_dim": 3, "batch_size": 16},
             "vae": {"hidden": 16, "latent_dim": 3, "batch_size": 16, "eval_images": 20, "eval_k": 4}}
    out = str(tmp_path / "zoo")
    table = zoo(["autoencoder", "vae"], minutes=0.004, out_dir=out, eval_samples=20, budget_clock="cpu",
                extra=extra, progress=False)
    for name in ("compare.md", "compare.csv", "mosaic.png", "quality_vs_cost.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert "| autoencoder |" in table and "| vae |" in table and " nats" in table
    for family in ("autoencoder", "vae"):
        with open(os.path.join(out, f"{family}-seed0", "eval.json")) as f:
            results = json.load(f)
        assert results["n_samples"] == 20 and results["train_cpu_seconds"] >= 0.004 * 60
        assert results["machine"]["cores"] >= 1


def test_zoo_command_line_sets_an_option_for_every_family_that_has_it(tmp_path, reference_cache, capsys):
    from minigen.cli import main

    out = str(tmp_path / "zoo")
    sets = ["hidden=16", "latent_dim=3", "batch_size=16", "eval_images=10", "eval_k=2"]
    argv = ["zoo", "--minutes", "0.004", "--out", out, "--families", "vae", "--eval-samples", "10",
            "--budget-clock", "cpu", "--no-progress"] + [w for s in sets for w in ("--set", s)]
    assert main(argv) == 0
    with open(os.path.join(out, "vae-seed0", "config.json")) as f:
        config = json.load(f)["config"]
    assert config["hidden"] == 16 and config["latent_dim"] == 3 and config["eval_images"] == 10
    capsys.readouterr()
    assert main(["zoo", "--minutes", "1", "--out", out, "--families", "vae", "--set", "no_such=1"]) == 2
    assert "no chosen family has an option 'no_such'" in capsys.readouterr().err
    assert main(["zoo", "--minutes", "1", "--out", out, "--families", "vae", "--set", "hidden"]) == 2
    assert "--set takes KEY=VALUE" in capsys.readouterr().err

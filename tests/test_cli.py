"""The command line as a user meets it: help, version, listing, option descriptions."""
import os
import subprocess
import sys

from minigen.cli import main
from minigen.families import FAMILIES
from minigen.families.base import field_help

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_help_prints_help_not_an_error(capsys):
    for args in (["train", "--help"], ["train", "-h"]):
        code, out, _ = _run(capsys, *args)
        assert code == 0 and "usage: minigen train FAMILY" in out


def test_family_help_describes_every_option_it_uses(capsys):
    try:
        main(["train", "ddpm", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = " ".join(capsys.readouterr().out.split())       # argparse wraps lines
    assert "--base-channels" in out and "UNet: channels at full resolution" in out
    assert "--channel-mults" in out and "(default 1 2 2)" in out          # a tuple as the command line takes it
    assert "--patch-size" not in out and "--guidance-scale" not in out   # DiT and label options: not ddpm's


def test_list_shows_each_family_only_its_options(capsys):
    code, out, _ = _run(capsys, "list", "-v")
    assert code == 0
    blocks = {}
    for line in out.splitlines():
        if not line.startswith(" "):
            name = line.split()[0]
            blocks[name] = []
        else:
            blocks[name].append(line)
    assert set(blocks) == set(FAMILIES)
    dit, cddpm = "\n".join(blocks["dit"]), "\n".join(blocks["cddpm"])
    assert "--patch-size" in dit and "--base-channels" not in dit and "--label-dropout" not in dit
    assert "--base-channels" in cddpm and "--label-dropout" in cddpm and "--patch-size" not in cddpm


def test_every_config_field_has_a_description():
    for name, recipe in FAMILIES.items():
        helps = field_help(recipe.Config)
        missing = [f for f in recipe.Config.__dataclass_fields__ if not helps.get(f)]
        assert not missing, f"{name}: no comment for {missing}"


def test_version_and_broken_pipe():
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "minigen", "--version"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.startswith("minigen ")
    proc = subprocess.run(f"{sys.executable} -m minigen list -v | head -1", shell=True, capture_output=True,
                          text=True, env=env)
    assert proc.stdout.strip() and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr

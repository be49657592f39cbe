"""Figures in the style of both papers: mean objective vs iteration, log y-axis (matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def plot_curves(
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    ylabel: str = "mean objective f(θ_t)",
    highlight: Sequence[str] = (),
) -> Path:
    """Write a PNG with one line per curve (``[T+1]`` values) and optional ``(low, high)`` bands.

    Curves named in ``highlight`` (e.g. the learned optimizers) are drawn thick and solid, the others thin and
    dashed, so a plot with many baselines stays readable. A curve named ``"NAME:TAG"`` (e.g. ``"adam:oracle"``)
    is drawn dotted in the colour of ``NAME``'s curve when that one is drawn before it.

    Returns the written path. Uses the Agg canvas directly, so no display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    positive = True
    colours: dict[str, str] = {}
    for name, ys in curves.items():
        y = np.asarray(ys, dtype=np.float64)
        x = np.arange(y.size)
        strong = not highlight or name in highlight
        base, tagged, _ = name.partition(":")
        style = {"color": colours[base]} if tagged and base in colours else {}
        (line,) = ax.plot(x, y, label=name, lw=2.2 if strong else 1.1, ls=":" if tagged else "-" if strong else "--",
                          **style)
        colours.setdefault(name, line.get_color())
        if bands and name in bands:
            lo, hi = (np.asarray(b, dtype=np.float64) for b in bands[name])
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2 if strong else 0.07, lw=0)
            positive &= bool(np.all(lo > 0))
        positive &= bool(np.all(y > 0))
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("iteration t")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_image_grid(
    images: Sequence[Sequence[np.ndarray]],
    path: str | Path,
    col_titles: Sequence[str],
    cell_titles: Sequence[Sequence[str]] | None = None,
    title: str = "",
    cell_inches: float = 1.6,
) -> Path:
    """Write a PNG grid of RGB images: ``images[r][c]`` is ``[H, W, 3]`` in [0, 1] (rows may differ in size).

    ``col_titles`` head the columns; ``cell_titles[r][c]`` (e.g. a final objective) is written under a cell.
    Returns the written path (Agg canvas, no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = len(images), len(col_titles)
    if rows == 0 or any(len(r) != cols for r in images):
        raise ValueError(f"images must be a non-empty list of rows of {cols} images each")
    fig = Figure(figsize=(cell_inches * cols, (cell_inches + 0.2) * rows + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    for r, row in enumerate(images):
        for c, img in enumerate(row):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.imshow(np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=8)
            if cell_titles is not None and cell_titles[r][c]:
                ax.set_xlabel(cell_titles[r][c], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path

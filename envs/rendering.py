"""Render helpers: a text status line and an RGB image of the loss curve (matplotlib Agg, no display)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def render_ansi(losses: Sequence[float], title: str) -> str:
    """One text line: iteration, current and best objective."""
    if not losses:
        return f"{title}: not reset\n"
    return f"{title}  t={len(losses) - 1:5d}  f={losses[-1]:.6g}  best={min(losses):.6g}\n"


def render_rgb(losses: Sequence[float], title: str, size: tuple[int, int] = (480, 360)) -> np.ndarray:
    """The objective curve (log y-axis) as an ``[H, W, 3]`` uint8 image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.asarray(losses, dtype=np.float64)
    if y.size:
        ax.plot(np.arange(y.size), y, color="tab:blue")
        if np.all(y > 0):
            ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective f(θ)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()

"""Pictures of the neural-art runs (Andrychowicz et al. §3.4): what each optimizer makes of an image in T steps.

    path, lines = art_pictures(section, cfg, out)      # a study/compare Section on l2o/NeuralArt-v0

For the first ``n_images`` held-out ``test`` problems of a section — the same problems that open the
section's evaluation, same seed — every policy of the section (tuned baselines and learned optimizers) runs
``T`` steps from the same start; the PNG grid shows per row the content image, the style image, the start
``x₀`` and each optimizer's image after ``T`` steps (pixels clipped to [0, 1] for display), with its final
objective underneath. ``lines`` are the report's Markdown for it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from l2o_gym import core
from l2o_gym.experiments.compare import CompareConfig, Section, fmt_number, plan
from l2o_gym.experiments.evaluation import evaluation_config
from l2o_gym.plotting import plot_image_grid
from l2o_gym.policy import rollout
from l2o_gym.problems.neural_art import NeuralArt
from l2o_gym.registry import env_family

log = logging.getLogger(__name__)


def is_art_section(section: Section, cfg: CompareConfig | None = None) -> bool:
    """Whether ``section`` runs the neural-art family."""
    from l2o_gym.registry import ENV_TABLE

    return ENV_TABLE.get(section.env, {}).get("family") == "neural_art"


def art_pictures(section: Section, cfg: CompareConfig, out: str | Path, n_images: int = 3) -> tuple[Path, list[str]]:
    """Run every policy of ``section`` on its first ``n_images`` test problems for ``section.horizon`` steps
    and write the grid ``out/art_<stem>_T<T>.png``; returns its path and Markdown lines for the report.

    Raises:
        ValueError: if the section is not a neural-art env or ``n_images < 1``.
    """
    if not is_art_section(section, cfg):
        raise ValueError(f"{section.env} is not a neural-art env")
    if n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    sub = dataclasses.replace(cfg, sections=[dataclasses.replace(section, long_horizon=None)], out=str(out))
    jobs = [j for j in plan(sub) if j.horizon == section.horizon]
    family = env_family(section.env, **jobs[0].family_kwargs)
    assert isinstance(family, NeuralArt)
    # the section's own problems, then its first n_images (a sample of n_images would be other problems: instance i
    # of a sample depends on its size)
    problems = family.sample(max(n_images, jobs[0].n_problems), "test", cfg.seed, cfg.device).index(slice(0, n_images))
    s = family.size

    def show(flat: torch.Tensor) -> list:
        return [im.cpu().numpy() for im in family.images(flat)]

    content = show(problems.data["content"])
    style = family.images(family.style_image().reshape(1, -1))[0].cpu().numpy()
    columns = [content, [style] * n_images, show(problems.x0)]
    titles = ["content", f"style ({family.style})", "start x₀"]
    f0 = problems.loss(problems.x0).detach().cpu().tolist()
    notes = [["", "", f"f = {fmt_number(v)}"] for v in f0]
    finals: dict[str, float] = {}
    for job in jobs:
        with torch.no_grad():
            state = core.reset(problems, evaluation_config(job.policy, section.horizon))
            traj = rollout(job.policy, state, section.horizon)
        columns.append(show(traj.state.theta))
        titles.append(job.label + (" (learned)" if "checkpoint" in job.extra else ""))
        f = traj.state.loss.detach().cpu().tolist()
        finals[job.label] = sum(f) / len(f)
        for r, v in enumerate(f):
            notes[r].append(f"f = {fmt_number(v)}")
    rows = [[col[r] for col in columns] for r in range(n_images)]
    name = f"art_{section.file_stem}_T{section.horizon}.png"
    path = plot_image_grid(rows, Path(out) / name, titles, notes,
                           title=f"{section.name}: {s}×{s} test images after T = {section.horizon} steps")
    lines = [
        f"## Pictures: {section.name}, T = {section.horizon}",
        "",
        f"The first {n_images} test problems of the section (same seed): content, style, start, and each optimizer's "
        f"image after {section.horizon} steps (clipped to [0, 1] for display), final objective underneath. Mean over "
        "these images: " + ", ".join(f"{k} {fmt_number(v)}" for k, v in finals.items()) + ".",
        "",
        f"![{section.name} pictures]({name})",
        "",
    ]
    log.info("wrote %s", path)
    return path, lines

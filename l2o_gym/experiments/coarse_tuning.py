"""Coarse-to-fine learning-rate tuning for expensive families (the conv nets), into the shipped tuned file.

:func:`l2o_gym.experiments.tuning.tune_baseline` scans 25 learning rates (× 3 momenta): 225 runs per setting,
hours for the conv-net family on a shared CPU. This module tunes the same baselines on the same ``LR_GRID``
(``10^(k/4)``) coarse to fine, and records the result in the same format and under the same
:func:`~l2o_gym.experiments.tuning.setting_key` so that :func:`~l2o_gym.experiments.tuning.tuned_entry` finds it:

1. the decades ``k ∈ {−12, −8, −4, 0}`` (``1e-3 … 1``);
2. the half decades ``k* ± 2`` around the best decade ``k*``;
3. the quarter decades ``k** ± 1`` around the best so far (``refine=(2, 1)``, the default; ``refine=(2,)``
   stops after the half decades).

Momentum and NAG use ``μ = 0.9`` only (recorded). Selection is the tuning module's rule: lowest mean final
objective among the configurations with no diverged problem (else lowest overall). ``split="train"`` (never
``test``). Each entry carries ``"grid": "coarse"`` and the command that produced it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from l2o_gym.agents.baselines import BASELINES, make_baseline
from l2o_gym.checkpoint import atomic_write
from l2o_gym.experiments.evaluation import evaluate
from l2o_gym.experiments.tuning import LR_GRID, setting_key
from l2o_gym.registry import variant_kwargs

log = logging.getLogger(__name__)

#: exponents ``k`` (``lr = 10^(k/4)``) of the first, coarse pass.
COARSE_K: tuple[int, ...] = (-12, -8, -4, 0)
#: momentum of the momentum / NAG baselines in coarse tuning.
COARSE_MOMENTUM: float = 0.9


def _lr(k: int) -> float:
    return LR_GRID[k + 20]


def coarse_tune_baseline(
    name: str, env_id: str, *, variant: str | None = None, n_problems: int = 4, horizon: int = 100, seed: int = 0,
    split: str = "train", device: str = "cpu", refine: tuple[int, ...] = (2, 1),
) -> dict[str, Any]:
    """Tune one baseline's learning rate coarse to fine (module docstring); returns the tuning entry.

    ``refine``: the steps (in quarter decades) of the refinement passes around the best so far.
    """
    if split == "test":
        raise ValueError("tuning must not read the test split: use split='train' or 'val'")
    if name not in BASELINES or name in ("cg", "lbfgs"):
        raise ValueError(f"coarse tuning needs a baseline with a learning rate, got {name!r}")
    fkw = variant_kwargs(env_id, variant)
    extra = {"momentum": COARSE_MOMENTUM} if name in ("momentum", "nag") else {}
    results: dict[int, tuple[float, float]] = {}

    def run(k: int) -> None:
        if k in results or not -20 <= k <= 4:
            return
        res = evaluate(make_baseline(name, lr=_lr(k), **extra), env_id, n_problems=n_problems, horizon=horizon,
                       seed=seed, split=split, device=device, family_kwargs=fkw, n_boot=10)
        results[k] = (res.final_mean, res.diverged_fraction)
        log.info("%s %s lr=%g: mean final f %.4g, diverged %.0f%%", setting_key(env_id, horizon, variant), name,
                 _lr(k), res.final_mean, 100 * res.diverged_fraction)

    def best() -> int:
        stable = [k for k, (_, div) in results.items() if div == 0.0]
        return min(stable or results, key=lambda k: results[k][0])

    for k in COARSE_K:
        run(k)
    for delta in refine:
        b = best()
        run(b - delta)
        run(b + delta)
    b = best()
    return {"hparams": {"lr": _lr(b), **extra}, "final_mean": results[b][0], "diverged_fraction": results[b][1],
            "n_evaluated": len(results), "grid": f"coarse: decades {[_lr(k) for k in COARSE_K]}, refined by {list(refine)} quarter decades", "split": split, "n_problems": n_problems,
            "horizon": horizon, "seed": seed, **({"variant": variant, "family_kwargs": fkw} if variant else {})}


def coarse_tune(
    env_id: str, names: list[str], *, variant: str | None = None, out: str | Path | None = None, command: str = "",
    **kwargs: Any,
) -> dict[str, Any]:
    """Tune ``names`` on one setting and merge the entries into the tuned JSON file ``out`` (atomic write).

    Returns ``{name: entry}``. ``kwargs`` go to :func:`coarse_tune_baseline`.
    """
    entries = {n: {**coarse_tune_baseline(n, env_id, variant=variant, **kwargs), "command": command} for n in names}
    if out is not None:
        path = Path(out)
        data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"envs": {}}
        key = setting_key(env_id, entries[names[0]]["horizon"], variant)
        data.setdefault("envs", {}).setdefault(key, {}).update(entries)
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return entries

"""Hyperparameter tuning of the hand-designed baselines on ``train`` (or ``val``) problems — never ``test``.

Grid: learning rates ``10^(k/4)`` for ``k = −20…4`` (``1e-5 … 10``, 25 values); for momentum and NAG also
``μ ∈ {0.5, 0.9, 0.99}``. Adam and RMSprop keep torch's defaults for their other constants. CG and L-BFGS
have no step size to tune (line search).

Selection: the configuration with the lowest mean final objective ``f(θ_T)`` among those with no diverged
problem; if every configuration diverges somewhere, the lowest mean final objective overall. Along the
learning-rate axis the scan stops after two consecutive values where every problem diverged.

The chosen values are saved per *setting* in a small JSON file (``agents/tuned_baselines.json`` ships with
the package) together with the command that produced them, so comparisons are reproducible. A setting is an
env id, the horizon ``T`` tuned for and optionally a named problem variant (:data:`l2o_gym.envs.VARIANTS`,
e.g. the MLP transfer runs); its key in ``"envs"`` is :func:`setting_key`: ``"l2o/Quadratic-v0"`` for the
default ``T = 100``, ``"l2o/LogisticRegression-v0@T20"``, ``"l2o/MLP-v0+relu"``.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from l2o_gym.agents.baselines import BASELINES, make_baseline
from l2o_gym.checkpoint import atomic_write
from l2o_gym.experiments.evaluation import evaluate
from l2o_gym.registry import variant_kwargs

log = logging.getLogger(__name__)

#: horizon of the plain env-id settings in the tuned file.
DEFAULT_TUNING_HORIZON = 100

LR_GRID: tuple[float, ...] = tuple(float(f"{10 ** (k / 4):.6g}") for k in range(-20, 5))
MOMENTUM_GRID: tuple[float, ...] = (0.5, 0.9, 0.99)


def setting_key(env_id: str, horizon: int = DEFAULT_TUNING_HORIZON, variant: str | None = None) -> str:
    """Key of a tuning setting in the tuned file: ``env_id[+variant][@T<horizon>]`` (``@T`` omitted for 100)."""
    key = env_id + (f"+{variant}" if variant else "")
    return key if horizon == DEFAULT_TUNING_HORIZON else f"{key}@T{horizon}"




def default_tuned_path() -> Path:
    """The shipped tuned-hyperparameter file (inside the installed ``l2o_gym.agents`` package)."""
    from l2o_gym.agents.common import package_file

    return package_file("tuned_baselines.json")


def _grids(name: str) -> list[dict[str, float]]:
    if name in ("cg", "lbfgs"):
        return [{}]
    if name in ("momentum", "nag"):
        return [{"momentum": m} for m in MOMENTUM_GRID]
    return [{}]


def tune_baseline(
    name: str,
    env_id: str,
    *,
    n_problems: int = 100,
    horizon: int = 100,
    seed: int = 0,
    split: str = "train",
    device: str = "cpu",
    family_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tune one baseline on one env; returns ``{"hparams", "final_mean", "diverged_fraction", "n_evaluated"}``."""
    if split == "test":
        raise ValueError("tuning must not read the test split: use split='train' or 'val'")
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
    candidates: list[tuple[dict[str, float], float, float]] = []
    for extra in _grids(name):
        lrs: tuple[float | None, ...] = (None,) if name in ("cg", "lbfgs") else LR_GRID
        all_diverged_run = 0
        for lr in lrs:
            hp = dict(extra) if lr is None else {"lr": lr, **extra}
            res = evaluate(
                make_baseline(name, **hp), env_id, n_problems=n_problems, horizon=horizon, seed=seed,
                split=split, device=device, family_kwargs=family_kwargs, n_boot=10,
            )
            candidates.append((hp, res.final_mean, res.diverged_fraction))
            all_diverged_run = all_diverged_run + 1 if res.diverged_fraction == 1.0 else 0
            if all_diverged_run >= 2:
                break
    stable = [c for c in candidates if c[2] == 0.0]
    best = min(stable or candidates, key=lambda c: c[1])
    return {"hparams": best[0], "final_mean": best[1], "diverged_fraction": best[2], "n_evaluated": len(candidates)}


def tune(
    env_ids: list[str],
    names: list[str],
    *,
    n_problems: int = 100,
    horizon: int = 100,
    seed: int = 0,
    split: str = "train",
    device: str = "cpu",
    command: str = "",
    out: str | Path | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """Tune ``names`` on every env (optionally a named ``variant`` of it) at ``horizon``; merge the entries,
    keyed by :func:`setting_key`, into the JSON at ``out`` (created if missing) and return it."""
    out_path = Path(out) if out else None
    data: dict[str, Any] = {"envs": {}}
    if out_path and out_path.is_file():
        data = json.loads(out_path.read_text())
    for env_id, name in tqdm(list(itertools.product(env_ids, names)), desc="tuning", leave=False):
        fkw = variant_kwargs(env_id, variant)
        res = tune_baseline(name, env_id, n_problems=n_problems, horizon=horizon, seed=seed, split=split, device=device,
                            family_kwargs=fkw)
        key = setting_key(env_id, horizon, variant)
        log.info("%s %s: %s -> mean final f %.4g (%d configs)", key, name, res["hparams"], res["final_mean"], res["n_evaluated"])
        entry = data["envs"].setdefault(key, {})
        entry[name] = {**res, "split": split, "n_problems": n_problems, "horizon": horizon, "seed": seed,
                       "command": command, **({"variant": variant, "family_kwargs": fkw} if variant else {})}
    data.update(
        {
            "grid": {"lr": list(LR_GRID), "momentum": list(MOMENTUM_GRID)},
            "selection": "lowest mean final objective among configurations without divergence",
            "date": _dt.date.today().isoformat(),
            "machine": f"{platform.machine()}, torch {torch.__version__}",
        }
    )
    if out_path:
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        atomic_write(out_path, lambda tmp: Path(tmp).write_text(text))
    return data


def tuned_entry(
    tuned: dict[str, Any], env_id: str, name: str, horizon: int = DEFAULT_TUNING_HORIZON, variant: str | None = None
) -> dict[str, Any] | None:
    """The tuned entry of baseline ``name`` for a setting, or ``None`` if that env (variant) was never tuned.

    Prefers the exact setting; falls back to the same env (variant) tuned at another horizon, the default
    ``T = 100`` first, with a logged warning (the entry's ``"horizon"`` says what it was tuned for).
    """
    exact = tuned.get(setting_key(env_id, horizon, variant), {}).get(name)
    if exact is not None:
        return exact
    prefix = env_id + (f"+{variant}" if variant else "")
    keys = [prefix] + sorted(k for k in tuned if k.startswith(prefix + "@T"))
    for key in keys:
        entry = tuned.get(key, {}).get(name)
        if entry is not None:
            log.warning("%s on %s: no hyperparameters tuned at T=%d, using those tuned at T=%s", name, prefix, horizon,
                        entry.get("horizon"))
            return entry
    return None


def load_tuned(path: str | Path | None = None) -> dict[str, Any]:
    """The tuned hyperparameters, ``{setting_key: {name: {"hparams": {...}, "horizon": T, ...}}}``."""
    path = Path(path) if path else default_tuned_path()
    if not path.is_file():
        raise FileNotFoundError(f"tuned hyperparameter file {str(path)!r} does not exist (run scripts/tune_baselines.py)")
    try:
        return json.loads(path.read_text())["envs"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"tuned hyperparameter file {str(path)!r} is not valid: {exc}") from None

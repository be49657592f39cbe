"""The report's tuned baselines: sample the ``train`` problems of a setting, tune them with the one protocol
(:mod:`l2o_gym.agents.tuning`: grids, divergence penalty, selection), read and write the tuned JSON file.

The chosen values are saved per *setting* in a small JSON file (``agents/tuned_baselines.json`` ships with
the package) together with the command that produced them, so comparisons are reproducible. A setting is an
env id, the horizon ``T`` tuned for and optionally a named problem variant (:data:`l2o_gym.registry.VARIANTS`,
e.g. the MLP transfer runs); its key in ``"envs"`` is :func:`setting_key`: ``"l2o/Quadratic-v0"`` for the
default ``T = 100``, ``"l2o/LogisticRegression-v0@T20"``, ``"l2o/MLP-v0+relu"``. Besides ``"envs"`` the file
holds ``"protocol"`` (grids, score, selection), ``"stability"`` (:func:`seed_spread`: the selected
hyperparameters and their ``test`` objective over several tuning seeds) and ``"val_references"``
(:func:`val_reference`: the sample-efficiency targets of the shipped learned checkpoints, re-derived with
this protocol on the checkpoints' own ``val`` problems).

Tuning reads ``train`` (or ``val``) problems only, never ``test``; only :func:`seed_spread` evaluates the
selections on ``test``, after tuning, to measure how much the choice matters.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import platform
import statistics
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from l2o_gym.agents.baselines import make_baseline
from l2o_gym.agents.tuning import (
    COARSE_K, COARSE_REFINE, EDGE_STEPS, FIRST_ORDER, GRIDS, LR_GRID, MOMENTUM_GRID, STOP_AFTER_ALL_DIVERGED, tune_baseline,
)
from l2o_gym.checkpoint import atomic_write
from l2o_gym.checks import check_positive_int, check_split, resolve_device, resolve_dtype
from l2o_gym.problems import ProblemBatch
from l2o_gym.registry import env_family, variant_kwargs

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TUNING_HORIZON", "LR_GRID", "MOMENTUM_GRID", "PROTOCOL", "default_tuned_path", "load_tuned",
    "load_val_references", "seed_spread", "setting_key", "tune", "tune_setting", "tuned_entry", "tuning_problems",
    "val_reference", "variant_kwargs",
]

#: horizon of the plain env-id settings in the tuned file.
DEFAULT_TUNING_HORIZON = 100

#: the protocol's description stored in the tuned file (``"protocol"``) and tagged on every entry (``"id"``).
PROTOCOL: dict[str, Any] = {
    "id": "joint-grid-penalized-v2",
    "grids": {name: {k: list(v) for k, v in grid.items()} for name, grid in GRIDS.items()},
    "score": "mean over the tuning problems of f(θ_T); a diverged problem counts the core's divergence penalty "
             "blowup·(|f(θ₀)|+1) (CoreConfig.blowup = 1e4) instead of its last finite objective",
    "selection": "lowest score over the whole grid (learning rate × momentum jointly for momentum/NAG); ties: "
                 "earliest in grid order; diverging configurations are scored, never dropped",
    "lr_scan_stop": f"along the lr axis (ascending) the scan stops after {STOP_AFTER_ALL_DIVERGED} consecutive values "
                    "where every problem diverged (such a configuration already has the worst possible score)",
    "edge": f"while the selection's lr is the largest (smallest) evaluated for its other hyperparameters, the next "
            f"larger (smaller) quarter decade is evaluated and the selection made again, up to {EDGE_STEPS} quarter "
            "decades beyond the grid (v2; v1 had no extension: v1 entries selected inside the grid are v2 results)",
    "search": {"grid": "every configuration of the grids",
               "coarse": f"the same grids, score and selection; along lr (for every other point of the grid) only "
                         f"10^(k/4) for k in {list(COARSE_K)}, then ± {list(COARSE_REFINE)} quarter decades around the "
                         "best so far, then the best's next larger lr (entries record \"search\": \"coarse\")"},
    "module": "l2o_gym.agents.tuning",
}


def setting_key(env_id: str, horizon: int = DEFAULT_TUNING_HORIZON, variant: str | None = None) -> str:
    """Key of a tuning setting in the tuned file: ``env_id[+variant][@T<horizon>]`` (``@T`` omitted for 100)."""
    key = env_id + (f"+{variant}" if variant else "")
    return key if horizon == DEFAULT_TUNING_HORIZON else f"{key}@T{horizon}"




def default_tuned_path() -> Path:
    """The shipped tuned-hyperparameter file (inside the installed ``l2o_gym.agents`` package)."""
    from l2o_gym.agents.common import package_file

    return package_file("tuned_baselines.json")


def tuning_problems(
    env_id: str,
    n_problems: int,
    *,
    seed: int = 0,
    split: str = "train",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    family_kwargs: dict[str, Any] | None = None,
) -> ProblemBatch:
    """The ``n_problems`` tuning problems of a setting: one draw of that size from the ``(split, seed)`` stream
    (instance ``i`` depends on the size: these are not the first ``n_problems`` of a larger draw).

    Raises:
        ValueError: ``split="test"`` (tuning never reads the test split), or a bad size, split, device or dtype.
    """
    if split == "test":
        raise ValueError("tuning must not read the test split: use split='train' or 'val'")
    check_split(split)
    check_positive_int("n_problems", n_problems)
    family = env_family(env_id, **(family_kwargs or {}))
    return family.sample(n_problems, split, seed, resolve_device(device), resolve_dtype(dtype))


def tune_setting(
    name: str,
    env_id: str,
    *,
    n_problems: int = 100,
    horizon: int = DEFAULT_TUNING_HORIZON,
    seed: int = 0,
    split: str = "train",
    device: torch.device | str = "cpu",
    family_kwargs: dict[str, Any] | None = None,
    problems: ProblemBatch | None = None,
    search: str = "grid",
) -> dict[str, Any]:
    """Tune one baseline on one setting (:func:`l2o_gym.agents.tuning.tune_baseline` on :func:`tuning_problems`).

    Returns the tuned-file entry's measured part: ``{"hparams", "score", "final_mean", "diverged_fraction",
    "n_evaluated", "n_diverging"}`` — ``final_mean`` counts diverged problems at their last finite objective
    (the evaluation harness's convention), ``n_diverging`` is the number of evaluated configurations that
    diverged on at least one problem (scored with the penalty, not dropped). ``problems`` (already sampled
    with these arguments) skips the sampling; ``search``: ``"grid"`` or ``"coarse"``
    (:func:`~l2o_gym.agents.tuning.tune_baseline`).
    """
    if problems is None:
        problems = tuning_problems(env_id, n_problems, seed=seed, split=split, device=device, family_kwargs=family_kwargs)
    elif split == "test":
        raise ValueError("tuning must not read the test split: use split='train' or 'val'")
    res = tune_baseline(name, problems, horizon, search=search)
    return {
        "hparams": res.hparams,
        "score": res.best.penalized_mean,
        "selection_score": res.best.score,
        "final_mean": res.best.final_mean,
        "diverged_fraction": res.best.diverged_fraction,
        "n_evaluated": res.n_evaluated,
        "n_diverging": sum(1 for c in res.candidates if c.diverged_fraction > 0),
    }


def _read(out_path: Path | None) -> dict[str, Any]:
    if out_path and out_path.is_file():
        try:
            data = json.loads(out_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"tuned hyperparameter file {str(out_path)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.setdefault("envs", {}), dict):
            raise ValueError(f"tuned hyperparameter file {str(out_path)!r} is not a tuned file: expected a JSON object "
                             'with an "envs" object')
        return data
    return {"envs": {}}


def read_tuned_file(path: str | Path) -> dict[str, Any]:
    """The tuned file ``path`` as a dict (``{"envs": {}}`` if it does not exist yet); ``ValueError`` naming it if it
    is not one (scripts call it before tuning into it, so that a bad ``--out`` fails at once)."""
    return _read(Path(path))


def _write(data: dict[str, Any], out_path: Path | None) -> None:
    data.update(
        {
            "protocol": PROTOCOL,
            "date": _dt.date.today().isoformat(),
            "machine": f"{platform.machine()}, torch {torch.__version__}",
        }
    )
    for old in ("grid", "selection"):  # the keys of the file's first format (one global grid)
        data.pop(old, None)
    if out_path:
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        atomic_write(out_path, lambda tmp: Path(tmp).write_text(text))


def tune(
    env_ids: list[str],
    names: list[str],
    *,
    n_problems: int = 100,
    horizon: int = DEFAULT_TUNING_HORIZON,
    seed: int = 0,
    split: str = "train",
    device: str = "cpu",
    command: str = "",
    out: str | Path | None = None,
    variant: str | None = None,
    search: str = "grid",
) -> dict[str, Any]:
    """Tune ``names`` on every env (optionally a named ``variant`` of it) at ``horizon``; merge the entries,
    keyed by :func:`setting_key`, into the JSON at ``out`` (created if missing; written after every setting)
    and return it. Every baseline of a setting is tuned on the same ``n_problems`` problems, with ``search``
    (``"grid"`` or ``"coarse"``, :func:`~l2o_gym.agents.tuning.tune_baseline`)."""
    out_path = Path(out) if out else None
    data = _read(out_path)
    for env_id in env_ids:
        fkw = variant_kwargs(env_id, variant)
        problems = tuning_problems(env_id, n_problems, seed=seed, split=split, device=device, family_kwargs=fkw)
        key = setting_key(env_id, horizon, variant)
        for name in tqdm(names, desc=f"tuning {key}", leave=False):
            res = tune_setting(name, env_id, horizon=horizon, split=split, problems=problems, search=search)
            log.info("%s %s: %s -> score %.4g, mean final f %.4g (%d configs, %d diverging somewhere)", key, name,
                     res["hparams"], res["score"], res["final_mean"], res["n_evaluated"], res["n_diverging"])
            entry = data["envs"].setdefault(key, {})
            entry[name] = {**res, "split": split, "n_problems": n_problems, "horizon": horizon, "seed": seed,
                           "command": command, "protocol": PROTOCOL["id"], "search": search,
                           **({"variant": variant, "family_kwargs": fkw} if variant else {})}
        _write(data, out_path)
    _write(data, out_path)
    return data


def seed_spread(
    env_id: str,
    names: list[str],
    *,
    seeds: list[int],
    n_problems: int = 100,
    horizon: int = DEFAULT_TUNING_HORIZON,
    n_test: int = 1000,
    test_seed: int = 0,
    variant: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """How stable the tuned choice is: tune ``names`` on ``train`` with each of ``seeds``, then evaluate every
    selection on the same ``n_test`` ``test`` problems (seed ``test_seed``).

    Returns ``{name: {"seeds", "hparams", "train_score", "test_final_mean", "test_log10_final_mean",
    "test_diverged_fraction", "log10_spread"}}`` (lists in seed order; ``log10_spread`` = max − min of the
    test ``log10`` mean final objective) plus ``"settings"``. Tuning itself never reads ``test``.
    """
    from l2o_gym.experiments.evaluation import evaluate

    fkw = variant_kwargs(env_id, variant)
    out: dict[str, Any] = {"settings": {"env": env_id, "variant": variant, "horizon": horizon, "n_problems": n_problems,
                                        "seeds": list(seeds), "n_test": n_test, "test_seed": test_seed}}
    per: dict[str, dict[str, list[Any]]] = {n: {k: [] for k in ("hparams", "train_score", "test_final_mean",
                                                                "test_log10_final_mean", "test_diverged_fraction")}
                                            for n in names}
    for seed in seeds:
        problems = tuning_problems(env_id, n_problems, seed=seed, device=device, family_kwargs=fkw)
        for name in names:
            res = tune_setting(name, env_id, horizon=horizon, problems=problems)
            ev = evaluate(make_baseline(name, **res["hparams"]), env_id, n_problems=n_test, horizon=horizon,
                          seed=test_seed, split="test", device=device, family_kwargs=fkw, n_boot=10)
            row = per[name]
            row["hparams"].append(res["hparams"])
            row["train_score"].append(res["score"])
            row["test_final_mean"].append(ev.final_mean)
            row["test_log10_final_mean"].append(ev.log10_final_mean)
            row["test_diverged_fraction"].append(ev.diverged_fraction)
            log.info("%s seed %d %s: %s -> test log10 mean final %.3f", env_id, seed, name, res["hparams"],
                     ev.log10_final_mean)
    for name, row in per.items():
        logs = [x for x in row["test_log10_final_mean"] if math.isfinite(x)]
        out[name] = {"seeds": list(seeds), **row,
                     "log10_spread": (max(logs) - min(logs)) if logs else None,
                     "log10_median": statistics.median(logs) if logs else None}
    return out


def record_spread(out: str | Path, key: str, spread: dict[str, Any], command: str = "") -> dict[str, Any]:
    """Store a :func:`seed_spread` result under ``"stability"[key]`` of the tuned file ``out``."""
    out_path = Path(out)
    data = _read(out_path)
    data.setdefault("stability", {})[key] = {**spread, "command": command, "date": _dt.date.today().isoformat()}
    _write(data, out_path)
    return data


def val_reference(
    env_id: str, horizon: int, n_val: int, seed: int, baselines: tuple[str, ...], device: str = "cpu"
) -> dict[str, Any]:
    """The sample-efficiency targets of a training run: the best of ``baselines`` and the best of
    :data:`~l2o_gym.agents.tuning.FIRST_ORDER`, tuned with the protocol on the run's ``val`` problems
    (``n_val`` problems of seed ``seed``, float64, as the GPS and SB3 trainers sample them) at ``horizon``.

    Returns ``{"baseline": {"name", "hparams", "val_final"}, "first_order_baseline": {...}}`` (``val_final``
    is the protocol's score).
    """
    from l2o_gym.agents.tuning import _best_of, tune_baselines

    val = env_family(env_id).sample(n_val, "val", seed, resolve_device(device), torch.float64)
    tuned = tune_baselines(tuple(dict.fromkeys(tuple(baselines) + FIRST_ORDER)), val, horizon)
    out = {}
    for key, names in (("baseline", tuple(baselines)), ("first_order_baseline", FIRST_ORDER)):
        name, hp, value = _best_of(tuned, names)
        out[key] = {"name": name, "hparams": hp, "val_final": value}
    return out


def val_reference_key(env_id: str, horizon: int, n_val: int, seed: int, baselines: tuple[str, ...]) -> str:
    """Key of a :func:`val_reference` in the tuned file's ``"val_references"``."""
    return f"{env_id}@T{horizon}/val{n_val}/seed{seed}/{'+'.join(baselines)}"


def record_val_references(out: str | Path, checkpoints: list[str | Path], command: str = "") -> dict[str, Any]:
    """Re-derive and store (``"val_references"``) the targets of every learned checkpoint with a training record
    whose ``train_config`` names the ``val`` set :func:`val_reference` re-draws (``n_val``, ``seed``, ``baselines``:
    the GPS and SB3 runs); the others (LSTM runs) are skipped, as the study's look-up skips them."""
    from l2o_gym.checkpoint import read_policy_config

    out_path = Path(out)
    data = _read(out_path)
    refs = data.setdefault("val_references", {})
    for path in checkpoints:
        cfg = read_policy_config(path)
        tc = cfg.get("train_config", {})
        if not isinstance(cfg.get("training"), dict) or not tc:
            continue
        try:  # the same fields as the study's look-up (study._retarget): a run without them is never looked up
            args = (tc["env_id"], int(tc["horizon"]), int(tc["n_val"]), int(tc["seed"]), tuple(tc["baselines"]))
        except (KeyError, TypeError, ValueError):
            # e.g. an LSTM run (``val_problems`` in its own dtype): its training record keeps its own targets
            log.info("%s: no n_val/seed/baselines of a val_reference in its train_config; skipped", path)
            continue
        key = val_reference_key(*args)
        if key not in refs:
            refs[key] = {**val_reference(*args), "protocol": PROTOCOL["id"], "command": command}
            log.info("%s: %s", key, refs[key])
    _write(data, out_path)
    return data


def load_val_references(path: str | Path | None = None) -> dict[str, Any]:
    """The ``"val_references"`` of the tuned file (``{}`` if it has none)."""
    path = Path(path) if path else default_tuned_path()
    if not path.is_file():
        return {}
    return _read(path).get("val_references", {})


#: the horizon fallbacks of :func:`tuned_entry` already logged in this process.
_FALLBACKS_SAID: set[tuple[Any, ...]] = set()


def tuned_entry(
    tuned: dict[str, Any], env_id: str, name: str, horizon: int = DEFAULT_TUNING_HORIZON, variant: str | None = None
) -> dict[str, Any] | None:
    """The tuned entry of baseline ``name`` for a setting, or ``None`` if that env (variant) was never tuned.

    Prefers the exact setting; falls back to the same env (variant) tuned at another horizon, the default
    ``T = 100`` first, then the closest horizon (the shorter on a tie), with a logged warning (the entry's
    ``"horizon"`` says what it was tuned for).
    """
    exact = tuned.get(setting_key(env_id, horizon, variant), {}).get(name)
    if exact is not None:
        return exact
    prefix = env_id + (f"+{variant}" if variant else "")

    def tuned_at(key: str) -> int:
        tail = key[len(prefix) + 2:]
        return int(tail) if tail.isdigit() else -1  # not a horizon key of this setting: never matches below

    others = [k for k in tuned if k.startswith(prefix + "@T") and tuned_at(k) > 0]
    keys = [prefix] + sorted(others, key=lambda k: (abs(tuned_at(k) - horizon), tuned_at(k)))
    for key in keys:
        entry = tuned.get(key, {}).get(name)
        if entry is not None:
            said = (name, prefix, horizon, entry.get("horizon"))
            if said not in _FALLBACKS_SAID:  # once per process, not once per section and job
                _FALLBACKS_SAID.add(said)
                log.warning("%s on %s: no hyperparameters tuned at T=%d, using those tuned at T=%s", *said)
            return entry
    return None


def load_tuned(path: str | Path | None = None) -> dict[str, Any]:
    """The tuned hyperparameters, ``{setting_key: {name: {"hparams": {...}, "horizon": T, ...}}}``."""
    path = Path(path) if path else default_tuned_path()
    if path.is_dir():
        raise IsADirectoryError(f"tuned hyperparameter file {str(path)!r} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"tuned hyperparameter file {str(path)!r} does not exist (run scripts/tune_baselines.py)")
    try:
        envs = json.loads(path.read_text())["envs"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"tuned hyperparameter file {str(path)!r} is not valid: {exc}") from None
    if not isinstance(envs, dict):
        raise ValueError(f"tuned hyperparameter file {str(path)!r} is not valid: \"envs\" is not a JSON object")
    return envs

"""The comparison harness behind ``scripts/compare.py``: policies × envs × horizons on held-out problems.

Everything a run needs (env ids, policies, tuned hyperparameters, checkpoints, the output folder) is
resolved and checked *before* any evaluation starts, so bad input fails in seconds with a clear message.

Outputs in ``out/``: ``results.json`` (one entry per env × policy × horizon, see
:class:`l2o_gym.evaluation.EvalResult`), ``report.md`` (a table per env and horizon, best in bold, links
to the plots) and one PNG of mean objective vs iteration with 95% CI bands per env and horizon.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import logging
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from l2o_gym.agents.baselines import BASELINES, make_baseline
from l2o_gym.checkpoint import CheckpointError, atomic_write
from l2o_gym.evaluation import EvalResult, env_family, evaluate
from l2o_gym.plotting import plot_curves
from l2o_gym.policy import Policy
from l2o_gym.tuning import load_tuned

log = logging.getLogger(__name__)

#: learned policy kind -> "module:function" of its loader ``load_policy(path, env_id, device) -> Policy``.
LEARNED: dict[str, str] = {
    "lstm": "l2o_gym.agents.lstm:load_policy",
    "gps": "l2o_gym.agents.gps:load_policy",
    "ppo": "l2o_gym.agents.sb3:load_policy",
}


def env_short_name(env_id: str) -> str:
    """``"l2o/Quadratic-v0"`` -> ``"Quadratic"`` (file names of plots and shipped checkpoints)."""
    return re.sub(r"-v\d+$", "", env_id.split("/")[-1])


def pretrained_dir() -> Path:
    import l2o_gym.agents

    return Path(l2o_gym.agents.__file__).resolve().parent / "pretrained"


def pretrained_path(kind: str, env_id: str) -> Path | None:
    """The shipped checkpoint ``agents/pretrained/{kind}_{EnvName}.*`` for ``env_id``, if there is one."""
    matches = sorted(pretrained_dir().glob(f"{kind}_{env_short_name(env_id)}.*"))
    return matches[0] if matches else None


@dataclass
class PolicySpec:
    """A ``--policies`` entry: ``name`` or ``name=CHECKPOINT``."""

    name: str
    checkpoint: str | None = None

    @classmethod
    def parse(cls, text: str) -> PolicySpec:
        name, _, ckpt = text.partition("=")
        name = name.strip().lower()
        if name not in BASELINES and name not in LEARNED:
            valid = ", ".join([*BASELINES, *(f"{k}[=CKPT]" for k in LEARNED)])
            raise ValueError(f"unknown policy {name!r}: expected one of {valid}")
        if ckpt and name in BASELINES:
            raise ValueError(f"policy {name!r} is a hand-designed baseline and takes no checkpoint (got {ckpt!r})")
        return cls(name, ckpt or None)


def _load_learned(spec: PolicySpec, env_id: str, device: str) -> tuple[Policy, str]:
    path = spec.checkpoint or pretrained_path(spec.name, env_id)
    if path is None:
        raise CheckpointError(
            f"no {spec.name} checkpoint is shipped for {env_id}; train one (see README) and pass {spec.name}=PATH"
        )
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} for policy {spec.name!r} does not exist")
    module, _, fn = LEARNED[spec.name].partition(":")
    try:
        loader: Callable[..., Policy] = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"policy kind {spec.name!r} is not available in this installation ({exc})") from None
    return loader(path, env_id=env_id, device=device), str(path)


@dataclass
class CompareConfig:
    """Arguments of a comparison run (``scripts/compare.py`` flags)."""

    envs: list[str]
    policies: list[str]
    n_problems: int = 100
    horizon: int = 100
    long_horizon: int | None = None
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/compare"
    tuned: str | None = None
    family_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: str = ""


@dataclass
class _Job:
    env: str
    label: str
    policy: Policy
    horizon: int
    extra: dict[str, Any]
    family_kwargs: dict[str, Any]


def plan(cfg: CompareConfig) -> list[_Job]:
    """Resolve and check everything; raises ``ValueError``/``CheckpointError``/``OSError`` before any work."""
    from l2o_gym.envs.registration import ENV_TABLE

    bad = [e for e in cfg.envs if e not in ENV_TABLE]
    if bad:
        raise ValueError(f"unknown env id {bad[0]!r}: expected one of {', '.join(ENV_TABLE)}")
    if cfg.n_problems < 1 or cfg.horizon < 1 or (cfg.long_horizon is not None and cfg.long_horizon < 1):
        raise ValueError(f"n_problems, horizon and long_horizon must be positive, got {cfg.n_problems}, {cfg.horizon}, {cfg.long_horizon}")
    specs = [PolicySpec.parse(p) for p in cfg.policies]
    tuned = load_tuned(cfg.tuned) if any(s.name in BASELINES for s in specs) else {}
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"output folder {str(out)!r} is not writable: {exc}") from None
    horizons = [cfg.horizon] + ([cfg.long_horizon] if cfg.long_horizon else [])
    jobs: list[_Job] = []
    for env_id in cfg.envs:
        fkw = cfg.family_kwargs.get(env_id, {})
        dim = env_family(env_id, **fkw).dim
        for spec in specs:
            if spec.name in BASELINES:
                entry = tuned.get(env_id, {}).get(spec.name)
                if entry is None:
                    raise ValueError(
                        f"no tuned hyperparameters for {spec.name!r} on {env_id}: run "
                        f"`python scripts/tune_baselines.py --env {env_id} --policies {spec.name}`"
                    )
                policy: Policy = make_baseline(spec.name, **entry["hparams"])
                extra: dict[str, Any] = {"hparams": entry["hparams"]}
            else:
                policy, path = _load_learned(spec, env_id, cfg.device)
                pdim = getattr(policy, "dim", None)
                if pdim is not None and pdim != dim:
                    raise CheckpointError(f"checkpoint {path!r} is for dimension {pdim}, {env_id} has dimension {dim}")
                extra = {"checkpoint": path}
            for h in horizons:
                jobs.append(_Job(env_id, spec.name, policy, h, extra, fkw))
    return jobs


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def write_report(results: list[EvalResult], out: Path, cfg: CompareConfig) -> Path:
    """Write ``report.md`` and the PNG plots for ``results``; returns the report path."""
    lines = [
        "# l2o-gym comparison",
        "",
        f"- command: `{cfg.command or 'l2o_gym.compare.run_comparison'}`",
        f"- date: {_dt.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, device {cfg.device}",
        f"- {cfg.n_problems} held-out `test` problems per env (seed {cfg.seed}); baselines tuned on `train` "
        "(see `agents/tuned_baselines.json`). Best mean final objective in **bold**.",
        "- columns: mean f(θ_T) with 95% bootstrap CI, median f(θ_T), log10 of the mean, AUC (mean objective "
        "over the run), fraction diverged, objective+gradient evaluations per problem, wall time. ⚠: some "
        "problems diverged; they count in the means with their last finite objective.",
        "",
    ]
    groups: dict[tuple[str, int], list[EvalResult]] = {}
    for r in results:
        groups.setdefault((r.env, r.horizon), []).append(r)
    for (env_id, horizon), rows in groups.items():
        name = f"{env_short_name(env_id)}_T{horizon}.png"
        plot_curves(
            {r.policy: r.curve_mean for r in rows},
            out / name,
            f"{env_id}, T = {horizon}, {rows[0].n_problems} test problems",
            bands={r.policy: (r.curve_ci_low, r.curve_ci_high) for r in rows},
        )
        best = min(rows, key=lambda r: r.final_mean).policy
        lines += [
            f"## {env_id} — T = {horizon}",
            "",
            "| policy | mean f(θ_T) [95% CI] | median | log10 mean | AUC | diverged | grad evals | wall s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            mean = f"{_fmt(r.final_mean)} [{_fmt(r.curve_ci_low[-1])}, {_fmt(r.curve_ci_high[-1])}]"
            cells = [r.policy, mean, _fmt(r.final_median), f"{r.log10_final_mean:.2f}", _fmt(r.auc_mean),
                     f"{100 * r.diverged_fraction:.0f}%" + (" ⚠" if r.diverged_fraction > 0 else ""), f"{r.grad_evals:.0f}", f"{r.wall_s:.2f}"]
            if r.policy == best:
                cells = [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![{env_id} T={horizon}]({name})", ""]
    path = out / "report.md"
    text = "\n".join(lines)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def run_comparison(cfg: CompareConfig, progress: bool = True) -> list[EvalResult]:
    """Plan, evaluate every job, write ``results.json``, ``report.md`` and plots into ``cfg.out``."""
    jobs = plan(cfg)
    out = Path(cfg.out)
    results: list[EvalResult] = []
    for job in tqdm(jobs, desc="compare", disable=not progress):
        res = evaluate(
            job.policy, job.env, n_problems=cfg.n_problems, horizon=job.horizon, seed=cfg.seed, split="test",
            device=cfg.device, family_kwargs=job.family_kwargs, label=job.label,
        )
        res.extra.update(job.extra)
        if job.family_kwargs:
            res.extra["family_kwargs"] = job.family_kwargs
        log.info("%s %s T=%d: mean f(θ_T) %.4g, diverged %.0f%%", job.env, job.label, job.horizon, res.final_mean,
                 100 * res.diverged_fraction)
        results.append(res)
    payload = json.dumps({"runs": [r.as_dict() for r in results]}, indent=1, allow_nan=False)
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(payload))
    write_report(results, out, cfg)
    return results

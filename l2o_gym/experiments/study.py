"""The RL-versus-supervised study: presets of :class:`~l2o_gym.experiments.compare.Section` and its summary tables.

``python scripts/compare.py --preset study --out runs/main`` (the README's main job) runs, on held-out
``test`` problems, every shipped learned optimizer — GPS and PPO (reinforcement learning), the
coordinatewise LSTM (supervised, BPTT) — against the tuned hand-designed baselines, each env at the horizon
``T`` its learned policies were trained for **and at 10·T** (Li & Malik's claim: the supervised optimizer
degrades past its training horizon, the RL one does not), plus the MLP transfer runs of Andrychowicz et al.
(the checkpoint trained on the 20-unit sigmoid MLP applied to 40 units, two layers and ReLU).

On top of the per-section tables of :func:`l2o_gym.experiments.compare.write_report`, the report starts with

* **RL vs supervised** — per problem, the best tuned baseline and each learned optimizer at ``T`` and 10·T;
* **long horizon** — per learned optimizer, ``f(θ_10T) / f(θ_T)``, the peak of the mean objective over
  ``[T, 10T]`` relative to ``f(θ_T)``, whether every problem stayed finite, and the verdict: *stable* (finite,
  ratio and peak ≤ 1.1), *recovers* (finite and ratio ≤ 1.1, but the mean rose above 1.1·f(θ_T) in between),
  *grows* (ratio > 1.1) or *diverges* (a problem diverged);
* **sample efficiency** — from the training summaries stored in the shipped checkpoints (key
  ``"training"``): env steps each RL method needed to reach the best tuned baseline's ``val`` objective
  (and the best first-order one), GPS vs PPO.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

from l2o_gym.agents.baselines import FIRST_ORDER as _FIRST_ORDER
from l2o_gym.agents.common import steps_to_reach
from l2o_gym.checkpoint import CheckpointError, read_policy_config
from l2o_gym.experiments.compare import CompareConfig, Section, fmt_number, run_jobs, write_report, write_results
from l2o_gym.experiments.evaluation import EvalResult
from l2o_gym.stability import stability

log = logging.getLogger(__name__)

#: learned policies and how they were trained (report labels).
LEARNED_KIND = {"gps": "RL (GPS)", "ppo": "RL (PPO)", "sac": "RL (SAC)", "recurrent_ppo": "RL (RecurrentPPO)",
                "lstm": "supervised (LSTM, BPTT)"}
#: the step-size (one gradient per iteration) baselines: :data:`l2o_gym.agents.baselines.FIRST_ORDER`.
FIRST_ORDER = list(_FIRST_ORDER)
LINE_SEARCH = ["cg", "lbfgs"]
#: ``f(θ_10T) ≤ STABLE_RATIO · f(θ_T)`` counts as not degrading past the training horizon (the issue's 1.1×).
STABLE_RATIO = 1.1


def study_sections() -> list[Section]:
    """The full study (the README's main job; its wall time on a 2-core CPU is in docs/benchmarks.md)."""
    regression = [*FIRST_ORDER, *LINE_SEARCH]
    return [
        Section("l2o/Quadratic-v0", [*regression, "lstm"], 100, 1000),
        Section("l2o/LogisticRegression-v0", [*regression, "gps", "ppo", "lstm"], 20, 200),
        Section("l2o/RobustLinearRegression-v0", [*regression, "gps", "lstm"], 20, 200),
        Section("l2o/NeuralNet-v0", [*regression, "gps", "lstm"], 20, 200),
        # Minibatch objective: line searches on noisy minibatches are not meaningful, so first-order only.
        # d = 15,910: the LSTM runs on 159k coordinates per step. On one thread it costs 2.7 CPU s per problem and
        # 100 steps (measured, docs/threads.md), so the 1,000-step job (the longest; 10 problems) takes ~4.5 min on
        # its worker while the other worker runs the rest. The T = 100 transfer variants get 20 problems: the 95%
        # CI of the relu LSTM mean was ±31% with 10 problems (~±22% expected with 20).
        Section("l2o/MLP-v0", [*FIRST_ORDER, "lstm"], 100, 1000, n_problems=10),
        *(Section("l2o/MLP-v0", [*FIRST_ORDER, "lstm"], 100, None, variant=v, n_problems=20)
          for v in ("hidden40", "2layers", "relu")),
    ]


def tiny_sections() -> list[Section]:
    """The study's structure at toy size (3 problems, T/10, 2·T/10): for tests and smoke runs (seconds)."""
    out = []
    for sec in study_sections():
        t = max(2, sec.horizon // 10)
        out.append(dataclasses.replace(sec, horizon=t, long_horizon=2 * t if sec.long_horizon else None,
                                       n_problems=2 if sec.n_problems else 3))
    return out


PRESETS = {"study": study_sections, "study-tiny": tiny_sections}


def preset_config(name: str, **kwargs: Any) -> CompareConfig:
    """A :class:`CompareConfig` for preset ``name`` (``kwargs``: ``out``, ``device``, ``seed``, ``command`` …)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    return CompareConfig(sections=PRESETS[name](), title=f"l2o-gym: RL vs supervised learned optimizers ({name})",
                         **kwargs)


def _ratio(r: float | None) -> str:
    return "∞" if r is None else f"{r:.2f}"


def _index(results: list[EvalResult]) -> dict[tuple[str, str, int], EvalResult]:
    return {(r.extra.get("section", r.env), r.policy, r.horizon): r for r in results}


def long_horizon_rows(results: list[EvalResult], sections: list[Section]) -> list[dict[str, Any]]:
    """Per section with a long horizon and per learned policy: ``f(T)``, ``f(10T)``, ratio and verdict."""
    idx = _index(results)
    rows = []
    for sec in sections:
        if not sec.long_horizon:
            continue
        for name in sec.policies:
            kind = name.partition("=")[0]
            if kind not in LEARNED_KIND:
                continue
            short, long = idx.get((sec.name, kind, sec.horizon)), idx.get((sec.name, kind, sec.long_horizon))
            if short is None or long is None:
                continue
            v = stability(short.final_mean, long.curve_mean[sec.horizon:], long.diverged_fraction, STABLE_RATIO)
            ratio = None if math.isinf(v.ratio) else v.ratio  # None: grew from exactly 0
            peak = v.peak_ratio if short.final_mean > 0 else None
            finite, verdict = v.finite, v.verdict
            rows.append({"section": sec.name, "policy": kind, "kind": LEARNED_KIND[kind], "T": sec.horizon,
                         "long_T": sec.long_horizon, "f_T": short.final_mean, "f_long": long.final_mean,
                         "ratio": ratio, "worst_ratio": peak,
                         "diverged_fraction": long.diverged_fraction, "finite": finite,
                         "verdict": verdict})
    return rows


def versus_rows(results: list[EvalResult], sections: list[Section]) -> list[dict[str, Any]]:
    """Per section: the best tuned baseline and every learned policy at ``T`` (and the long horizon)."""
    idx = _index(results)
    rows = []
    for sec in sections:
        horizons = [sec.horizon] + ([sec.long_horizon] if sec.long_horizon else [])
        row: dict[str, Any] = {"section": sec.name, "T": sec.horizon, "long_T": sec.long_horizon}
        for h in horizons:
            base = [idx[(sec.name, p, h)] for p in sec.policies if p not in LEARNED_KIND and (sec.name, p, h) in idx]
            if base:
                best = min(base, key=lambda r: r.final_mean)
                row[f"best_baseline@{h}"] = (best.policy, best.final_mean)
            for p in sec.policies:
                kind = p.partition("=")[0]
                if kind in LEARNED_KIND and (sec.name, kind, h) in idx:
                    row[f"{kind}@{h}"] = idx[(sec.name, kind, h)].final_mean
        rows.append(row)
    return rows


def _retarget(row: dict[str, Any], config: dict[str, Any], training: dict[str, Any],
              references: dict[str, Any]) -> None:
    """Replace the targets a checkpoint's training record was made with by the current protocol's (re-derived on
    the same ``val`` problems, :func:`l2o_gym.experiments.tuning.val_reference`), and recount the steps to reach
    them from the stored validation curve; ``row["reference"]`` says which targets the row shows."""
    from l2o_gym.experiments.tuning import val_reference_key

    tc = config.get("train_config", {})
    curve = training.get("curve")
    try:
        key = val_reference_key(tc["env_id"], int(tc["horizon"]), int(tc["n_val"]), int(tc["seed"]),
                                tuple(tc["baselines"]))
    except (KeyError, TypeError, ValueError):
        key = None
    ref = references.get(key) if key else None
    if ref is None or not curve:
        row["reference"] = "checkpoint"
        return
    for what, steps_key in (("baseline", "env_steps_to_reach_baseline"),
                            ("first_order_baseline", "env_steps_to_reach_first_order")):
        target = ref[what]
        row[what] = {"name": target["name"], "val_final": float(target["val_final"])}
        row[steps_key] = steps_to_reach(curve, float(target["val_final"]))
    row["reference"] = ref.get("protocol", "tuned file")


def sample_efficiency_rows(results: list[EvalResult], references: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ``"training"`` summaries of the learned checkpoints that were evaluated (one row per checkpoint).

    ``references`` (the tuned file's ``"val_references"``, :func:`l2o_gym.experiments.tuning.load_val_references`):
    where it holds the targets of a checkpoint's run, they replace the ones stored at training time, so the
    table's "best baseline" comes from the same tuning protocol as the report's tuned baselines.
    """
    seen: dict[str, dict[str, Any]] = {}
    for r in results:
        path = r.extra.get("checkpoint")
        if not path or path in seen:
            continue
        try:
            config = read_policy_config(path)
        except CheckpointError as exc:
            log.warning("cannot read the training summary of %s: %s", path, exc)
            continue
        training = config.get("training")
        row: dict[str, Any] = {"env": r.env, "policy": r.policy, "checkpoint": Path(path).name}
        if isinstance(training, dict):
            row.update(training)
            row.pop("curve", None)
            _retarget(row, config, training, references or {})
        elif r.policy == "lstm":
            train = config.get("train", {})
            episode = config.get("episode")
            if episode is not None and train:
                row["optimizee_steps_to_checkpoint"] = int(episode) * int(train.get("n_problems", 0)) * int(train.get("horizon", 0))
        seen[path] = row
    return list(seen.values())


def summary_lines(results: list[EvalResult], sections: list[Section],
                  references: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Markdown for the three summary tables, and the same data for ``results.json`` (``references``: see
    :func:`sample_efficiency_rows`)."""
    learned = [k for k in LEARNED_KIND if any(r.policy == k for r in results)]
    vs = versus_rows(results, sections)
    lines = [
        "## RL vs supervised: mean final objective on held-out problems",
        "",
        "Each learned optimizer runs with the checkpoint shipped for that problem family (the MLP variants use the "
        "20-unit sigmoid MLP's). `f(T) → f(10T)`; lower is better; — : no checkpoint for that problem.",
        "",
        "| problem | T | best tuned baseline | " + " | ".join(f"{k} — {LEARNED_KIND[k]}" for k in learned) + " |",
        "|---|---|---|" + "---|" * len(learned),
    ]
    for row in vs:
        t, lt = row["T"], row["long_T"]

        def cell(key: str) -> str:
            a, b = row.get(f"{key}@{t}"), row.get(f"{key}@{lt}") if lt else None
            if a is None:
                return "—"
            if isinstance(a, tuple):
                s = f"{a[0]} {fmt_number(a[1])}"
                return s + (f" → {b[0]} {fmt_number(b[1])}" if b else "")
            return fmt_number(a) + (f" → {fmt_number(b)}" if b is not None else "")

        lines.append(f"| {row['section']} | {t}" + (f" / {lt}" if lt else "") + " | " + cell("best_baseline") + " | "
                     + " | ".join(cell(k) for k in learned) + " |")
    lh = long_horizon_rows(results, sections)
    lines += [
        "",
        f"## Long horizon: does each learned optimizer stay finite and within {STABLE_RATIO}× of f(θ_T) at 10·T?",
        "",
        "`ratio` = f(θ_10T) / f(θ_T); `peak` = the largest mean objective at any t in [T, 10T], over f(θ_T) "
        "(an optimizer that wanders off and comes back shows there). Verdicts: *stable* — finite, ratio and peak ≤ "
        f"{STABLE_RATIO}; *recovers* — finite and ratio ≤ {STABLE_RATIO} but a peak above it; *grows*; *diverges*.",
        "",
        "| problem | policy | T → 10T | f(θ_T) | f(θ_10T) | ratio | peak | diverged at 10T | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in lh:
        lines.append(f"| {row['section']} | {row['policy']} ({row['kind']}) | {row['T']} → {row['long_T']} | "
                     f"{fmt_number(row['f_T'])} | {fmt_number(row['f_long'])} | {_ratio(row['ratio'])} | {_ratio(row['worst_ratio'])} | "
                     f"{100 * row['diverged_fraction']:.0f}% | **{row['verdict']}** |")
    se = sample_efficiency_rows(results, references)
    lines += [
        "",
        "## Sample efficiency (from the training summaries in the shipped checkpoints)",
        "",
        "Env steps (optimizee iterations, summed over training problems and samples) until the policy's mean "
        "final objective on 100 `val` problems first reached the best tuned baseline's (line searches included) and "
        "the best first-order baseline's. The LSTM is trained by backpropagation, not RL: its optimizee steps are "
        "listed for scale only. Both targets come from the tuning protocol of `l2o_gym.agents.tuning` (the tuned "
        "file's `val_references`, re-derived on each run's own `val` problems); a row marked (checkpoint) shows the "
        "targets stored at training time.",
        "",
        "| env | policy | env steps (total) | best baseline (val) | steps to reach it | best first-order (val) | steps to reach it |",
        "|---|---|---|---|---|---|---|",
    ]

    def steps(v: Any) -> str:
        return "not reached" if v is None else f"{int(v):,}"

    for row in se:
        if "env_steps_total" in row:
            b, fo = row.get("baseline", {}), row.get("first_order_baseline", {})
            mark = " (checkpoint)" if row.get("reference") == "checkpoint" else ""
            lines.append(
                f"| {row['env']} | {row['policy']}{mark} | {int(row['env_steps_total']):,} | {b.get('name', '?')} "
                f"{fmt_number(float(b.get('val_final', math.nan)))} | {steps(row.get('env_steps_to_reach_baseline'))} | "
                f"{fo.get('name', '?')} {fmt_number(float(fo.get('val_final', math.nan)))} | "
                f"{steps(row.get('env_steps_to_reach_first_order'))} |")
        elif "optimizee_steps_to_checkpoint" in row:
            lines.append(f"| {row['env']} | {row['policy']} | {row['optimizee_steps_to_checkpoint']:,} (BPTT) | — | — | — | — |")
    ratios = _gps_ppo_ratio(se)
    if ratios:
        lines += ["", *ratios]
    lines.append("")
    return lines, {"versus": vs, "long_horizon": lh, "sample_efficiency": se}


def _gps_ppo_ratio(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    by_env: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_env.setdefault(r["env"], {})[r["policy"]] = r
    for env, pols in by_env.items():
        if "gps" in pols and "ppo" in pols:
            for key, what in (("env_steps_to_reach_baseline", "best baseline"),
                              ("env_steps_to_reach_first_order", "best first-order baseline")):
                g, p = pols["gps"].get(key), pols["ppo"].get(key)
                if g is not None and p is not None:
                    out.append(f"- {env}, {what}: GPS needed {g / p:.3g}× the env steps of PPO ({int(g):,} vs {int(p):,}).")
                else:
                    out.append(f"- {env}, {what}: GPS {'not reached' if g is None else f'{int(g):,}'}, "
                               f"PPO {'not reached' if p is None else f'{int(p):,}'} env steps.")
    return out


def run_study(cfg: CompareConfig, progress: bool = True) -> list[EvalResult]:
    """Evaluate every section of ``cfg``; write ``results.json`` (runs + summary tables), ``report.md``, plots."""
    results = run_jobs(cfg, progress)
    sections = cfg.resolve_sections()
    from l2o_gym.experiments.tuning import load_val_references

    lines, tables = summary_lines(results, sections, load_val_references(cfg.tuned))
    out = Path(cfg.out)
    write_results(results, out, {"study": tables}, workers=cfg.resolve_workers(len(results)))
    write_report(results, out, cfg, lines)
    return results

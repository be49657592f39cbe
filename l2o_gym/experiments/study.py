"""The RL-versus-supervised study: presets of :class:`~l2o_gym.experiments.compare.Section` and its summary tables.

``python scripts/compare.py --preset study --out runs/main`` (the README's main job) runs, on held-out
``test`` problems, every shipped learned optimizer — GPS and PPO (reinforcement learning), the
coordinatewise LSTM (supervised, BPTT) — against the tuned hand-designed baselines, each env at the horizon
``T`` its learned policies were trained for **and at 10·T** (Li & Malik's claim: the supervised optimizer
degrades past its training horizon, the RL one does not), plus the MLP transfer runs of Andrychowicz et al.
(the checkpoint trained on the 20-unit sigmoid MLP applied to 40 units, two layers and ReLU), and the neural-art
runs of Andrychowicz et al. §3.4 (8 held-out 64×64 images at T = 32, with PNG grids of the images each optimizer
reaches; preset ``art-full``: 100 images, 20 of them to 10·T, 128×128 and the second style — see docs/neural-art.md).

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

import numpy as np

from l2o_gym.agents.baselines import FIRST_ORDER as _FIRST_ORDER
from l2o_gym.agents.common import steps_to_reach
from l2o_gym.checkpoint import CheckpointError, read_policy_config
from l2o_gym.experiments.compare import (
    ORACLE_SUFFIX, CompareConfig, PolicySpec, Section, fmt_number, fmt_percent, is_oracle, run_jobs, write_report, write_results,
)
from l2o_gym.experiments.evaluation import EvalResult, bootstrap_mean_ci
from l2o_gym.stability import VERDICTS, stability

log = logging.getLogger(__name__)

#: learned policies and how they were trained (report labels).
LEARNED_KIND = {"gps": "RL (GPS)", "ppo": "RL (PPO)", "sac": "RL (SAC)", "recurrent_ppo": "RL (RecurrentPPO)",
                "coord_ppo": "RL (PPO, coordinatewise)",
                "lstm": "supervised (LSTM, BPTT)",
                "mlstm": "supervised (one LSTM per kind)", "mlstm-sub": "supervised (LSTM-sub, 5 labels)",
                "mlstm-shared": "supervised (one shared LSTM)"}
#: the step-size (one gradient per iteration) baselines: :data:`l2o_gym.agents.baselines.FIRST_ORDER`.
FIRST_ORDER = list(_FIRST_ORDER)
#: the first-order baselines of the conv-net sections (with AdaGrad, as in the NN benchmark).
CONV_FIRST_ORDER = [*FIRST_ORDER, "adagrad"]
#: problems per conv-net section in the main job (d = 12,338; a conv net costs ~30 ms per step on one core).
CONV_MAIN_PROBLEMS = 1
LINE_SEARCH = ["cg", "lbfgs"]
#: Neural art (Andrychowicz et al. §3.4): the tuned first-order baselines and the LSTM. T = 32, not the paper's
#: 128: on this random-feature stand-in every tuned optimizer has converged by t ≈ 128, and the paper's regime —
#: optimizers compared before they converge — is at T ≈ 32 (docs/neural-art.md, docs/benchmarks.md).
ART_ENV = "l2o/NeuralArt-v0"
ART_POLICIES = ["sgd", "momentum", "nag", "adam", "rmsprop", "lstm"]
ART_T = 32
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
        # d = 12,288 pixels per image and a conv-net objective: 8 held-out images at T keep it within the
        # budget; 10·T, the 128×128 / second-style transfer and 100 images are in the "art-full" preset.
        Section(ART_ENV, list(ART_POLICIES), ART_T, None, n_problems=8),
        # Andrychowicz §3.3 (conv net on the colour stand-in for CIFAR-10), all labels; the rest in --preset convnet.
        Section("l2o/ConvNet-v0", [*CONV_FIRST_ORDER, "mlstm"], 100, 1000, n_problems=CONV_MAIN_PROBLEMS),
        # Li & Malik 2017: held-out MNIST-48 at T and 2T, and the setting where the paper's LSTM "diverged
        # fairly quickly" (wider net, batch 10) on the CIFAR-10 stand-in; few problems to keep `make compare` short.
        nn_section("mnist", 5),
        nn_section("photo_patches-wide-batch10", 2, None),
    ]


from l2o_gym.registry import NN_DATASETS as NN_DATASETS_  # noqa: E402

#: the NN-classifier benchmark (Li & Malik 2017, docs/nn-benchmark.md): baselines and learned optimizers.
NN_ENV = "l2o/NNClassifier-v0"
NN_POLICIES = [*FIRST_ORDER, "adagrad", *LINE_SEARCH, "lstm", "gps"]  # gps: convolutional GPS (docs/conv-gps.md)
#: the training horizon T of the benchmark; every setting is also run to 2T (the paper's fifth setting).
NN_T = 400
#: true-objective evaluation stride of the NN sections (the full-data loss costs ~5 minibatch steps; measured,
#: docs/benchmarks.md); the value at T and 2T is always exact.
NN_TRUE_EVERY = 10


#: the baselines with an oracle row in the NN sections (re-tuned on each test setting; ``--search coarse``).
NN_ORACLE = [*FIRST_ORDER, "adagrad"]


def nn_section(variant: str, n_problems: int, long_horizon: int | None = 2 * NN_T, title: str | None = None,
               oracle: bool = True) -> Section:
    """One NN-benchmark setting: baselines tuned on the MNIST-48 training objective (``tuned_as=""`` at T)
    and applied unchanged (the paper's protocol), every learned optimizer shipped for the env, and (``oracle``)
    the oracle rows ``NAME:oracle`` of :data:`NN_ORACLE`, re-tuned on the setting itself — except on ``mnist``,
    the training objective, where the oracle is the MNIST-tuned baseline."""
    policies = list(NN_POLICIES) + ([p + ORACLE_SUFFIX for p in NN_ORACLE] if oracle and variant != "mnist" else [])
    return Section(NN_ENV, policies, NN_T, long_horizon, variant=variant, n_problems=n_problems,
                   title=title or f"NNClassifier {variant}", tuned_as="", tuned_horizon=NN_T, true_every=NN_TRUE_EVERY)


def nn_sections(n_problems: int = 100, datasets: tuple[str, ...] | None = None) -> list[Section]:
    """Every test setting × dataset of the benchmark (:data:`l2o_gym.registry.VARIANTS`) at T and 2T, plus the
    10·T long-horizon check on held-out MNIST (on a separate draw of a tenth as many problems)."""
    from l2o_gym.registry import NN_DATASETS, NN_SETTINGS

    out = [nn_section(ds + (f"-{s}" if s else ""), n_problems)
           for s in NN_SETTINGS for ds in (datasets or NN_DATASETS)]
    out.append(nn_section("mnist", max(1, n_problems // 10), 10 * NN_T, title="NNClassifier mnist (10T)"))
    return out


def nn_full_sections() -> list[Section]:
    """The complete NN benchmark: 100 test problems per setting, every dataset (docs/nn-benchmark.md)."""
    return nn_sections(100)


def nn_small_sections(datasets: tuple[str, ...] | None = None, n_problems: int = 3) -> list[Section]:
    """A reduced NN benchmark that fits a 2-core CPU (the README's per-setting table): every setting × dataset
    at T and 2T with ``n_problems`` test problems; for MNIST also the 10T check (AdaGrad, the best MNIST-tuned
    baseline, and the two learned optimizers, 2 problems)."""
    from l2o_gym.registry import NN_DATASETS, NN_SETTINGS

    out = [nn_section(ds + (f"-{s}" if s else ""), n_problems)
           for ds in (datasets or NN_DATASETS) for s in NN_SETTINGS]
    if "mnist" in (datasets or NN_DATASETS):
        out.append(dataclasses.replace(nn_section("mnist", 2, 10 * NN_T, title="NNClassifier mnist (10T)"),
                                       policies=["adagrad", "lstm", "gps"]))
    return out


def nn_target_sections(n_problems: int = 100) -> list[Section]:
    """The supervised optimizer's home ground: held-out MNIST-48 at T and 2T (``n_problems`` test problems)."""
    return [nn_section("mnist", n_problems, title=f"NNClassifier mnist ({n_problems} problems)")]


def art_sections(n_problems: int = 100, n_long: int = 20) -> list[Section]:
    """The complete neural-art study (preset ``art-full``): ``n_problems`` held-out images (the paper used 100)
    at 64×64 with the training style at T; the long-horizon check at 10·T on ``n_long`` of them (a sample of that size:
    instance ``i`` of a sample depends on its size, so not the first ``n_long`` of the ``n_problems``);
    then the paper's transfer tests at T — 128×128 images (4× the pixels), the second style, and both —
    against the same baselines (tuned on 64×64 with the training style), as in the paper."""
    return [
        Section(ART_ENV, list(ART_POLICIES), ART_T, None, n_problems=n_problems),
        Section(ART_ENV, list(ART_POLICIES), ART_T, 10 * ART_T, n_problems=n_long,
                title=f"{ART_ENV} (10T, {n_long} images)"),
        *(Section(ART_ENV, list(ART_POLICIES), ART_T, None, variant=v, n_problems=n_problems, tuned_as="")
          for v in ("128", "style2", "128+style2")),
    ]


def convnet_sections(n_problems: int = 8, long_horizon: int | None = 1000) -> list[Section]:
    """The complete conv-net study (``--preset convnet``; Andrychowicz et al. §3.3, Figure 6): tuned first-order
    baselines and the learned optimizers on held-out problems at T = 100 and 1000 — all labels (multi-LSTM vs
    one shared LSTM), the unseen label subsets "5 of 10" and "2 of 10" (disjoint from LSTM-sub's training labels
    0–4: LSTM-sub vs the multi-LSTM trained on all labels) and MNIST (dataset transfer).

    The baselines use the hyperparameters tuned on all labels of the colour set in every section
    (``tuned_as=""``), like the learned optimizers, which were trained there: tuning each conv-net setting costs
    about an hour of CPU (docs/convnet.md)."""
    env, base, lt = "l2o/ConvNet-v0", CONV_FIRST_ORDER, long_horizon
    transfer = {"tuned_as": "", "n_problems": n_problems}
    return [
        Section(env, [*base, "mlstm", "mlstm-shared"], 100, lt, n_problems=n_problems, title="ConvNet — all labels"),
        Section(env, [*base, "mlstm", "mlstm-sub"], 100, lt, variant="labels5_test",
                title="ConvNet — 5 of 10 labels (5–9, unseen by LSTM-sub)", **transfer),
        Section(env, [*base, "mlstm", "mlstm-sub"], 100, lt, variant="labels2_test",
                title="ConvNet — 2 of 10 labels (8, 9, unseen by LSTM-sub)", **transfer),
        Section(env, [*base, "mlstm"], 100, lt, variant="mnist", title="ConvNet — MNIST (dataset transfer)",
                **transfer),
    ]


def convnet_quick_sections() -> list[Section]:
    """:func:`convnet_sections` at T = 100 only, 8 problems per section (15 minutes on one core of the 2-core
    CPU; the 10·T runs of the complete preset cost about ten times as much)."""
    return convnet_sections(n_problems=8, long_horizon=None)


def convnet_tiny_sections() -> list[Section]:
    """:func:`convnet_sections` at toy size (1 problem, T = 3 → 6): smoke runs and tests."""
    return [dataclasses.replace(s, horizon=3, long_horizon=6, n_problems=1) for s in convnet_sections()]


def tiny_sections() -> list[Section]:
    """The study's structure at toy size (3 problems, 2 where the section sets its own count; T/10, 2·T/10): for
    tests and smoke runs (seconds)."""
    out = []
    for sec in study_sections():
        t = max(2, sec.horizon // 10)
        out.append(dataclasses.replace(sec, horizon=t, long_horizon=2 * t if sec.long_horizon else None,
                                       n_problems=2 if sec.n_problems else 3))
    return out


PRESETS = {"study": study_sections, "study-tiny": tiny_sections, "art-full": art_sections,
           "convnet": convnet_sections, "convnet-quick": convnet_quick_sections, "convnet-tiny": convnet_tiny_sections,
           "nn-full": nn_full_sections,
           "nn-small": nn_small_sections, "nn-target": nn_target_sections,
           "nn-target-20": lambda: nn_target_sections(20),
           # the long-horizon verdict on held-out MNIST-48: 10 problems at T and 10·T (the last section of nn-full)
           "nn-10t": lambda: nn_sections(100, ("mnist",))[-1:],
           # one dataset each, to run the reduced benchmark as parallel processes
           **{f"nn-small-{ds}": (lambda ds=ds: nn_small_sections((ds,))) for ds in NN_DATASETS_}}


def restrict_policies(sections: list[Section], entries: list[str]) -> list[Section]:
    """``sections`` with only the policies named in ``entries`` (``--policies`` entries: ``NAME``,
    ``NAME=CKPT`` — the checkpoint replaces the section's —, ``BASELINE:oracle``), e.g. to re-run a preset for
    a new checkpoint alone; sections left with none are dropped. A name that no section has is a
    ``ValueError`` listing the ones they have."""
    wanted = {PolicySpec.parse(e).label: e for e in entries}
    out, used = [], set()
    for sec in sections:
        keep = []
        for p in sec.policies:
            label = PolicySpec.parse(p).label
            if label in wanted:
                keep.append(wanted[label] if "=" in wanted[label] else p)
                used.add(label)
        if keep:
            out.append(dataclasses.replace(sec, policies=keep))
    missing = [e for label, e in wanted.items() if label not in used]
    if missing:
        have = sorted({PolicySpec.parse(p).label for sec in sections for p in sec.policies})
        raise ValueError(f"policies {missing} are in none of the preset's sections (they have: {', '.join(have)})")
    return out


def preset_config(name: str, policies: list[str] | None = None, **kwargs: Any) -> CompareConfig:
    """A :class:`CompareConfig` for preset ``name`` (``kwargs``: ``out``, ``device``, ``seed``, ``command`` …);
    ``policies``: keep only these (:func:`restrict_policies`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    sections = PRESETS[name]()
    if policies:
        sections = restrict_policies(sections, policies)
    return CompareConfig(sections=sections, title=f"l2o-gym: RL vs supervised learned optimizers ({name})", **kwargs)


def _ratio(r: float | None) -> str:
    return "∞" if r is None else f"{r:.2f}"


def _label(entry: str) -> str:
    """The result label of a section's policy entry (``NAME``, ``NAME=CKPT``, ``NAME:oracle``; any case):
    ``--policies GPS=CKPT`` is labelled ``gps`` (:class:`~l2o_gym.experiments.compare.PolicySpec`)."""
    return PolicySpec.parse(entry).label


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
            kind = _label(name)
            if kind not in LEARNED_KIND:
                continue
            short, long = idx.get((sec.name, kind, sec.horizon)), idx.get((sec.name, kind, sec.long_horizon))
            if short is None or long is None:
                continue
            v = stability(short.final_mean, long.curve_mean[sec.horizon:], long.diverged_fraction, STABLE_RATIO)
            ratio = None if math.isinf(v.ratio) else v.ratio  # None: grew from exactly 0
            peak = None if math.isinf(v.peak_ratio) else v.peak_ratio  # as ratio: 0/0 is 1, x/0 (x > 0) is ∞
            finite, verdict = v.finite, v.verdict
            rows.append({"section": sec.name, "policy": kind, "kind": LEARNED_KIND[kind], "T": sec.horizon,
                         "long_T": sec.long_horizon, "f_T": short.final_mean, "f_long": long.final_mean,
                         "ratio": ratio, "worst_ratio": peak,
                         "diverged_fraction": long.diverged_fraction, "finite": finite,
                         "verdict": verdict})
    return rows


def _baselines(idx: dict[tuple[str, str, int], EvalResult], sec: Section, h: int) -> list[EvalResult]:
    """The tuned baselines' results of ``sec`` at horizon ``h`` (no learned policy, no oracle row)."""
    labels = [_label(p) for p in sec.policies]
    return [idx[(sec.name, p, h)] for p in labels
            if p not in LEARNED_KIND and not is_oracle(p) and (sec.name, p, h) in idx]


def versus_rows(results: list[EvalResult], sections: list[Section]) -> list[dict[str, Any]]:
    """Per section: the best tuned baseline and every learned policy at ``T`` (and the long horizon);
    ``row["diverged"]`` maps the same keys to the fraction of problems that diverged."""
    idx = _index(results)
    rows = []
    for sec in sections:
        horizons = [sec.horizon] + ([sec.long_horizon] if sec.long_horizon else [])
        row: dict[str, Any] = {"section": sec.name, "T": sec.horizon, "long_T": sec.long_horizon, "diverged": {}}
        for h in horizons:
            base = _baselines(idx, sec, h)
            if base:
                best = min(base, key=lambda r: r.final_mean)
                row[f"best_baseline@{h}"] = (best.policy, best.final_mean)
                row["diverged"][f"best_baseline@{h}"] = best.diverged_fraction
            for p in sec.policies:
                kind = _label(p)
                if kind in LEARNED_KIND and (sec.name, kind, h) in idx:
                    row[f"{kind}@{h}"] = idx[(sec.name, kind, h)].final_mean
                    row["diverged"][f"{kind}@{h}"] = idx[(sec.name, kind, h)].diverged_fraction
        rows.append(row)
    return rows


def paired_rows(results: list[EvalResult], sections: list[Section], n_boot: int = 1000) -> list[dict[str, Any]]:
    """Per section and learned policy, paired with the best tuned baseline at ``T`` on the same problems: the mean
    difference ``f_learned(θ_T) − f_baseline(θ_T)`` with its 95% percentile-bootstrap CI over the problems and the
    number of problems where the learned optimizer ends lower. Pairing removes the spread between problems
    (images, nets) that makes the unpaired CIs of two close means overlap."""
    idx = _index(results)
    rows = []
    for sec in sections:
        t = sec.horizon
        base = _baselines(idx, sec, t)
        if not base:
            continue
        best = min(base, key=lambda r: r.final_mean)
        for p in sec.policies:
            kind = _label(p)
            mine = idx.get((sec.name, kind, t))
            if kind not in LEARNED_KIND or mine is None or not mine.final_values or len(mine.final_values) != len(
                    best.final_values):  # results without per-problem values (older files) are not paired
                continue
            diff = np.asarray(mine.final_values, dtype=np.float64) - np.asarray(best.final_values, dtype=np.float64)
            low, high = bootstrap_mean_ci(diff[None, :], n_boot=n_boot, seed=0)
            rows.append({"section": sec.name, "T": t, "policy": kind, "baseline": best.policy,
                         "mean_diff": float(diff.mean()), "ci_low": float(low[0]), "ci_high": float(high[0]),
                         "lower": int((diff < 0).sum()), "n": int(diff.size),
                         "relative": float(diff.mean() / best.final_mean) if best.final_mean else None,
                         "diverged_fraction": mine.diverged_fraction,
                         "baseline_diverged_fraction": best.diverged_fraction})
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


def nn_rows(results: list[EvalResult], sections: list[Section]) -> list[dict[str, Any]]:
    """Per NN-benchmark section and horizon (T, 2T): the best MNIST-tuned baseline (its mean true objective at the
    horizon; ``best_baseline_auc`` is the lowest mean over the run of *any* baseline), the best oracle row, and for
    every learned optimizer run there its mean true objective at the horizon and over the run, how many baselines it
    is at or below (at the horizon) and its diverged fraction (``"learned"``)."""
    idx = _index(results)
    rows = []
    for sec in sections:
        if sec.env != NN_ENV:
            continue
        for h in [sec.horizon] + ([sec.long_horizon] if sec.long_horizon else []):
            base = _baselines(idx, sec, h)
            labels = [_label(p) for p in sec.policies]
            learned = {p: idx[(sec.name, p, h)] for p in labels if p in LEARNED_KIND and (sec.name, p, h) in idx}
            if not learned or not base:
                continue
            best = min(base, key=lambda r: r.final_mean)
            oracle = [idx[(sec.name, p, h)] for p in labels if is_oracle(p) and (sec.name, p, h) in idx]
            best_oracle = min(oracle, key=lambda r: r.final_mean) if oracle else None
            rows.append({
                "section": sec.name, "variant": sec.variant, "T": h,
                "n_problems": next(iter(learned.values())).n_problems,
                "best_baseline": best.policy, "best_baseline_f": best.final_mean,
                "best_baseline_auc": min(b.auc_mean for b in base),
                "best_oracle": best_oracle.policy if best_oracle else None,
                "best_oracle_f": best_oracle.final_mean if best_oracle else None,
                "n_baselines": len(base), "baselines": {b.policy: b.final_mean for b in base},
                "learned": {p: {"f": r.final_mean, "auc": r.auc_mean, "beats": sum(r.final_mean <= b.final_mean for b in base),
                                "diverged_fraction": r.diverged_fraction} for p, r in learned.items()},
            })
    return rows


def _table_head(title: str, intro: str, columns: list[str]) -> list[str]:
    """A report section's heading, its explanation and the header of its markdown table."""
    return [title, "", intro, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _oracle_cell(row: dict[str, Any]) -> str:
    """The best oracle row of an :func:`nn_rows` row, or — when the setting has none."""
    if not row.get("best_oracle"):
        return "—"
    return f"{row['best_oracle'].removesuffix(ORACLE_SUFFIX)} {fmt_number(row['best_oracle_f'])}"


def nn_summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown of :func:`nn_rows`."""
    if not rows:
        return []
    kinds = list(dict.fromkeys(k for r in rows for k in r["learned"]))
    lines = _table_head(
        "## NN benchmark (Li & Malik 2017): learned optimizers vs baselines tuned on MNIST-48, true objective",
        "Baselines were tuned on the MNIST-48 training objective at T = 400 only and applied unchanged; the learned "
        "optimizers were meta-trained on MNIST-48. Per learned optimizer: mean true objective at the iteration, mean "
        "over the run (in brackets; the best baseline's bracket is the lowest of any baseline), and `≤ n/m`: at or "
        "below n of the m baselines at the iteration; ⚠: some problems diverged. `oracle`: the best of the first-order "
        "baselines and AdaGrad re-tuned on that setting itself (`NAME:oracle` rows; — : not run).",
        ["setting", "iteration", "problems", "best baseline", "oracle", *kinds])
    for r in rows:
        oracle = _oracle_cell(r)
        cells = []
        for k in kinds:
            e = r["learned"].get(k)
            cells.append("—" if e is None else
                         f"{fmt_number(e['f'])} ({fmt_number(e['auc'])}) ≤ {e['beats']}/{r['n_baselines']}"
                         + (" ⚠" if e["diverged_fraction"] > 0 else ""))
        lines.append(f"| {r['section']} | {r['T']} | {r['n_problems']} | {r['best_baseline']} "
                     f"{fmt_number(r['best_baseline_f'])} ({fmt_number(r['best_baseline_auc'])}) | {oracle} | "
                     + " | ".join(cells) + " |")
    return [*lines, ""]


def nn_verdict_lines(rows: list[dict[str, Any]], long_rows: list[dict[str, Any]]) -> list[str]:
    """Markdown of one line per NN setting with a long horizon (the README's per-setting table): the best
    MNIST-tuned baseline and the oracle at ``T``, and per learned optimizer ``f(T) → f(long)``, how many of the
    MNIST-tuned baselines it is at or below at each horizon, and its long-horizon verdict
    (:func:`long_horizon_rows`); then the verdicts counted per learned optimizer."""
    by = {(r["section"], r["T"]): r for r in rows}
    verdict = {(r["section"], r["policy"]): r for r in long_rows}
    settings = [r for r in rows if any((r["section"], k) in verdict and verdict[(r["section"], k)]["T"] == r["T"]
                                       for k in r["learned"])]
    if not settings:
        return []
    kinds = list(dict.fromkeys(k for r in settings for k in r["learned"]))
    lines = _table_head(
        "## NN benchmark per setting: past the horizon",
        "Per setting: the best MNIST-tuned baseline and the oracle (re-tuned on the setting) at T; per learned "
        "optimizer its mean true objective `f(T) → f(long)`, `≤ a/m → b/m`: at or below a (b) of the m MNIST-tuned "
        "baselines at T (at the long horizon), and the long-horizon verdict (the table above).",
        ["setting", "problems", "best baseline at T", "oracle at T", *kinds])
    counts: dict[str, dict[str, int]] = {k: {} for k in kinds}
    for r in settings:
        cells = []
        for k in kinds:
            v = verdict.get((r["section"], k))
            long = by.get((r["section"], v["long_T"])) if v else None
            if v is None or long is None or k not in r["learned"] or k not in long["learned"]:
                cells.append("—")
                continue
            a, b = r["learned"][k], long["learned"][k]
            counts[k][v["verdict"]] = counts[k].get(v["verdict"], 0) + 1
            cells.append(f"{fmt_number(a['f'])} → {fmt_number(b['f'])} (≤ {a['beats']}/{r['n_baselines']} → "
                         f"{b['beats']}/{long['n_baselines']}) {v['verdict']}")
        lines.append(f"| {r['section']} | {r['n_problems']} | {r['best_baseline']} {fmt_number(r['best_baseline_f'])} | "
                     f"{_oracle_cell(r)} | " + " | ".join(cells) + " |")
    lines.append("")
    for k in kinds:
        total = sum(counts[k].values())
        lines.append(f"- {k}: " + ", ".join(f"{counts[k].get(v, 0)} {v}" for v in VERDICTS) + f" of {total} settings.")
    return [*lines, ""]


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
        "20-unit sigmoid MLP's). `f(T) → f(10T)`; lower is better; — : no checkpoint for that problem; ⚠: some "
        "problems diverged (a diverged problem keeps its last finite objective).",
        "",
        "| problem | T | best tuned baseline | " + " | ".join(f"{k} — {LEARNED_KIND[k]}" for k in learned) + " |",
        "|---|---|---|" + "---|" * len(learned),
    ]
    for row in vs:
        t, lt = row["T"], row["long_T"]

        def warn(key: str) -> str:
            return " ⚠" if row["diverged"].get(key, 0.0) > 0 else ""

        def cell(key: str) -> str:
            a, b = row.get(f"{key}@{t}"), row.get(f"{key}@{lt}") if lt else None
            if a is None:
                return "—"
            if isinstance(a, tuple):
                s = f"{a[0]} {fmt_number(a[1])}{warn(f'{key}@{t}')}"
                return s + (f" → {b[0]} {fmt_number(b[1])}{warn(f'{key}@{lt}')}" if b else "")
            return (fmt_number(a) + warn(f"{key}@{t}")
                    + (f" → {fmt_number(b)}{warn(f'{key}@{lt}')}" if b is not None else ""))

        lines.append(f"| {row['section']} | {t}" + (f" / {lt}" if lt else "") + " | " + cell("best_baseline") + " | "
                     + " | ".join(cell(k) for k in learned) + " |")
    pr = paired_rows(results, sections)
    if pr:
        lines += [
            "",
            "## Paired on the same problems: each learned optimizer minus the best tuned baseline at T",
            "",
            "Mean over the problems of f_learned(θ_T) − f_baseline(θ_T) with a 95% bootstrap CI (negative: the learned "
            "optimizer ends lower), and on how many problems it ends lower. Pairing removes the spread between "
            "problems that makes the CIs of two close means overlap. ⚠: some problems of that optimizer diverged.",
            "",
            "| problem | T | policy | best baseline | mean difference [95% CI] | relative | lower on |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in pr:
            rel = row["relative"]
            # next to a baseline at ~0 (L-BFGS at 1e-12) a percentage is meaningless: the ratio of the means instead
            rel = "—" if rel is None else f"{100 * rel:+.2f}%" if abs(rel) <= 10 else f"{1 + rel:.3g}× the baseline"
            pol = row["policy"] + (" ⚠" if row["diverged_fraction"] > 0 else "")
            base = row["baseline"] + (" ⚠" if row["baseline_diverged_fraction"] > 0 else "")
            lines.append(f"| {row['section']} | {row['T']} | {pol} | {base} | "
                         f"{row['mean_diff']:+.3g} [{row['ci_low']:+.3g}, {row['ci_high']:+.3g}] | {rel} | "
                         f"{row['lower']}/{row['n']} |")
    lh = long_horizon_rows(results, sections)
    lines += [
        "",
        f"## Long horizon: does each learned optimizer stay finite and within {STABLE_RATIO}× of f(θ_T) up to the long "
        "horizon L?",
        "",
        "L is 10·T (2T in the NN benchmark; each row says). `ratio` = f(θ_L) / f(θ_T); `peak` = the largest mean "
        "objective at any t in [T, L], over f(θ_T) "
        "(an optimizer that wanders off and comes back shows there). Verdicts: *stable* — finite, ratio and peak ≤ "
        f"{STABLE_RATIO}; *recovers* — finite and ratio ≤ {STABLE_RATIO} but a peak above it; *grows*; *diverges*.",
        "",
        "| problem | policy | T → L | f(θ_T) | f(θ_L) | ratio | peak | diverged at L | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in lh:
        lines.append(f"| {row['section']} | {row['policy']} — {row['kind']} | {row['T']} → {row['long_T']} | "
                     f"{fmt_number(row['f_T'])} | {fmt_number(row['f_long'])} | {_ratio(row['ratio'])} | {_ratio(row['worst_ratio'])} | "
                     f"{fmt_percent(row['diverged_fraction'])} | **{row['verdict']}** |")
    se = sample_efficiency_rows(results, references)
    lines += [
        "",
        "## Sample efficiency (from the training summaries in the shipped checkpoints)",
        "",
        "Env steps (optimizee iterations, summed over training problems and samples) until the policy's mean "
        "final objective on the `val` problems of its training run first reached the best tuned baseline's (line searches included) and "
        "the best first-order baseline's. The LSTM is trained by backpropagation, not RL: its optimizee steps are "
        "listed for scale only. Both targets come from the tuning protocol of `l2o_gym.agents.tuning` (the tuned "
        "file's `val_references`, re-derived on each run's own `val` problems); a row marked (checkpoint) shows the "
        "targets stored at training time.",
        "",
        "| env | policy | env steps (total) | best baseline (val) | steps to reach it | best first-order (val) | steps to reach it |",
        "|---|---|---|---|---|---|---|",
    ]

    def steps(v: Any, b: dict[str, Any]) -> str:  # no target (val_final None): nothing to reach, not "not reached"
        return "—" if b.get("val_final") is None else "not reached" if v is None else f"{int(v):,}"

    def target(b: dict[str, Any]) -> str:  # val_final None: the run tuned no baselines
        return "—" if b.get("val_final") is None else f"{b.get('name', '?')} {fmt_number(float(b['val_final']))}"

    for row in se:
        if "env_steps_total" in row:
            b, fo = row.get("baseline", {}), row.get("first_order_baseline", {})
            mark = " (checkpoint)" if row.get("reference") == "checkpoint" else ""
            lines.append(
                f"| {row['env']} | {row['policy']}{mark} | {int(row['env_steps_total']):,} | {target(b)} | "
                f"{steps(row.get('env_steps_to_reach_baseline'), b)} | {target(fo)} | "
                f"{steps(row.get('env_steps_to_reach_first_order'), fo)} |")
        elif "optimizee_steps_to_checkpoint" in row:
            lines.append(f"| {row['env']} | {row['policy']} | {row['optimizee_steps_to_checkpoint']:,} (BPTT) | — | — | — | — |")
    ratios = _gps_ppo_ratio(se)
    if ratios:
        lines += ["", *ratios]
    lines.append("")
    nn = nn_rows(results, sections)
    lines += nn_summary_lines(nn)
    lines += nn_verdict_lines(nn, lh)
    return lines, {"versus": vs, "paired": pr, "long_horizon": lh, "sample_efficiency": se, "nn_benchmark": nn}


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
                if g is not None and p:  # p = 0: PPO's initial policy (validated first) already reached it
                    out.append(f"- {env}, {what}: GPS needed {g / p:.3g}× the env steps of PPO ({int(g):,} vs {int(p):,}).")
                else:
                    out.append(f"- {env}, {what}: GPS {'not reached' if g is None else f'{int(g):,}'}, "
                               f"PPO {'not reached' if p is None else f'{int(p):,}'} env steps.")
    return out


def run_study(cfg: CompareConfig, progress: bool = True) -> list[EvalResult]:
    """Evaluate every section of ``cfg``; write ``results.json`` (runs + summary tables), ``report.md``, plots."""
    from l2o_gym.experiments.art import art_pictures, is_art_section

    results = run_jobs(cfg, progress)
    sections = cfg.resolve_sections()
    from l2o_gym.experiments.tuning import load_val_references

    lines, tables = summary_lines(results, sections, load_val_references(cfg.tuned))
    out = Path(cfg.out)
    pictured: set[tuple[str, str | None, int]] = set()
    for sec in sections:  # neural art: the images each optimizer reaches after T steps, once per problem setting
        if is_art_section(sec, cfg) and (sec.env, sec.variant, sec.horizon) not in pictured:
            pictured.add((sec.env, sec.variant, sec.horizon))
            lines += art_pictures(sec, cfg, out, n_images=min(2, sec.n_problems or cfg.n_problems))[1]
    write_results(results, out, {"study": tables}, workers=cfg.resolve_workers(len(results)))
    write_report(results, out, cfg, lines)
    return results

"""Regression tests from a review of the experiment layer (evaluation, compare, study)."""

from __future__ import annotations

import numpy as np
import pytest

from l2o_gym.agents.baselines import make_baseline
from l2o_gym.experiments.compare import CompareConfig, Section, plan
from l2o_gym.experiments.evaluation import EvalResult, bootstrap_mean_ci, evaluate_horizons
from l2o_gym.experiments import study


def _result(section: str, policy: str, horizon: int, curve: list[float], diverged: float = 0.0) -> EvalResult:
    return EvalResult(env="l2o/Quadratic-v0", policy=policy, horizon=horizon, n_problems=1, seed=0,
                      final_mean=curve[-1], final_median=curve[-1], log10_final_mean=0.0, auc_mean=0.0,
                      diverged_fraction=diverged, grad_evals=float(horizon), wall_s=0.0, curve_mean=curve,
                      curve_ci_low=curve, curve_ci_high=curve, extra={"section": section}, final_values=[curve[-1]])


def test_evaluate_horizons_names_a_bad_true_every_instead_of_dividing_by_it():
    with pytest.raises(ValueError, match="true_every must be a positive integer, got 0"):
        evaluate_horizons(make_baseline("sgd", lr=0.01), "l2o/Quadratic-v0", horizons=(2, 4), n_problems=2,
                          true_every=0)


def test_evaluate_refuses_zero_bootstrap_resamples_before_the_rollout(monkeypatch):
    from l2o_gym.experiments import evaluation

    def no_rollout(*args, **kwargs):
        raise AssertionError("the rollout ran before n_boot was checked")

    monkeypatch.setattr(evaluation, "rollout", no_rollout)
    with pytest.raises(ValueError, match="n_boot must be a positive integer, got 0"):
        evaluate_horizons(make_baseline("sgd", lr=0.01), "l2o/Quadratic-v0", horizons=(3,), n_problems=2, n_boot=0)
    with pytest.raises(ValueError, match="n_boot must be a positive integer, got 0"):
        bootstrap_mean_ci(np.ones((2, 3)), n_boot=0)
    for level in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match="level must be in \\(0, 1\\)"):
            bootstrap_mean_ci(np.ones((2, 3)), level=level)


def test_plan_checks_a_sections_true_every_and_problem_count(tmp_path):
    sec = Section("l2o/Quadratic-v0", ["sgd"], 4, 8, n_problems=2, true_every=0)
    with pytest.raises(ValueError, match="true_every must be a positive integer, got 0"):
        plan(CompareConfig(sections=[sec], out=str(tmp_path)))
    sec = Section("l2o/Quadratic-v0", ["sgd"], 4, 8, n_problems=0)  # not silently the config's 100
    with pytest.raises(ValueError, match="must be positive, got 0"):
        plan(CompareConfig(sections=[sec], out=str(tmp_path)))


def test_long_horizon_peak_of_a_zero_objective_is_one_like_its_ratio():
    sec = Section("l2o/Quadratic-v0", ["lstm"], 2, 4)
    results = [_result(sec.name, "lstm", 2, [1.0, 0.0, 0.0]), _result(sec.name, "lstm", 4, [1.0, 0.0, 0.0, 0.0, 0.0])]
    (row,) = study.long_horizon_rows(results, [sec])
    assert row["verdict"] == "stable" and row["ratio"] == 1.0
    assert row["worst_ratio"] == 1.0  # was None, printed "∞" beside a *stable* verdict


def test_sample_efficiency_without_a_target_is_not_reported_as_not_reached(monkeypatch):
    training = {"env_steps_total": 100, "baseline": {"name": None, "val_final": None},
                "first_order_baseline": {"name": "adam", "val_final": 0.5},
                "env_steps_to_reach_baseline": None, "env_steps_to_reach_first_order": None}
    monkeypatch.setattr(study, "read_policy_config", lambda path: {"training": training})
    res = _result("s", "gps", 2, [1.0, 0.5, 0.4])
    res.extra["checkpoint"] = "x.safetensors"
    lines, _ = study.summary_lines([res], [])
    (line,) = [ln for ln in lines if ln.startswith("| l2o/Quadratic-v0 | gps")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:] == ["—", "—", "adam 0.5", "not reached"]

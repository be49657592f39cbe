"""Coarse-to-fine learning-rate tuning (used for the expensive conv-net settings)."""

from __future__ import annotations

import json

import pytest

from l2o_gym.experiments.coarse_tuning import COARSE_K, coarse_tune, coarse_tune_baseline
from l2o_gym.experiments.tuning import LR_GRID, load_tuned, tuned_entry


def test_coarse_tuning_matches_the_full_grid_on_a_cheap_family(tmp_path):
    from l2o_gym.agents.baselines import make_baseline
    from l2o_gym.experiments.evaluation import evaluate

    kw = {"n_problems": 8, "horizon": 20}
    e = coarse_tune_baseline("sgd", "l2o/Quadratic-v0", **kw)
    assert e["hparams"]["lr"] in LR_GRID and e["grid"].startswith("coarse") and e["n_evaluated"] <= len(COARSE_K) + 4
    # the full grid's best stable lr is within a quarter decade of the coarse pick on this smooth objective
    full = {lr: evaluate(make_baseline("sgd", lr=lr), "l2o/Quadratic-v0", split="train", n_boot=10, **kw)
            for lr in LR_GRID}
    stable = [lr for lr, r in full.items() if r.diverged_fraction == 0]
    best = min(stable, key=lambda lr: full[lr].final_mean)
    assert abs(LR_GRID.index(best) - LR_GRID.index(e["hparams"]["lr"])) <= 1
    with pytest.raises(ValueError, match="test split"):
        coarse_tune_baseline("sgd", "l2o/Quadratic-v0", split="test")
    with pytest.raises(ValueError, match="learning rate"):
        coarse_tune_baseline("lbfgs", "l2o/Quadratic-v0")
    out = tmp_path / "tuned.json"
    coarse_tune("l2o/Quadratic-v0", ["momentum"], out=out, command="pytest", n_problems=4, horizon=10)
    entry = tuned_entry(load_tuned(out), "l2o/Quadratic-v0", "momentum", horizon=10)
    assert entry["hparams"]["momentum"] == 0.9 and entry["command"] == "pytest"
    assert "l2o/Quadratic-v0@T10" in json.loads(out.read_text())["envs"]

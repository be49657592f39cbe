"""The one tuning protocol (l2o_gym.agents.tuning) and the tuned file it writes (l2o_gym.experiments.tuning)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import pytest
import torch

from l2o_gym.agents import tuning
from l2o_gym.agents.tuning import GRIDS, LR_GRID, MOMENTUM_GRID, grid_configs, penalized_final, tune_baseline
from l2o_gym.core import CoreConfig
from l2o_gym.experiments.tuning import tune_setting
from l2o_gym.policy import run_policy
from l2o_gym.agents.baselines import FIRST_ORDER, GradientDescent
from l2o_gym.problems import ProblemBatch
from l2o_gym.problems.base import ProblemFamily
from l2o_gym.problems.quadratic import Quadratic
from l2o_gym.registry import env_family

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _diagonal_quadratics(weights: list[float], dim: int = 2) -> ProblemBatch:
    """Quadratics ``f(x) = Σ_i (w x_i − 1)²`` with one curvature ``w`` per problem (GD on it: ``|1 − 2 lr w²|``)."""
    n = len(weights)
    w = torch.tensor(weights, dtype=torch.float64)
    W = w[:, None, None] * torch.eye(dim, dtype=torch.float64).expand(n, dim, dim)
    return ProblemBatch(family=Quadratic(dim=dim), split="train", data={"W": W.clone(), "y": torch.ones(n, dim, dtype=torch.float64)},
                        x0=torch.zeros(n, dim, dtype=torch.float64), seeds=torch.arange(n))


def test_momentum_and_nag_grids_are_joint_and_cover_every_pair():
    for name in ("momentum", "nag"):
        pairs = {(c["momentum"], c["lr"]) for c in grid_configs(name)}
        assert pairs == set(itertools.product(MOMENTUM_GRID, LR_GRID))
    assert 0.0 in MOMENTUM_GRID and max(MOMENTUM_GRID) >= 0.99 and 0.95 in MOMENTUM_GRID
    # every step-size baseline has a grid over lr; line searches have nothing to tune
    assert all("lr" in GRIDS[n] for n in FIRST_ORDER) and GRIDS["cg"] == {} and GRIDS["lbfgs"] == {}
    with pytest.raises(ValueError, match="no tuning grid for baseline 'adagrad_x'.*GRIDS"):
        grid_configs("adagrad_x")


def test_joint_tuning_evaluates_every_momentum_with_every_stable_lr():
    problems = env_family("l2o/Quadratic-v0").sample(6, "train", 0)
    res = tune_baseline("nag", problems, 10)
    seen = {(c.hparams["momentum"], c.hparams["lr"]) for c in res.candidates}
    for mu in MOMENTUM_GRID:
        lrs = [lr for m, lr in seen if m == mu]
        # each μ is scanned from the smallest lr up to two consecutive all-diverged ones (or the end of the grid)
        assert lrs and min(lrs) == LR_GRID[0]
        top = LR_GRID.index(max(lrs))
        assert set(lrs) == set(LR_GRID[: top + 1])
        if top < len(LR_GRID) - 1:
            tail = [c for c in res.candidates if c.hparams["momentum"] == mu][-2:]
            assert all(c.diverged_fraction == 1.0 for c in tail)
    assert res.best == min(res.candidates, key=lambda c: c.score)


def test_a_configuration_diverging_on_one_problem_is_penalized_not_dropped(monkeypatch):
    # Seven problems with curvature 1 and one with curvature 3: lr 0.45 contracts the error 10× per step on the
    # seven (the best-looking step) but multiplies it by 7.1 on the eighth, which diverges; lr 0.1 is stable.
    problems = _diagonal_quadratics([1.0] * 7 + [3.0])
    monkeypatch.setitem(GRIDS, "sgd", {"lr": (0.05, 0.1, 0.45)})
    monkeypatch.setattr(tuning, "EDGE_STEPS", (0, 0))  # the score and margin alone (the edge extension: below)
    res = tune_baseline("sgd", problems, 20)
    by_lr = {c.hparams["lr"]: c for c in res.candidates}
    assert set(by_lr) == {0.05, 0.1, 0.45}  # the diverging configuration was run and scored
    fast = by_lr[0.45]
    assert fast.diverged_fraction == pytest.approx(1 / 8)
    traj = run_policy(GradientDescent(0.45), problems, 20, CoreConfig(horizon=20, history=1))
    final = traj.losses[-1]
    assert torch.median(final[:7]) < torch.median(run_policy(GradientDescent(0.1), problems, 20).losses[-1][:7])
    threshold = CoreConfig().blowup * (traj.losses[0].abs() + 1)
    expected = torch.where(traj.state.terminated, threshold, final).mean()
    assert fast.penalized_mean == pytest.approx(float(expected))  # the diverged problem pays the core's penalty
    assert fast.penalized_mean > fast.final_mean  # ... not its last finite objective
    assert torch.equal(penalized_final(traj), torch.where(traj.state.terminated, traj.state.threshold, traj.state.loss))
    # the margin: lr 0.1 is the lowest penalized mean, but its next larger step (0.45) fails, so 0.05 is chosen
    assert by_lr[0.1].penalized_mean < by_lr[0.05].penalized_mean < fast.penalized_mean
    assert not fast.stable and by_lr[0.1].stable and by_lr[0.05].stable
    assert by_lr[0.1].score == fast.penalized_mean and by_lr[0.05].score == by_lr[0.05].penalized_mean
    assert res.hparams == {"lr": 0.05} and res.value == by_lr[0.05].penalized_mean
    # a stable but worse next step does not move the choice: without the curvature-3 problem lr 0.45 is the best
    # (error factor 0.1 per step; 0.8 gives 0.6)
    monkeypatch.setitem(GRIDS, "sgd", {"lr": (0.1, 0.45, 0.8)})
    easy = tune_baseline("sgd", _diagonal_quadratics([1.0] * 4), 20)
    assert [c.stable for c in easy.candidates] == [True, True, True]
    assert easy.hparams == {"lr": 0.45} and all(c.score == c.penalized_mean for c in easy.candidates)
    # when every configuration diverges somewhere, the least penalized one is selected (finite score, no inf)
    monkeypatch.setitem(GRIDS, "sgd", {"lr": (0.45, 0.5)})
    both = tune_baseline("sgd", problems, 20)
    assert all(c.diverged_fraction > 0 for c in both.candidates)
    assert both.best == min(both.candidates, key=lambda c: c.score) and torch.isfinite(torch.tensor(both.value))


def test_the_edge_extension_walks_past_the_grid_until_the_selection_is_inside_it():
    # GD on f = Σ (w x_i − 1)² contracts the error by |1 − 2 lr w²| per step: with w² = 0.0025 the best rate is
    # 200, far above the grid's largest (10), where a plain grid search would stop
    problems = _diagonal_quadratics([0.05] * 4)
    res = tune_baseline("sgd", problems, 20)
    lrs = [c.hparams["lr"] for c in res.candidates]
    assert lrs == sorted(lrs) and set(LR_GRID) <= set(lrs)
    # factor 0.11 at 177.8 (the selection), 0.58 at 316.2 (its evaluated, stable neighbour: no margin); the walk
    # went up one quarter decade at a time and stopped there
    assert res.hparams == {"lr": 177.828} and lrs[len(LR_GRID):] == list(tuning.LR_LADDER[37:43])
    assert res.n_evaluated == len(LR_GRID) + 6
    # the walk never passes the ladder's end: a tenfold flatter problem wants 20,000 and gets 1e4, the last rung
    flat = tune_baseline("sgd", _diagonal_quadratics([0.005] * 4), 20)
    assert flat.hparams == {"lr": tuning.LR_LADDER[-1]} == {"lr": 1e4}
    # momentum: only the selection's μ is extended; the others keep their grid scans
    mom = tune_baseline("momentum", _diagonal_quadratics([0.005] * 4), 20)
    extended = {c.hparams["momentum"] for c in mom.candidates if c.hparams["lr"] > LR_GRID[-1]}
    assert extended == {0.99} == {mom.best.hparams["momentum"]} and mom.best.hparams["lr"] == 100.0
    # where the grid's selection is inside the grid nothing is added (the standard quadratic: see the next tests)
    inside = tune_baseline("sgd", env_family("l2o/Quadratic-v0").sample(6, "train", 0), 10)
    assert all(c.hparams["lr"] in LR_GRID for c in inside.candidates)


def test_tuning_is_deterministic_and_shared_by_the_agents():
    problems = env_family("l2o/LogisticRegression-v0").sample(8, "val", 3, dtype=torch.float64)
    a = tuning.tune_baselines(("sgd", "momentum", "cg"), problems, 8)
    b = tuning.tune_baselines(("sgd", "momentum", "cg"), problems, 8)
    assert a == b
    lr, value = tuning.tuned_gd_step(problems, 8)
    assert {"lr": lr} == a["sgd"][0] and value == a["sgd"][1]
    name, hp, value = tuning.best_baseline(("sgd", "momentum"), problems, 8)
    assert value == min(a["sgd"][1], a["momentum"][1]) and hp == a[name][0]
    # μ = 0 is plain gradient descent: momentum's grid holds SGD's runs, so its selection score is never worse
    sgd, mom = tune_baseline("sgd", problems, 8), tune_baseline("momentum", problems, 8)
    assert [c.penalized_mean for c in mom.candidates if c.hparams["momentum"] == 0.0] == [
        c.penalized_mean for c in sgd.candidates]
    assert mom.best.score <= sgd.best.score
    assert tuning.FIRST_ORDER is FIRST_ORDER  # one meaning of "first-order baseline" everywhere


def test_tune_never_reads_test_and_the_script_writes_the_protocol(monkeypatch, tmp_path, capsys):
    seen = []
    orig = ProblemFamily.sampler

    def spy(self, split="train", *args, **kwargs):
        seen.append(split)
        return orig(self, split, *args, **kwargs)

    monkeypatch.setattr(ProblemFamily, "sampler", spy)
    spec = importlib.util.spec_from_file_location("_script_tune_baselines", SCRIPTS / "tune_baselines.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "tuned.json"
    argv = ["--env", "l2o/Quadratic-v0", "--policies", "sgd", "nag", "--n-problems", "4", "--horizon", "5", "--out", str(out)]
    assert mod.main(argv) == 0
    assert seen and set(seen) == {"train"}
    data = json.loads(out.read_text())
    entry = data["envs"]["l2o/Quadratic-v0@T5"]["nag"]
    assert entry["command"] == "python scripts/tune_baselines.py " + " ".join(argv)
    assert entry["protocol"] == data["protocol"]["id"] and set(entry["hparams"]) == {"lr", "momentum"}
    assert data["protocol"]["grids"]["nag"]["momentum"] == list(MOMENTUM_GRID)
    assert "train score" in capsys.readouterr().out
    assert entry["search"] == "grid"
    # several variants in one call, each its own setting; "none" is the plain env; the coarse search is recorded
    argv = ["--env", "l2o/MLP-v0", "--policies", "sgd", "--n-problems", "1", "--horizon", "2", "--variant", "none",
            "relu", "--search", "coarse", "--out", str(out)]
    assert mod.main(argv) == 0
    envs = json.loads(out.read_text())["envs"]
    for key in ("l2o/MLP-v0@T2", "l2o/MLP-v0+relu@T2"):
        assert envs[key]["sgd"]["search"] == "coarse" and envs[key]["sgd"]["n_evaluated"] < len(LR_GRID)
    assert envs["l2o/MLP-v0+relu@T2"]["sgd"]["variant"] == "relu"
    assert "l2o/Quadratic-v0@T5" in envs  # merged, not replaced


def test_a_test_split_batch_is_refused_even_when_passed_in():
    # the refusal reads the batch's own split, not only the split argument (tune_setting(problems=...) trusted it)
    test_problems = env_family("l2o/Quadratic-v0").sample(2, "test", 0)
    with pytest.raises(ValueError, match="must not read the test split"):
        tune_baseline("sgd", test_problems, 3)
    with pytest.raises(ValueError, match="must not read the test split"):
        tune_setting("sgd", "l2o/Quadratic-v0", problems=test_problems, horizon=3)


def test_study_sample_efficiency_uses_the_protocol_targets():
    from types import SimpleNamespace

    from l2o_gym.agents.common import steps_to_reach
    from l2o_gym.checkpoint import read_policy_config
    from l2o_gym.experiments.compare import pretrained_dir
    from l2o_gym.experiments.study import sample_efficiency_rows
    from l2o_gym.experiments.tuning import val_reference_key

    path = pretrained_dir() / "gps_LogisticRegression.safetensors"
    config = read_policy_config(path)
    tc, curve = config["train_config"], config["training"]["curve"]
    result = SimpleNamespace(env=tc["env_id"], policy="gps", extra={"checkpoint": str(path)})
    stored = sample_efficiency_rows([result])[0]
    assert stored["reference"] == "checkpoint" and stored["baseline"] == config["training"]["baseline"]
    target = curve[len(curve) // 2][1]  # a target the stored validation curve reaches half way
    key = val_reference_key(tc["env_id"], tc["horizon"], tc["n_val"], tc["seed"], tuple(tc["baselines"]))
    refs = {key: {"baseline": {"name": "cg", "val_final": target}, "protocol": "p",
                  "first_order_baseline": {"name": "nag", "val_final": 1e-9}}}
    row = sample_efficiency_rows([result], refs)[0]
    assert row["reference"] == "p" and row["baseline"] == {"name": "cg", "val_final": target}
    assert row["env_steps_to_reach_baseline"] == steps_to_reach(curve, target) is not None
    assert row["env_steps_to_reach_first_order"] is None  # 1e-9 is never reached


def test_spread_script_usage_errors_exit_2(capsys):
    spec = importlib.util.spec_from_file_location("_script_tuning_spread", SCRIPTS / "tuning_spread.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for argv, match in ((["--env", "l2o/Quadratic-v0", "--n-test", "0"], "argument --n-test: expected a positive integer, got '0'"),
                        ([], "give --env ID"), (["--env", "l2o/MLP-v0", "--variant", "tanh"], "unknown variant 'tanh'")):
        with pytest.raises(SystemExit) as exc:
            mod.main(argv)
        assert exc.value.code == 2 and match in capsys.readouterr().err


def test_seed_spread_is_recorded_in_the_tuned_file(tmp_path):
    from l2o_gym.experiments.tuning import record_spread, seed_spread

    spread = seed_spread("l2o/Quadratic-v0", ["sgd"], seeds=[0, 1], n_problems=4, horizon=5, n_test=6)
    row = spread["sgd"]
    assert row["seeds"] == [0, 1] and len(row["hparams"]) == 2 and len(row["test_log10_final_mean"]) == 2
    assert row["log10_spread"] == pytest.approx(max(row["test_log10_final_mean"]) - min(row["test_log10_final_mean"]))
    assert spread == seed_spread("l2o/Quadratic-v0", ["sgd"], seeds=[0, 1], n_problems=4, horizon=5, n_test=6)
    data = record_spread(tmp_path / "t.json", "l2o/Quadratic-v0@T5", spread, "cmd")
    assert json.loads((tmp_path / "t.json").read_text())["stability"]["l2o/Quadratic-v0@T5"]["sgd"] == json.loads(
        json.dumps(row)) and data["protocol"]["id"]


def test_coarse_search_is_the_same_protocol_on_fewer_learning_rates():
    problems = env_family("l2o/Quadratic-v0").sample(8, "train", 0)
    for name in ("sgd", "momentum"):
        full = tune_baseline(name, problems, 20)
        coarse = tune_baseline(name, problems, 20, search="coarse")
        # momentum keeps every μ of the joint grid; each lr scan runs ~8 of the 25 learning rates
        mus = {c.hparams.get("momentum") for c in coarse.candidates}
        assert mus == ({None} if name == "sgd" else set(MOMENTUM_GRID))
        per_scan = coarse.n_evaluated / len(mus)
        assert per_scan <= len(tuning.COARSE_K) + 2 * len(tuning.COARSE_REFINE) + 1 < len(LR_GRID)
        # the score of a configuration does not depend on the search; the margin's neighbour was evaluated
        by_hp = {tuple(sorted(c.hparams.items())): c for c in full.candidates}
        shared = [c for c in coarse.candidates if tuple(sorted(c.hparams.items())) in by_hp]
        assert len(shared) >= coarse.n_evaluated // 2  # the rest: beyond where the full scan stopped (all diverged)
        for c in shared:
            assert c.penalized_mean == by_hp[tuple(sorted(c.hparams.items()))].penalized_mean
        up = {**coarse.best.hparams, "lr": LR_GRID[LR_GRID.index(coarse.best.hparams["lr"]) + 1]}
        assert any(c.hparams == up for c in coarse.candidates)
        # on this smooth objective the coarse pick is the grid's pick, or its grid neighbour with a score as good
        # up to 10 %
        assert abs(LR_GRID.index(coarse.best.hparams["lr"]) - LR_GRID.index(full.best.hparams["lr"])) <= 1
        assert coarse.best.score <= 1.1 * full.best.score
    with pytest.raises(ValueError, match="unknown search 'random'.*grid, coarse"):
        tune_baseline("sgd", problems, 20, search="random")

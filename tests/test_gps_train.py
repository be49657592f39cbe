"""GPS end to end on a tiny logistic-regression family, the Policy wrapper, checkpoints and resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from l2o_gym import core, make_family, run_policy
from l2o_gym.agents.baselines import GradientDescent
from l2o_gym.agents.gps import GaussianMLP, GPSPolicy, load_gps_policy, load_policy
from l2o_gym.agents.gps.badmm import BADMMConfig
from l2o_gym.agents.gps.global_policy import RegressionConfig
from l2o_gym.agents.gps.train import GPSTrainConfig, train_gps
from l2o_gym.agents.tuning import LR_GRID
from l2o_gym.checkpoint import CheckpointError
from l2o_gym.core import CoreConfig

TINY = GPSTrainConfig(
    env_id="l2o/LogisticRegression-v0", n_conditions=12, horizon=10, history=3, iterations=4, n_val=50,
    baselines=("sgd",), badmm=BADMMConfig(regression=RegressionConfig(iterations=300)),
)


def test_gps_beats_tuned_gradient_descent_on_val(tmp_path):
    summary = train_gps(TINY, tmp_path, progress=False, tensorboard=False)
    val = make_family("logistic_regression").sample(TINY.n_val, "val", TINY.seed, dtype=torch.float64)
    gd = min(float(run_policy(GradientDescent(lr), val, TINY.horizon).losses[-1].mean()) for lr in LR_GRID)
    policy = load_gps_policy(tmp_path / "gps_best.safetensors", env_id=TINY.env_id, dim=3)
    gps = float(run_policy(policy, val, TINY.horizon, policy.core_config).losses[-1].mean())
    assert gps == pytest.approx(summary["best_val"], rel=1e-6)
    assert gps < gd, (gps, gd)
    assert summary["env_steps_to_reach_baseline"] is not None
    assert summary["dropped_samples"] == 0


def test_resume_continues_bit_identically(tmp_path):
    cfg = dataclasses.replace(TINY, iterations=2, n_conditions=4, n_val=8,
                              badmm=BADMMConfig(regression=RegressionConfig(iterations=50)))
    straight = train_gps(cfg, tmp_path / "a", progress=False, tensorboard=False)
    train_gps(dataclasses.replace(cfg, iterations=1), tmp_path / "b", progress=False, tensorboard=False)
    resumed = train_gps(cfg, tmp_path / "b", resume=True, progress=False, tensorboard=False)
    assert [h["val_final"] for h in resumed["history"]] == [h["val_final"] for h in straight["history"]]
    # another val set or problem layout would mix two runs: refused, naming each setting
    with pytest.raises(CheckpointError, match=r"n_val \(8, now 4\), seed \(0, now 5\)"):
        train_gps(dataclasses.replace(cfg, iterations=3, n_val=4, seed=5), tmp_path / "b", resume=True,
                  progress=False, tensorboard=False)


def _policy(history=3, d=3):
    torch.manual_seed(0)
    cc = CoreConfig(horizon=10, history=history)
    model = GaussianMLP(core.obs_dim(cc, d), d).double()
    return GPSPolicy(model, cc, d, "l2o/LogisticRegression-v0", max_step=1.0)


def test_checkpoint_round_trip_and_mismatch_errors(tmp_path):
    pol = _policy()
    path = pol.save(tmp_path / "p.safetensors")
    back = load_policy(path, env_id="l2o/LogisticRegression-v0", device="cpu")  # the compare.py loader
    assert back.core_config == pol.core_config and back.max_step == 1.0
    pb = make_family("logistic_regression").sample(5, "test", 0, dtype=torch.float64)
    a = run_policy(pol, pb, 5, pol.core_config).losses
    b = run_policy(back, pb, 5, back.core_config).losses
    torch.testing.assert_close(a, b)
    with pytest.raises(CheckpointError, match="dimension"):
        load_gps_policy(path, dim=12)
    with pytest.raises(CheckpointError, match="trained on"):
        load_gps_policy(path, env_id="l2o/NeuralNet-v0")
    nn_pb = make_family("neural_net").sample(2, "test", 0, dtype=torch.float64)
    with pytest.raises(ValueError, match="dimension 3"):
        run_policy(back, nn_pb, 2)


def test_policy_builds_its_own_features_under_another_core_config():
    pol = _policy(history=3)
    pb = make_family("logistic_regression").sample(6, "test", 1, dtype=torch.float32)
    own = run_policy(pol, pb, 8, pol.core_config).losses
    other = run_policy(pol, pb, 8, CoreConfig(horizon=8)).losses  # history 25 in the state
    torch.testing.assert_close(own, other)


def test_diverged_samples_are_dropped_and_counted(caplog):
    from l2o_gym.agents.gps.task import OptimizationTask

    pb = make_family("logistic_regression").sample(3, "train", 0, dtype=torch.float64)
    task = OptimizationTask(pb, CoreConfig(horizon=4, history=2))
    pol = task.initial_policy(lr=1.0, std=0.1)
    pol.k[1] = 1e9  # condition 1 jumps far beyond the divergence threshold
    with caplog.at_level("WARNING"):
        s = task.sample(pol, 2, torch.Generator().manual_seed(0))
    assert s.valid[0].all() and s.valid[2].all() and not s.valid[1].any()
    assert s.n_dropped == 2 and "dropped 2 of 6" in caplog.text


def test_training_summary_is_stored_in_the_checkpoints(tmp_path):
    from l2o_gym.checkpoint import load_policy_file

    cfg = dataclasses.replace(TINY, iterations=2, n_conditions=4, n_val=8, baselines=("sgd", "lbfgs"),
                              badmm=BADMMConfig(regression=RegressionConfig(iterations=50)))
    summary = train_gps(cfg, tmp_path, progress=False, tensorboard=False)
    for name in ("gps_best.safetensors", "gps_last.safetensors"):
        _, meta = load_policy_file(tmp_path / name, kind="gps")
        tr = meta["training"]
        assert set(tr) == {"env_steps_total", "baseline", "env_steps_to_reach_baseline", "first_order_baseline",
                           "env_steps_to_reach_first_order", "curve"}
        assert tr == summary["training"]
    assert isinstance(tr["env_steps_total"], int) and tr["env_steps_total"] == 2 * 4 * 5 * 10
    assert tr["baseline"]["name"] in ("sgd", "lbfgs") and tr["first_order_baseline"]["name"] in ("sgd", "momentum")
    assert tr["baseline"]["val_final"] <= tr["first_order_baseline"]["val_final"] or tr["baseline"]["name"] == "sgd"
    assert [s for s, _ in tr["curve"]] == [200, 400]
    assert [v for _, v in tr["curve"]] == [h["val_final"] for h in summary["history"]]
    for key, target in (("env_steps_to_reach_baseline", "baseline"), ("env_steps_to_reach_first_order", "first_order_baseline")):
        hit = [s for s, v in tr["curve"] if v <= tr[target]["val_final"]]
        assert tr[key] == (hit[0] if hit else None)
    # the checkpoint still loads as a policy, and the record can be rebuilt from summary.json
    load_gps_policy(tmp_path / "gps_best.safetensors", env_id=cfg.env_id, dim=3)
    from l2o_gym.agents.gps.train import training_record_from_summary

    assert training_record_from_summary(tmp_path / "summary.json") == tr


def test_add_training_metadata_keeps_the_tensors(tmp_path):
    from l2o_gym.agents.common import training_record
    from l2o_gym.agents.gps.train import add_training_metadata
    from l2o_gym.checkpoint import load_policy_file

    path = _policy().save(tmp_path / "p.safetensors", {"val_final": 0.5})
    before, _ = load_policy_file(path)
    rec = training_record([[100, 0.5], [200, 0.3]], 200, ("lbfgs", 0.2), ("momentum", 0.4))
    assert rec["env_steps_to_reach_baseline"] is None and rec["env_steps_to_reach_first_order"] == 200
    add_training_metadata(path, rec)
    after, meta = load_policy_file(path)
    assert meta["training"] == rec and meta["val_final"] == 0.5 and meta["kind"] == "gps"
    for k in before:
        torch.testing.assert_close(before[k], after[k], rtol=0, atol=0)


def test_include_steps_and_global_samples_end_to_end(tmp_path):
    """Secant features (past steps in the observation) and global-policy samples in the regression."""
    cfg = dataclasses.replace(TINY, include_steps=True, iterations=3,
                              badmm=BADMMConfig(regression=RegressionConfig(iterations=300), global_samples=2))
    summary = train_gps(cfg, tmp_path, progress=False, tensorboard=False)
    policy = load_gps_policy(tmp_path / "gps_best.safetensors", env_id=cfg.env_id, dim=3)
    assert policy.core_config.include_steps and policy.model.obs_dim == core.obs_dim(policy.core_config, 3) == 3 + 2 * 9
    # the global-policy trajectories count as env steps: T·M·(N local + 2 global) from the second iteration on
    assert summary["env_steps_total"] == 10 * 12 * (5 + 2 * (5 + 2))
    val = make_family("logistic_regression").sample(cfg.n_val, "val", cfg.seed, dtype=torch.float64)
    gd = min(float(run_policy(GradientDescent(lr), val, cfg.horizon).losses[-1].mean()) for lr in LR_GRID)
    gps = float(run_policy(policy, val, cfg.horizon, policy.core_config).losses[-1].mean())
    assert gps == pytest.approx(summary["best_val"], rel=1e-6)
    assert gps < gd, (gps, gd)


def test_wraps_into_learned_optimizer_with_its_own_features():
    """``LearnedOptimizer`` keeps a history of 1 and no problems in its state: the policy's feature view
    builds the trained features from the user's loss and gradients, and the lr multiplier scales the step."""
    from l2o_gym.optim import LearnedOptimizer

    pol = _policy(history=3)
    pb = make_family("logistic_regression").sample(1, "test", 0, dtype=torch.float64)
    ref = run_policy(pol, pb, 6, pol.core_config)  # the policy on its own config
    theta = torch.nn.Parameter(pb.x0[0].clone())
    opt = LearnedOptimizer([theta], pol)
    losses = []

    def closure():  # the policy reads objective changes: give the optimizer the loss
        opt.zero_grad()
        loss = pb.loss(theta.unsqueeze(0))[0]
        loss.backward()
        return loss

    for _ in range(6):
        losses.append(float(opt.step(closure).detach()))
    losses.append(float(pb.loss(theta.detach().unsqueeze(0))[0]))
    assert torch.allclose(torch.tensor(losses, dtype=torch.float64), ref.losses[:, 0], rtol=1e-9, atol=1e-12)


def test_evaluate_on_test_table_and_convergence_diagnostics(tmp_path):
    """The docs/gps.md table: L-BFGS on 3-parameter logistic regression has settled by T = 20 (gap ≈ 0 to the
    best objective any policy reached), an untrained policy has not; every gap is non-negative."""
    from l2o_gym.agents.gps.train import evaluate_on_test

    path = _policy().save(tmp_path / "p.safetensors")
    rows = evaluate_on_test(path, "l2o/LogisticRegression-v0", horizon=20, long_factor=3, n_test=8, n_val=8,
                            baselines=("sgd", "lbfgs"))
    assert set(rows) == {"gps", "sgd", "lbfgs"}
    for r in rows.values():
        assert r["gap_T"] >= 0.0 and 0.0 <= r["settled_T"] <= 1.0
        assert r["f_long"] == pytest.approx(r["f_T"] * r["ratio_long"])
    assert rows["lbfgs"]["settled_T"] == 1.0 and rows["lbfgs"]["gap_T"] < 1e-5
    assert rows["lbfgs"]["evals_T"] > 20 and rows["lbfgs"]["f_at_T_evals"] >= rows["lbfgs"]["f_T"] - 1e-7
    assert rows["gps"]["gap_T"] > 1e-3 and rows["sgd"]["evals_T"] == 20.0


def test_bptt_bound_trains_the_global_policy_class_and_checkpoints_it(tmp_path):
    """The direct-training diagnostic: the same Gaussian MLP on the same features, trained by BPTT, beats
    tuned gradient descent on val; its checkpoint is a GPS policy that reproduces the recorded val value."""
    from l2o_gym.agents.gps.bound import BoundConfig, train_bound
    from l2o_gym.checkpoint import read_policy_config

    cfg = BoundConfig(horizon=10, history=3, episodes=150, batch=32, lr=3e-3, n_val=40, val_every=50)
    policy, summary = train_bound(cfg, tmp_path, progress=False)
    assert summary["best_val"] < summary["gd"]["val_final"], summary
    assert [c[0] for c in summary["curve"]] == [50, 100, 150]
    back = load_gps_policy(tmp_path / "bound_best.safetensors", env_id=cfg.env_id, dim=3)
    assert back.core_config.include_steps and back.core_config.history == 3
    val = make_family("logistic_regression").sample(cfg.n_val, "val", cfg.seed)
    got = float(run_policy(back, val, cfg.horizon, back.core_config).losses[-1].mean())
    assert got == pytest.approx(summary["best_val"], rel=1e-5)
    assert read_policy_config(tmp_path / "bound_best.safetensors")["bound"]["best_episode"] == summary["best_episode"]
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        BoundConfig(episodes=0)


def test_stable_factor_selects_only_iterations_stable_past_the_horizon(tmp_path):
    """With ``stable_factor`` every iteration records its val f(long·T)/f(T) and max_t f(t)/f(T) over
    T ≤ t ≤ long·T, and ``gps_best`` is the lowest val f(T) among the iterations whose peak ratio is at or under
    the factor (none eligible: no best checkpoint, best_val inf)."""
    base = dataclasses.replace(TINY, iterations=3, n_conditions=4, n_val=8, long_factor=3,
                               badmm=BADMMConfig(regression=RegressionConfig(iterations=50)))
    plain = train_gps(base, tmp_path / "plain", progress=False, tensorboard=False)
    stable = train_gps(dataclasses.replace(base, stable_factor=1.0), tmp_path / "s", progress=False, tensorboard=False)
    assert "val_long_ratio" not in plain["history"][0]
    assert [h["val_final"] for h in stable["history"]] == pytest.approx([h["val_final"] for h in plain["history"]])
    for h in stable["history"]:
        assert h["val_peak_ratio"] >= max(1.0, h["val_long_ratio"])
    ok = [(h["val_final"], i + 1) for i, h in enumerate(stable["history"]) if h["val_peak_ratio"] <= 1.0]
    assert ok, "on convex logistic regression some iteration keeps improving past T"
    assert (stable["best_val"], stable["best_iteration"]) == min(ok)
    for h in stable["history"]:
        assert h["val_diverged_long"] == 0.0


def test_stable_selection_with_no_eligible_iterate_leaves_no_stale_best(tmp_path, caplog, monkeypatch):
    """A val problem that diverges past the horizon makes an iterate ineligible, however flat the mean curve
    (a diverged problem keeps its last finite objective). A new run in a folder moves the previous run's
    checkpoints aside, so a run with no eligible iterate ends with no gps_best (never an older one relabelled with
    this run's record), and its best_val is None (valid JSON)."""
    import json

    import l2o_gym.agents.gps.train as gps_train

    base = dataclasses.replace(TINY, iterations=1, n_conditions=4, n_val=8, long_factor=2,
                               badmm=BADMMConfig(regression=RegressionConfig(iterations=30)))
    train_gps(base, tmp_path, progress=False, tensorboard=False)
    assert (tmp_path / "gps_best.safetensors").exists()
    real = gps_train.run_policy

    def one_val_problem_diverges(policy, problems, horizon, config=None, **kw):
        traj = real(policy, problems, horizon, config, **kw)
        if horizon == base.long_factor * base.horizon:  # only the stability check's rollout
            traj.state.terminated[0] = True
        return traj

    monkeypatch.setattr(gps_train, "run_policy", one_val_problem_diverges)
    summary = train_gps(dataclasses.replace(base, stable_factor=1e3), tmp_path, progress=False, tensorboard=False)
    assert summary["history"][0]["val_diverged_long"] == pytest.approx(1 / 8)
    assert summary["best_iteration"] == -1 and summary["best_val"] is None
    assert not (tmp_path / "gps_best.safetensors").exists() and (tmp_path / "gps_last.safetensors").exists()
    load_gps_policy(tmp_path / "gps_best.previous.safetensors", env_id=base.env_id, dim=3)  # kept, not lost
    assert json.loads((tmp_path / "summary.json").read_text())["best_val"] is None
    assert "no gps_best checkpoint" in caplog.text and "gps_best.safetensors is moved to gps_best.previous.safetensors" in caplog.text


def test_stable_factor_config_errors_and_resume_with_another_rule(tmp_path):
    with pytest.raises(ValueError, match="stable_factor must be 0 \\(off\\) or >= 1"):
        dataclasses.replace(TINY, stable_factor=0.5)
    with pytest.raises(ValueError, match="long_factor must be >= 1, got 0"):
        dataclasses.replace(TINY, long_factor=0)
    cfg = dataclasses.replace(TINY, iterations=1, n_conditions=4, n_val=8,
                              badmm=BADMMConfig(regression=RegressionConfig(iterations=30)))
    train_gps(cfg, tmp_path, progress=False, tensorboard=False)
    with pytest.raises(ValueError, match="stable_factor=0.0, long_factor=10; resuming with stable_factor=1.1"):
        train_gps(dataclasses.replace(cfg, iterations=2, stable_factor=1.1), tmp_path, resume=True,
                  progress=False, tensorboard=False)

"""SB3 agents: tiny PPO/SAC/RecurrentPPO runs, pickle-free checkpoints, the Policy wrapper, resume, the CLI."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from l2o_gym import core, make_family, run_policy
from l2o_gym.agents import sb3
from l2o_gym.agents.baselines import FIRST_ORDER
from l2o_gym.agents.sb3 import SB3Policy, SB3TrainConfig, build_sb3_policy, load_policy, save_sb3_policy, train_sb3
from l2o_gym.checkpoint import CheckpointError, load_state, read_policy_config
from l2o_gym.core import CoreConfig
from l2o_gym.experiments.evaluation import evaluate
from l2o_gym.optim import LearnedOptimizer

ENV = "l2o/LogisticRegression-v0"
TINY = SB3TrainConfig(
    algo="ppo", env_id=ENV, total_timesteps=512, n_envs=8, horizon=10, history=3, n_steps=32, batch_size=128,
    n_epochs=2, net_arch=(16, 16), n_val=10, n_eval_envs=4, eval_every=256, checkpoint_every=256, baselines=("sgd",),
)
REPO = Path(__file__).resolve().parents[1]


def _cli():
    spec = importlib.util.spec_from_file_location("_script_train_sb3", REPO / "scripts" / "train_sb3.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")
    summary = train_sb3(dataclasses.replace(TINY), out, progress_bar=False, tensorboard=False)
    return out, summary


def test_ppo_run_writes_pickle_free_checkpoints_with_the_training_record(ppo_run):
    from safetensors import safe_open

    out, summary = ppo_run
    assert summary["env_steps_total"] >= TINY.total_timesteps
    assert json.loads((out / "summary.json").read_text())["env_steps_total"] == summary["env_steps_total"]
    with safe_open(str(out / "ppo_best.safetensors"), framework="pt") as fh:  # metadata is plain JSON
        cfg = json.loads(fh.metadata()["l2o_gym"])
    assert cfg["kind"] == "ppo" and cfg["env_id"] == ENV and cfg["dim"] == 3
    assert cfg["env_kwargs"]["horizon"] == 10 and cfg["env_kwargs"]["history"] == 3
    tr = cfg["training"]
    assert set(tr) == {"env_steps_total", "baseline", "env_steps_to_reach_baseline", "first_order_baseline",
                       "env_steps_to_reach_first_order", "curve"}
    assert tr["baseline"]["name"] == "sgd" and tr["first_order_baseline"]["name"] in FIRST_ORDER
    assert tr["curve"][0][0] == 0 and tr["curve"][-1][0] == summary["env_steps_total"]
    assert all(isinstance(s, int) and isinstance(v, float) for s, v in tr["curve"])
    assert tr == summary["training"]
    # state.pt loads with weights_only=True (no code unpickled)
    st = load_state(out / "state.pt")
    assert st["num_timesteps"] == summary["env_steps_total"]


def test_loaded_policy_reproduces_the_validation_metric_and_evaluates(ppo_run):
    out, summary = ppo_run
    policy = load_policy(out / "ppo_best.safetensors", env_id=ENV, dim=3)  # the compare.py loader
    assert isinstance(policy, SB3Policy) and policy.core_config.history == 3 and policy.dim == 3
    val = make_family("logistic_regression").sample(TINY.n_val, "val", TINY.seed, dtype=torch.float64)
    value = float(run_policy(policy, val, TINY.horizon, policy.core_config).losses[-1].mean())
    assert value == pytest.approx(summary["best_val"], rel=1e-6)
    res = evaluate(policy, ENV, n_problems=12, horizon=10, n_boot=50)
    assert torch.isfinite(torch.tensor(res.final_values)).all() and res.diverged_fraction == 0.0
    # features under another core config (history 25 in the state): the shadow state gives the same run
    pb = make_family("logistic_regression").sample(6, "test", 1)
    torch.testing.assert_close(run_policy(policy, pb, 8, policy.core_config).losses,
                               run_policy(policy, pb, 8, CoreConfig(horizon=8)).losses)


def test_identical_actions_after_save_and_load(tmp_path):
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY)
    cc = cfg.core_config()
    module = build_sb3_policy("ppo", core.obs_dim(cc, 3), 3, cfg.policy_kwargs())
    mean, var = torch.randn(core.obs_dim(cc, 3)).double(), torch.rand(core.obs_dim(cc, 3)).double() + 0.5
    before = SB3Policy(module, "ppo", cc, 3, cfg.action_scale, mean, var, cfg.clip_obs, 1e-8, ENV)
    path = save_sb3_policy(tmp_path / "p.safetensors", module, cfg, 3, mean, var, 1e-8)
    after = load_policy(path)
    state = core.reset(make_family("logistic_regression").sample(7, "test", 0), cc)
    for _ in range(3):
        a, _ = before.act(state, None)
        b, _ = after.act(state, None)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert float(a.abs().max()) <= cfg.action_scale
        state, *_ = core.step(state, a)


def test_wrong_kind_env_or_dimension_is_a_checkpoint_error(ppo_run):
    out, _ = ppo_run
    pretrained = REPO / "agents" / "pretrained"
    for other in ("gps_LogisticRegression.safetensors", "lstm_Quadratic.safetensors"):
        with pytest.raises(CheckpointError, match="not an SB3"):
            load_policy(pretrained / other)
    with pytest.raises(CheckpointError, match="trained on"):
        load_policy(out / "ppo_best.safetensors", env_id="l2o/NeuralNet-v0")
    with pytest.raises(CheckpointError, match="dimension"):
        load_policy(out / "ppo_best.safetensors", dim=12)
    with pytest.raises(CheckpointError, match="expected 'sac'"):
        load_policy(out / "ppo_best.safetensors", kind="sac")


def test_learned_optimizer_trains_a_torch_model(ppo_run):
    out, _ = ppo_run
    policy = load_policy(out / "ppo_best.safetensors")
    torch.manual_seed(0)
    x, y = torch.randn(64, 2), (torch.rand(64) < 0.5).float()
    model = torch.nn.Linear(2, 1)  # 3 parameters: the dimension the policy was trained for
    opt = LearnedOptimizer(model.parameters(), policy)  # history 1 in its state: the policy keeps a shadow

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(5)]
    assert torch.isfinite(model.weight).all() and closure().item() < losses[0], losses
    sd = opt.state_dict()  # the shadow-state memory is made of tensors, so it saves
    twin = copy.deepcopy(model)
    opt2 = LearnedOptimizer(twin.parameters(), policy)
    opt2.load_state_dict(sd)

    def closure2():
        opt2.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(twin(x).squeeze(1), y)
        loss.backward()
        return loss

    for _ in range(3):  # the loaded optimizer continues exactly as the original
        opt.step(closure)
        opt2.step(closure2)
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)


def test_resume_continues_num_timesteps(ppo_run, tmp_path):
    out, summary = ppo_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    more = train_sb3(dataclasses.replace(TINY, total_timesteps=1024), run, resume=True, progress_bar=False,
                     tensorboard=False)
    assert more["env_steps_total"] >= 1024
    assert more["training"]["curve"][: len(summary["training"]["curve"])] == summary["training"]["curve"]
    assert load_state(run / "state.pt")["num_timesteps"] == more["env_steps_total"]
    with pytest.raises(ValueError, match="horizon"):
        train_sb3(dataclasses.replace(TINY, horizon=11), run, resume=True, progress_bar=False, tensorboard=False)


def test_keyboard_interrupt_leaves_a_loadable_final_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = sb3.SB3Agent.validate

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(sb3.SB3Agent, "validate", flaky)
    cfg = dataclasses.replace(TINY, total_timesteps=2048, eval_every=256, checkpoint_every=256)
    with pytest.raises(KeyboardInterrupt):
        train_sb3(cfg, tmp_path, progress_bar=False, tensorboard=False)
    st = load_state(tmp_path / "state.pt")
    assert 0 < st["num_timesteps"] < 2048
    assert json.loads((tmp_path / "summary.json").read_text())["interrupted"] is True
    load_policy(tmp_path / "ppo_last.safetensors", env_id=ENV)


def test_sac_round_trip(tmp_path):
    cfg = dataclasses.replace(TINY, algo="sac", n_envs=4, total_timesteps=200, learning_starts=64, sac_batch_size=32,
                              buffer_size=1000, eval_every=100, checkpoint_every=100)
    summary = train_sb3(cfg, tmp_path, progress_bar=False, tensorboard=False)
    policy = load_policy(tmp_path / "sac_best.safetensors", kind="sac")
    pb = make_family("logistic_regression").sample(4, "test", 0)
    assert torch.isfinite(run_policy(policy, pb, 5, policy.core_config).losses).all()
    # the round trip: the loaded policy reproduces the validation value recorded for the checkpoint in training
    val = make_family("logistic_regression").sample(cfg.n_val, "val", cfg.seed, dtype=torch.float64)
    value = float(run_policy(policy, val, cfg.horizon, policy.core_config).losses[-1].mean())
    assert value == pytest.approx(summary["best_val"], rel=1e-6)


def test_recurrent_ppo_round_trip_and_lstm_memory(tmp_path):
    pytest.importorskip("sb3_contrib")
    cfg = dataclasses.replace(TINY, algo="recurrent_ppo", total_timesteps=256, lstm_hidden_size=8, eval_every=128)
    summary = train_sb3(cfg, tmp_path, progress_bar=False, tensorboard=False)
    policy = load_policy(tmp_path / "recurrent_ppo_best.safetensors", env_id=ENV)
    val = make_family("logistic_regression").sample(cfg.n_val, "val", cfg.seed, dtype=torch.float64)
    value = float(run_policy(policy, val, cfg.horizon, policy.core_config).losses[-1].mean())
    assert value == pytest.approx(summary["best_val"], rel=1e-6)
    state = core.reset(val, policy.core_config)
    memory = policy.reset(state)
    _, memory = policy.act(state, memory)
    assert memory[1][0].shape == (1, cfg.n_val, 8)
    model = torch.nn.Linear(2, 1)
    opt = LearnedOptimizer(model.parameters(), policy)
    x, y = torch.randn(16, 2), (torch.rand(16) < 0.5).float()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y).backward()
        opt.step()
    opt.state_dict()


def test_missing_sb3_contrib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sb3_contrib", None)
    with pytest.raises(ImportError, match="contrib"):
        SB3TrainConfig(algo="recurrent_ppo").validate()


@pytest.mark.parametrize(("argv", "error"), [
    (["--env", "l2o/Nope-v0"], "unknown env id 'l2o/Nope-v0'"),
    (["--algo", "dqn"], "argument --algo: invalid choice: 'dqn'"),
    (["--timesteps", "0"], "--timesteps must be a positive integer, got 0"),
    (["--n-envs", "-3"], "--n-envs must be a positive integer, got -3"),
    (["--horizon", "x"], "argument --horizon: expected an integer, got 'x'"),
    (["--lr", "-1"], "--lr must be a finite positive number, got -1.0"),
    (["--gamma", "2"], "--gamma, --gae-lambda and --tau must lie in (0, 1], got 2.0"),
])
def test_cli_bad_arguments_exit_2(argv, error, tmp_path, capsys):
    train_sb3 = _cli()
    with pytest.raises(SystemExit) as exc:
        train_sb3.main([*argv, "--out", str(tmp_path)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "error:" in last and error in last


def test_cli_resume_without_state_exits_2(tmp_path, capsys):
    train_sb3 = _cli()
    with pytest.raises(SystemExit) as exc:
        train_sb3.main(["--resume", "--out", str(tmp_path / "empty")])
    assert exc.value.code == 2
    assert "state.pt" in capsys.readouterr().err


def test_cli_recurrent_without_contrib_exits_2(tmp_path, monkeypatch, capsys):
    train_sb3 = _cli()
    monkeypatch.setitem(sys.modules, "sb3_contrib", None)
    with pytest.raises(SystemExit) as exc:
        train_sb3.main(["--algo", "recurrent_ppo", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "contrib" in capsys.readouterr().err


def test_shipped_ppo_checkpoint_matches_the_gps_setup():
    from l2o_gym.experiments.compare import pretrained_path

    path = pretrained_path("ppo", ENV)
    assert path is not None and path.name == "ppo_LogisticRegression.safetensors"
    policy = load_policy(path, env_id=ENV, kind="ppo")
    assert (policy.core_config.horizon, policy.core_config.history, policy.dim) == (20, 5, 3)
    training = read_policy_config(path)["training"]
    assert training["env_steps_total"] > 0 and training["curve"][-1][0] == training["env_steps_total"]


def test_coordinatewise_policy_is_permutation_equivariant_and_dimension_free():
    cfg = SB3TrainConfig(algo="coord_ppo", env_id=ENV, history=3, include_steps=True, net_arch=(8, 8))
    assert not cfg.obs_normalized  # VecNormalize's per-entry statistics would tie the policy to one dimension
    m = build_sb3_policy("coord_ppo", core.obs_dim(cfg.core_config(), 5), 5, cfg.policy_kwargs())
    torch.manual_seed(0)
    H, d = 3, 7
    obj, g, steps = torch.randn(4, H), torch.randn(4, H, d), 0.05 * torch.randn(4, H, d)
    flat = lambda g, s: torch.cat([obj, g.reshape(4, -1), s.reshape(4, -1)], 1)  # noqa: E731  (core's layout)
    with torch.no_grad():
        a = m._predict(flat(g, steps), deterministic=True)  # a net built for d = 5 runs on d = 7
        perm = torch.randperm(d)
        b = m._predict(flat(g[..., perm], steps[..., perm]), deterministic=True)
        v, vp = m.predict_values(flat(g, steps)), m.predict_values(flat(g[..., perm], steps[..., perm]))
    assert a.shape == (4, d)
    torch.testing.assert_close(b, a[:, perm])
    torch.testing.assert_close(vp, v)
    # every parameter is shared by the coordinates: nothing has a dimension-sized axis, one log std
    assert m.log_std.shape == (1,) and all(d not in p.shape and 5 not in p.shape for p in m.parameters())
    with pytest.raises(ValueError, match="observation length 10 is not H"):
        m._predict(torch.randn(2, 10), deterministic=True)


def test_coord_ppo_trains_saves_and_runs_on_another_dimension(tmp_path):
    cfg = dataclasses.replace(TINY, algo="coord_ppo", net_arch=(8, 8))
    summary = train_sb3(cfg, tmp_path, progress_bar=False, tensorboard=False)
    path = tmp_path / "coord_ppo_best.safetensors"
    header = read_policy_config(path)
    assert header["kind"] == "coord_ppo" and header["dim"] is None and header["train_dim"] == 3
    policy = load_policy(path, env_id=ENV)
    assert policy.dim is None and policy.obs_mean is None
    val = make_family("logistic_regression").sample(TINY.n_val, "val", TINY.seed, dtype=torch.float64)
    value = float(run_policy(policy, val, TINY.horizon, policy.core_config).losses[-1].mean())
    assert value == pytest.approx(summary["best_val"], rel=1e-6)
    # the same weights on a 31-dimensional problem (the flat PPO policy refuses it)
    other = make_family("quadratic", dim=31).sample(4, "test", 0)
    traj = run_policy(policy, other, 5, policy.core_config)
    assert traj.state.theta.shape == (4, 31) and torch.isfinite(traj.losses).all()
    assert not torch.equal(traj.state.theta, other.x0)  # it moved
    # and through the compare loader under its own name
    from l2o_gym.experiments.compare import PolicySpec, _load_learned

    loaded, _ = _load_learned(PolicySpec("coord_ppo", str(path)), ENV, "cpu")
    assert loaded.kind == "coord_ppo"


def test_an_update_that_makes_the_weights_non_finite_is_a_clear_error():
    """Non-finite weights after an update (PPO on a large problem's whole vector can do this) stop training with a
    FloatingPointError naming the algorithm, the weights and the way out — not torch's Normal rejecting NaNs."""
    agent = sb3.SB3Agent(dataclasses.replace(TINY, total_timesteps=64, eval_every=64), tensorboard=False)
    try:
        with torch.no_grad():
            next(agent.model.policy.parameters()).fill_(float("nan"))
        with pytest.raises(FloatingPointError, match=r"ppo: an update made the policy's weights non-finite \(.+\) at "
                                                     r"\d+ env steps on 3-dimensional problems.*coord_ppo"):
            agent.iteration()
    finally:
        agent.close()

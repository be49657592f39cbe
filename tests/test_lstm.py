"""The coordinatewise LSTM optimizer: policy, truncated-BPTT trainer, checkpoints, multi-process training."""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2o_gym import core, make_family, run_policy
from l2o_gym.agents import GradientDescent
from l2o_gym.agents.lstm import PRETRAINED, LSTMConfig, LSTMPolicy, TrainConfig, Trainer, load_pretrained, preprocess
from l2o_gym.agents.lstm import trainer as trainer_mod
from l2o_gym.policy import join_rows
from l2o_gym.checkpoint import CheckpointError, save_policy
from l2o_gym.core import CoreConfig
from l2o_gym.policy import rollout

ROOT = Path(__file__).resolve().parent.parent


def _tiny_cfg(tmp_path=None, **kw) -> TrainConfig:
    base = dict(family_kwargs={"dim": 3}, n_problems=8, horizon=10, unroll=5, episodes=2, lr=1e-2,
                val_every=1, val_problems=16, progress=False, out=str(tmp_path) if tmp_path else None)
    base.update(kw)
    return TrainConfig(**base)


def _state_from_grads(g: torch.Tensor) -> core.State:
    n, d = g.shape
    return core.initial_state(torch.zeros(n, d), torch.ones(n), g, CoreConfig(history=1))


# ---- policy --------------------------------------------------------------------------------------
def test_preprocess_log_sign_scheme():
    p = 10.0
    g = torch.tensor([2.0, -0.5, 1e-6, -1e-7, 0.0])
    x = preprocess(g, "log", p)
    assert x.shape == (5, 2)
    torch.testing.assert_close(x[0], torch.tensor([math.log(2.0) / p, 1.0]))
    torch.testing.assert_close(x[1], torch.tensor([math.log(0.5) / p, -1.0]))
    # below e^{-p} ≈ 4.5e-5: (-1, e^p g)
    torch.testing.assert_close(x[2], torch.tensor([-1.0, math.exp(p) * 1e-6]))
    torch.testing.assert_close(x[4], torch.tensor([-1.0, 0.0]))
    assert preprocess(g, "none", p).shape == (5, 1)


@pytest.mark.parametrize("global_cells", [0, 4])
def test_policy_is_invariant_to_coordinate_order(global_cells):
    torch.manual_seed(0)
    policy = LSTMPolicy(LSTMConfig(global_cells=global_cells))
    n, d = 3, 7
    perm = torch.randperm(d)
    grads = [torch.randn(n, d) * 10 ** torch.randn(n, d) for _ in range(4)]
    s, sp = _state_from_grads(grads[0]), _state_from_grads(grads[0][:, perm])
    h, hp = policy.reset(s), policy.reset(sp)
    for g in grads:
        s, sp = _state_from_grads(g), _state_from_grads(g[:, perm])
        step, h = policy.act(s, h)
        step_p, hp = policy.act(sp, hp)
        torch.testing.assert_close(step[:, perm], step_p, rtol=1e-5, atol=1e-7)
    assert step.shape == (n, d)


def test_policy_works_for_any_dimension_and_ignores_theta():
    policy = LSTMPolicy()
    for d in (1, 5, 50):
        g = torch.randn(2, d)
        s = _state_from_grads(g)
        s_other = core.initial_state(torch.randn(2, d) * 100, torch.ones(2), g, CoreConfig(history=1))
        a, _ = policy.act(s, policy.reset(s))
        b, _ = policy.act(s_other, policy.reset(s_other))
        assert a.shape == (2, d)
        torch.testing.assert_close(a, b)


def test_global_cells_share_information_across_coordinates():
    torch.manual_seed(0)
    policy = LSTMPolicy(LSTMConfig(global_cells=5))
    g = torch.randn(1, 4)
    g2 = g.clone()
    g2[0, 3] = 50.0  # change another coordinate: coordinate 0's step changes only through the averages
    s1, s2 = _state_from_grads(g), _state_from_grads(g2)
    h1, h2 = policy.reset(s1), policy.reset(s2)
    for _ in range(2):
        a1, h1 = policy.act(s1, h1)
        a2, h2 = policy.act(s2, h2)
    assert not torch.allclose(a1[0, 0], a2[0, 0])
    plain = LSTMPolicy(LSTMConfig(global_cells=0))
    a1, _ = plain.act(s1, plain.reset(s1))
    a2, _ = plain.act(s2, plain.reset(s2))
    torch.testing.assert_close(a1[0, :3], a2[0, :3])


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match="preprocessing"):
        LSTMConfig(preprocessing="sqrt")
    with pytest.raises(ValueError, match="global_cells"):
        LSTMConfig(global_cells=21)
    with pytest.raises(ValueError, match="output_scale"):
        LSTMConfig(output_scale=0)
    with pytest.raises(ValueError, match="divide"):
        TrainConfig(horizon=100, unroll=30)


# ---- trainer -------------------------------------------------------------------------------------
def test_meta_step_backpropagates_through_the_unroll_and_first_order_detaches():
    tr = Trainer(_tiny_cfg())
    pb = tr.family.sample(4, "train", 0)
    s = core.reset(pb, tr.core_config)
    before = [p.detach().clone() for p in tr.policy.net.parameters()]
    s2, h2, loss, ok = tr.meta_step(s, tr.policy.reset(s), 0)
    assert ok and math.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tr.policy.net.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.policy.net.parameters()))
    assert not s2.theta.requires_grad and not any(h.requires_grad for h in join_rows(h2))
    assert not s2.grad.requires_grad  # first-order: the optimizee gradient carries no graph


def test_second_order_option_gives_a_different_meta_gradient():
    grads = {}
    for so in (False, True):
        torch.manual_seed(0)
        tr = Trainer(_tiny_cfg(second_order=so))
        s = core.reset(tr.family.sample(4, "train", 0), tr.core_config)
        traj = rollout(tr.policy, s, 5)
        traj.costs.sum().backward()
        grads[so] = torch.cat([p.grad.flatten() for p in tr.policy.net.parameters()])
    assert torch.isfinite(grads[True]).all()
    assert not torch.allclose(grads[False], grads[True])


def test_short_training_beats_untrained_start_and_tuned_sgd_on_val():
    torch.manual_seed(0)
    cfg = TrainConfig(family_kwargs={"dim": 3}, n_problems=32, horizon=20, unroll=10, episodes=40, lr=1e-2,
                      val_every=0, val_problems=128, progress=False)
    tr = Trainer(cfg)
    untrained = tr.validate()
    tr.train()
    trained = tr.validate()
    lrs = [10 ** (-k / 4) for k in range(0, 17)]
    sgd = min(float(run_policy(GradientDescent(lr), tr.val_set, cfg.horizon).losses[-1].mean()) for lr in lrs)
    assert trained < 0.5 * untrained
    assert trained < sgd, (trained, sgd)


def test_resume_reproduces_the_same_next_update(tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = Trainer(_tiny_cfg(a_dir, episodes=2))
    a.train()
    b_dir.mkdir()
    shutil.copy(a_dir / "state.pt", b_dir / "state.pt")
    a.cfg.episodes = 3
    a.train()
    b = Trainer(_tiny_cfg(b_dir, episodes=3, seed=0))
    assert b.resume()
    assert b.episode == 2
    b.train()
    for pa, pb in zip(a.policy.net.parameters(), b.policy.net.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert a.optimizer.state_dict()["state"][0]["step"] == b.optimizer.state_dict()["state"][0]["step"]


def test_training_writes_checkpoints_that_load_safely(tmp_path):
    Trainer(_tiny_cfg(tmp_path)).train()
    assert {"lstm_best.safetensors", "lstm_last.safetensors", "state.pt", "summary.json"} <= {p.name for p in tmp_path.iterdir()}
    sd = torch.load(tmp_path / "state.pt", weights_only=True)
    assert sd["episode"] == 2 and math.isfinite(sd["best_val"])
    policy = LSTMPolicy.load(tmp_path / "lstm_best.safetensors")
    assert policy.checkpoint_config["kind"] == "lstm"
    assert any((tmp_path / "tb").iterdir())  # TensorBoard event file


def test_nan_meta_loss_skips_the_update_with_a_warning(monkeypatch, caplog):
    tr = Trainer(_tiny_cfg())
    s = core.reset(tr.family.sample(4, "train", 0), tr.core_config)
    monkeypatch.setattr(trainer_mod, "meta_loss", lambda costs, cfg, t0: costs.sum() * float("nan"))
    before = [p.detach().clone() for p in tr.policy.net.parameters()]
    with caplog.at_level(logging.WARNING, logger="l2o_gym.agents.lstm.trainer"):
        _, _, loss, ok = tr.meta_step(s, tr.policy.reset(s), 0)
    assert not ok and math.isnan(loss)
    assert "skipped" in caplog.text
    for a, p in zip(before, tr.policy.net.parameters()):
        assert torch.equal(a, p)


# ---- checkpoints ---------------------------------------------------------------------------------
def test_policy_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    policy = LSTMPolicy(LSTMConfig(hidden=8, global_cells=2, output_scale=0.05), env_id="l2o/Quadratic-v0")
    path = policy.save(tmp_path / "p.safetensors")
    loaded = LSTMPolicy.load(path, env_id="l2o/Quadratic-v0")
    assert loaded.config == policy.config
    pb = make_family("quadratic").sample(4, "test", 0)
    a = run_policy(policy, pb, 10).losses
    b = run_policy(loaded, pb, 10).losses
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="trained on"):
        LSTMPolicy.load(path, env_id="l2o/MLP-v0")


def test_checkpoint_for_another_architecture_is_a_clear_error(tmp_path):
    small = LSTMPolicy(LSTMConfig(hidden=8))
    bad = tmp_path / "bad.safetensors"
    save_policy(bad, small.net.state_dict(), {"kind": "lstm", "arch": {"hidden": 20}})
    with pytest.raises(CheckpointError, match="does not match its LSTM architecture"):
        LSTMPolicy.load(bad)
    other = tmp_path / "gps.safetensors"
    save_policy(other, {"w": torch.zeros(2)}, {"kind": "gps"})
    with pytest.raises(CheckpointError, match="expected 'lstm'"):
        LSTMPolicy.load(other)
    weird = tmp_path / "weird.safetensors"
    save_policy(weird, small.net.state_dict(), {"kind": "lstm", "arch": {"hidden": 8, "bogus": 1}})
    with pytest.raises(CheckpointError, match="invalid LSTM architecture"):
        LSTMPolicy.load(weird)


@pytest.mark.parametrize("env_id", sorted(PRETRAINED))
def test_shipped_checkpoints_load_and_are_small(env_id):
    from l2o_gym.agents.lstm.policy import PRETRAINED_DIR

    path = PRETRAINED_DIR / PRETRAINED[env_id]
    assert path.stat().st_size < 1_000_000
    policy = load_pretrained(env_id)
    assert policy.checkpoint_config["env_id"] == env_id
    # the config that made it, beside the weights: "train" in the first trainer's files, "train_config" in the
    # training lifecycle's (l2o_gym.agents.common)
    cfg = policy.checkpoint_config
    train = cfg.get("train_config", cfg.get("train"))
    assert train and train["env_id"] == env_id and train["horizon"] >= 1


def test_pretrained_quadratic_beats_tuned_sgd_on_test_problems():
    pb = make_family("quadratic").sample(200, "test", 0)
    lstm = float(run_policy(load_pretrained("l2o/Quadratic-v0"), pb, 100).losses[-1].mean())
    lrs = [10 ** (-k / 4) for k in range(2, 14)]
    sgd = min(float(run_policy(GradientDescent(lr), pb, 100).losses[-1].mean()) for lr in lrs)
    assert lstm < sgd


# ---- scripts and multi-process training ----------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


TINY_ARGS = ["--family-kwargs", '{"dim": 3}', "--n-problems", "8", "--horizon", "10", "--unroll", "5",
             "--episodes", "2", "--val-every", "1", "--val-problems", "8", "--no-progress"]


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_lstm_script", ROOT / "scripts" / "train_lstm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("bad", "error"), [
    (["--env", "nope"], "unknown env id 'nope'"),
    (["--lr", "-1"], "--lr must be a finite positive number, got -1.0"),
    (["--unroll", "30"], "--unroll (30) must divide --horizon (100)"),
    (["--family-kwargs", "[1]"], "argument --family-kwargs: expected a JSON object"),
    (["--resume"], "--resume: no training state"),
])
def test_script_bad_arguments_exit_2(bad, error, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _script().main([*bad, "--out", str(tmp_path / "run")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "error:" in last and error in last


def test_script_trains_and_exports(tmp_path, capsys):
    out, export = tmp_path / "run", tmp_path / "exported.safetensors"
    assert _script().main([*TINY_ARGS, "--out", str(out), "--export", str(export)]) == 0
    assert LSTMPolicy.load(export).checkpoint_config["train_config"]["n_problems"] == 8


def test_one_process_group_equals_single_process(tmp_path):
    """World size 1 under torch.distributed (gloo) gives bit-identical training to no process group."""
    import torch.distributed as dist

    single = Trainer(_tiny_cfg())
    single.train()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = Trainer(_tiny_cfg())
        assert ddp.world == 1
        ddp.train()
    finally:
        dist.destroy_process_group()
    for a, b in zip(single.policy.net.parameters(), ddp.policy.net.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _torchrun(nproc: int, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "scripts" / "train_lstm.py"), *TINY_ARGS, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)


def test_torchrun_one_process_equals_single_process_and_two_processes_train(tmp_path):  # ~20 s: 3 torchrun launches
    """``torchrun --nproc_per_node 1`` reproduces plain training exactly; 2 gloo processes train together."""
    from safetensors.torch import load_file

    script = str(ROOT / "scripts" / "train_lstm.py")
    single = subprocess.run([sys.executable, script, *TINY_ARGS, "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, env=_env(), timeout=300)
    assert single.returncode == 0, single.stderr
    one = _torchrun(1, tmp_path / "k1")
    assert one.returncode == 0, one.stderr
    a, b = load_file(tmp_path / "single" / "lstm_last.safetensors"), load_file(tmp_path / "k1" / "lstm_last.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    two = _torchrun(2, tmp_path / "k2")
    assert two.returncode == 0, two.stderr
    assert "on 2 process(es)" in two.stdout
    c = load_file(tmp_path / "k2" / "lstm_last.safetensors")
    assert all(torch.isfinite(v).all() for v in c.values())
    assert any(not torch.equal(a[k], c[k]) for k in a)  # rank 1's problems contributed to the update


def test_resume_with_reset_best_forgets_the_best_value(tmp_path):
    Trainer(_tiny_cfg(tmp_path)).train()
    t = Trainer(_tiny_cfg(tmp_path, episodes=3))
    assert t.resume(reset_best=True)
    assert t.episode == 2 and t.best_val == math.inf and t.history == []


def test_resume_on_other_problems_is_refused_unless_reset_best(tmp_path):
    from l2o_gym.checkpoint import CheckpointError

    Trainer(_tiny_cfg(tmp_path)).train()
    with pytest.raises(CheckpointError, match=r"trained on .*'dim': 3.* this run is on .*'dim': 4.*reset-best"):
        Trainer(_tiny_cfg(tmp_path, family_kwargs={"dim": 4}, episodes=3)).resume()
    with pytest.raises(CheckpointError, match="trained on .*Quadratic.*LogisticRegression"):
        Trainer(_tiny_cfg(tmp_path, env_id="l2o/LogisticRegression-v0", family_kwargs={}, episodes=3)).resume()
    t = Trainer(_tiny_cfg(tmp_path, family_kwargs={"dim": 4}, episodes=3))
    assert t.resume(reset_best=True) and t.episode == 2  # fine-tuning on the other problems
    # the same settings written differently (a tuple from Python, a list from --family-kwargs; another key order)
    mlp = tmp_path / "mlp"
    Trainer(_tiny_cfg(mlp, env_id="l2o/MLP-v0", family_kwargs={"hidden": (4,), "dataset": "digits"}, horizon=4,
                      unroll=2, n_problems=2, val_problems=2)).train()
    assert Trainer(_tiny_cfg(mlp, env_id="l2o/MLP-v0", family_kwargs={"dataset": "digits", "hidden": [4]}, horizon=4,
                             unroll=2, n_problems=2, val_problems=2, episodes=3)).resume()
    with pytest.raises(CheckpointError, match=r"does not fit this lstm run; settings that differ from the saved run: "
                                              r"arch\.hidden \(saved 20, now 7\): RuntimeError: [^\n]*size mismatch"):
        Trainer(_tiny_cfg(tmp_path, arch=LSTMConfig(hidden=7), episodes=3)).resume()


def test_compare_harness_finds_the_shipped_checkpoints():
    from l2o_gym.experiments import compare  # part of the package: an import error is a failure, not a skip

    for env_id in PRETRAINED:
        path = compare.pretrained_path("lstm", env_id)
        assert path is not None and path.name == PRETRAINED[env_id]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_trains_and_acts_on_cuda():
    tr = Trainer(_tiny_cfg(device="cuda"))
    tr.train()
    assert all(p.is_cuda and torch.isfinite(p).all() for p in tr.policy.net.parameters())
    pb = make_family("quadratic").sample(8, "test", 0, device="cuda")
    traj = run_policy(load_pretrained("l2o/Quadratic-v0", device="cuda"), pb, 20)
    assert traj.losses.is_cuda and torch.isfinite(traj.losses).all()


def test_load_pretrained_knows_every_shipped_single_lstm_checkpoint():
    from l2o_gym.agents.lstm.policy import PRETRAINED, PRETRAINED_DIR, load_pretrained

    shipped = sorted(p.name for p in PRETRAINED_DIR.glob("lstm_*.safetensors"))
    assert sorted(PRETRAINED.values()) == shipped
    assert load_pretrained("l2o/NNClassifier-v0").checkpoint_config["env_id"] == "l2o/NNClassifier-v0"
    with pytest.raises(ValueError, match="no pretrained LSTM for 'l2o/Rosenbrock-v0': available for"):
        load_pretrained("l2o/Rosenbrock-v0")


def test_env_steps_are_counted_per_episode_across_a_resume_on_more_processes(tmp_path, monkeypatch):
    """A run resumed on another number of processes keeps the steps it made before (they used to be rescaled)."""
    t = Trainer(_tiny_cfg(tmp_path))
    t.train()
    assert t.env_steps == 2 * 8 * 10
    monkeypatch.setattr(trainer_mod, "world", lambda: (0, 2))  # the resumed run counts 2 processes' problems
    monkeypatch.setattr(trainer_mod.dist, "broadcast", lambda *a, **k: None)  # (no second process to hear it)
    t2 = Trainer(_tiny_cfg(tmp_path, episodes=3))
    assert t2.resume() and t2.env_steps == 2 * 8 * 10
    t2.run_episode()
    assert t2.env_steps == 2 * 8 * 10 + 8 * 10 * 2

"""Reliability of the command-line scripts: usage errors exit with code 2 and name the bad value;
an interrupted training run leaves its last checkpoint intact and resumes from it."""

from __future__ import annotations

import sys

import pytest
from conftest import load_script
import torch

from l2o_gym.agents.lstm import TrainConfig
from l2o_gym.agents.lstm.trainer import Trainer
from l2o_gym.checkpoint import load_state



_script = load_script


@pytest.mark.parametrize(
    "script, argv, match",
    [
        ("compare", ["--env", "l2o/Nope-v0", "--out", "{tmp}"], "unknown env id 'l2o/Nope-v0'"),
        ("compare", ["--out", "{tmp}"], "give --env ID"),
        ("compare", ["--preset", "study", "--env", "l2o/Quadratic-v0", "--out", "{tmp}"], "exclusive"),
        ("compare", ["--preset", "nope", "--out", "{tmp}"], "invalid choice: 'nope'"),
        ("compare", ["--env", "l2o/Quadratic-v0", "--policies", "newton", "--out", "{tmp}"], "unknown policy 'newton'"),
        ("compare", ["--env", "l2o/Quadratic-v0", "--horizon", "0", "--out", "{tmp}"], "argument --horizon: expected a positive integer, got '0'"),
        ("tune_baselines", ["--env", "l2o/MLP-v0", "--variant", "tanh", "--out", "{tmp}/t.json"], "unknown variant 'tanh'"),
        ("tune_baselines", ["--env", "l2o/Quadratic-v0", "--horizon", "-1"], "argument --horizon: expected a positive integer, got '-1'"),
        ("train_lstm", ["--env", "l2o/Quadratic-v0", "--episodes", "0"], "--episodes must be a positive integer, got 0"),
        ("train_lstm", ["--env", "l2o/Quadratic-v0", "--family-kwargs", "[1]"], "JSON object"),
        ("train_lstm", ["--env", "l2o/Quadratic-v0", "--resume", "--out", "{tmp}/none"], "--resume: no training state"),
        ("bench", ["lstm", "--iters", "0"], "argument --iters: expected a positive integer, got '0'"),
        ("bench", ["env", "--sizes", "0"], "argument --sizes: expected a positive integer, got '0'"),
        ("bench", ["eval", "--env", "l2o/Nope-v0"], "unknown env id 'l2o/Nope-v0'"),
        ("bench", ["step", "--family-kwargs", '{"size": 2}'], "size 2 is too small"),
        ("bench", ["step", "--n", "0"], "argument --n: expected a positive integer, got '0'"),
        ("demo", ["--num-envs", "0", "--out", "{tmp}"], "argument --num-envs: expected a positive integer, got '0'"),
        ("demo", ["--env", "l2o/Nope-v0"], "invalid choice: 'l2o/Nope-v0'"),
        ("train_sb3", ["--algo", "ppo", "--env", "l2o/Nope-v0"], "unknown env id 'l2o/Nope-v0'"),
        ("train_gps", ["--env", "l2o/Nope-v0"], "unknown env id 'l2o/Nope-v0'"),
        ("train_gps", ["--conditions", "0"], "--conditions must be a positive integer, got 0"),
        ("train_gps", ["--kl-step", "-1"], "--kl-step must be a finite positive number, got -1.0"),
        ("train_gps", ["--resume", "--out", "{tmp}/none"], "no training state"),
        ("train_gps", ["--hessian", "bogus"], "invalid choice: 'bogus'"),
        ("train_gps", ["--stable-factor", "0.5"], "--stable-factor must be 0 (off) or >= 1"),
        ("train_gps", ["--long-factor", "0"], "--long-factor must be >= 1, got 0"),
        ("gps_policy_bound", ["--env", "l2o/Nope-v0", "--out", "{tmp}"], "unknown env id 'l2o/Nope-v0'"),
        ("gps_policy_bound", ["--episodes", "0", "--out", "{tmp}"], "--episodes must be >= 1, got 0"),
        ("gps_policy_bound", ["--lr", "-1", "--out", "{tmp}"], "--lr must be a positive finite number, got -1.0"),
    ],
)
def test_usage_errors_exit_2(script, argv, match, tmp_path, capsys):
    main = _script(script).main
    with pytest.raises(SystemExit) as exc:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and match in err


def test_interrupted_lstm_training_keeps_checkpoint_and_resumes(tmp_path, monkeypatch):
    cfg = TrainConfig(family_kwargs={"dim": 3}, n_problems=8, horizon=10, unroll=5, episodes=5, lr=1e-2, val_every=1,
                      val_problems=8, progress=False, out=str(tmp_path))
    reference = Trainer(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "ref")}))
    reference.train()

    trainer = Trainer(cfg)
    original = Trainer.run_episode
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C in the middle of the 4th episode
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "run_episode", flaky)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.setattr(Trainer, "run_episode", original)
    state = load_state(tmp_path / "state.pt")  # intact and loadable with weights_only=True
    assert state["episode"] == 3
    assert (tmp_path / "lstm_best.safetensors").is_file()

    resumed = Trainer(cfg)
    assert resumed.resume()
    assert resumed.episode == 3
    resumed.train()
    assert resumed.episode == 5
    for a, b in zip(resumed.policy.net.parameters(), reference.policy.net.parameters()):
        assert torch.equal(a, b)  # the interrupted + resumed run ends exactly where an uninterrupted one does


def test_train_lstm_cli_exits_130_on_ctrl_c(tmp_path, monkeypatch, capsys):
    mod = _script("train_lstm")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "train", interrupted)
    code = mod.main(["--env", "l2o/Quadratic-v0", "--episodes", "1", "--out", str(tmp_path), "--no-progress"])
    assert code == 130
    assert "--resume" in capsys.readouterr().err
    if sys.platform != "win32":
        assert not list(tmp_path.glob(".*.tmp"))  # no half-written temporary files left behind


def test_train_gps_cli_exits_130_on_ctrl_c(tmp_path, monkeypatch, capsys):
    mod = _script("train_gps")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "train_gps", interrupted)
    assert mod.main(["--iterations", "1", "--out", str(tmp_path)]) == 130
    assert "--resume" in capsys.readouterr().err


def test_empty_baselines_flag_means_no_targets_and_a_strict_json_summary(tmp_path):
    # `--baselines` with no names: nothing is tuned on val (that can cost an hour on a conv net), and the summary
    # says "no target" as null, not as an infinite value that every curve "reaches" at once
    import json
    import math

    from l2o_gym.agents.common import steps_to_reach, training_record
    from l2o_gym.experiments import cli

    mod = _script("train_lstm")
    parser, cfg_args = mod.build_parser()
    cfg = cli.prepare(parser.parse_args(["--env", "l2o/Quadratic-v0", "--baselines"]), cfg_args)
    assert cfg.baselines == ()
    assert cli.prepare(parser.parse_args(["--env", "l2o/Quadratic-v0"]), cfg_args).baselines == TrainConfig().baselines
    curve = [[10, 2.0], [20, 0.5]]
    assert steps_to_reach(curve, math.inf) is None and steps_to_reach(curve, 1.0) == 20
    rec = training_record(curve, 20, ("", math.inf), ("", math.inf))
    assert rec["baseline"]["val_final"] is None and rec["env_steps_to_reach_baseline"] is None
    json.dumps(rec, allow_nan=False)
    assert cli.target_lines({"baseline": rec["baseline"], "first_order_baseline": rec["first_order_baseline"]}) == [
        "best baseline: none (no baselines tuned: --baselines was empty)",
        "best first-order baseline: none (no baselines tuned: --baselines was empty)"]
    with_targets = {"baseline": {"name": "nag", "hparams": {"lr": 0.1}, "val_final": 0.25},
                    "env_steps_to_reach_baseline": 6400,
                    "first_order_baseline": {"name": "adam", "hparams": {}, "val_final": 0.125},
                    "env_steps_to_reach_first_order": None}
    assert cli.target_lines(with_targets) == ["best baseline nag {'lr': 0.1} on val 0.25: reached after 6,400 env steps",
                                              "best first-order baseline adam {} on val 0.125: not reached"]


@pytest.mark.parametrize("script", ["train_lstm", "train_gps", "train_conv_gps", "train_sb3"])
def test_every_training_script_accepts_no_baselines(script):
    import dataclasses

    from l2o_gym.experiments import cli

    parser, cfg_args = _script(script).build_parser()
    cfg = cli.prepare(parser.parse_args(["--baselines"]), cfg_args)
    assert cfg.baselines == ()
    with pytest.raises(ValueError, match=r"unknown baselines \['newton'\]: expected names of sgd, "):
        dataclasses.replace(cfg, baselines=("sgd", "newton"))

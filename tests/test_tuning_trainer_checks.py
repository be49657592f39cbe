"""Checks of the tuned file's writers and the LSTM trainer's run record (tiny sizes)."""

from __future__ import annotations

import json

import pytest

from conftest import load_script
import l2o_gym.experiments.tuning as tuning
from l2o_gym.agents.lstm import TrainConfig
from l2o_gym.agents.lstm.trainer import Trainer


def test_record_val_references_skips_a_run_without_n_val(tmp_path):
    """An LSTM checkpoint carries a training record but no ``n_val`` (its val set is ``val_problems``): the
    re-derivation of the shipped checkpoints' targets (``tuning_spread.py --val-references``) skipped nothing and
    stopped with ``KeyError: 'n_val'`` before writing anything."""
    cfg = TrainConfig(family_kwargs={"dim": 2}, n_problems=2, horizon=2, unroll=2, episodes=1, val_every=1,
                      val_problems=2, baselines=(), out=str(tmp_path / "run"), tensorboard=False, progress=False)
    Trainer(cfg).train()
    ckpt = tmp_path / "run" / "lstm_best.safetensors"
    assert ckpt.is_file()
    out = tmp_path / "tuned.json"
    data = tuning.record_val_references(out, [ckpt])
    assert data["val_references"] == {}
    assert json.loads(out.read_text())["val_references"] == {}


def test_tune_baselines_interrupt_message_is_true(tmp_path, monkeypatch, capsys):
    """``tune`` writes the file after every env; an interruption during the second env left the first one's entries
    saved while the script said ``nothing was saved``."""
    real = tuning.tuning_problems
    calls = []

    def sample(*args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning, "tuning_problems", sample)
    out = tmp_path / "t.json"
    rc = load_script("tune_baselines").main(
        ["--env", "l2o/Quadratic-v0", "l2o/Rosenbrock-v0", "--policies", "cg", "--n-problems", "2", "--horizon", "2",
         "--out", str(out), "--quiet"])
    assert rc == 130
    saved = json.loads(out.read_text())["envs"]
    assert "l2o/Quadratic-v0@T2" in saved  # the first setting was saved ...
    err = capsys.readouterr().err
    assert "nothing was saved" not in err  # ... so the message must not deny it
    assert "saved" in err


def test_lstm_resume_with_another_val_set_is_refused_unless_reset_best(tmp_path):
    import dataclasses

    import pytest

    from l2o_gym.agents.lstm.trainer import TrainConfig, train
    from l2o_gym.checkpoint import CheckpointError

    cfg = TrainConfig(env_id="l2o/Quadratic-v0", family_kwargs={"dim": 2}, n_problems=2, horizon=4, unroll=2,
                      episodes=1, val_every=1, val_problems=3, out=str(tmp_path), progress=False)
    train(cfg)
    with pytest.raises(CheckpointError, match=r"val_problems \(3, now 5\), seed \(0, now 1\)"):
        train(dataclasses.replace(cfg, episodes=2, val_problems=5, seed=1), resume=True)
    train(dataclasses.replace(cfg, episodes=2, val_problems=5, seed=1), resume=True, reset_best=True)  # fine-tuning

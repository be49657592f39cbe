"""Checkpoints: atomic, safe to load, clear errors."""

from __future__ import annotations

import os

import pytest
import torch

from l2o_gym.checkpoint import (
    atomic_write,
    CheckpointError,
    check_compatible,
    load_policy_file,
    load_state,
    save_policy,
    save_state,
)


def test_policy_round_trip(tmp_path):
    t = {"w": torch.randn(3, 4), "b": torch.zeros(4)}
    p = save_policy(tmp_path / "p.safetensors", t, {"kind": "demo", "env_id": "l2o/Quadratic-v0", "dim": 10})
    tensors, cfg = load_policy_file(p, kind="demo")
    assert torch.equal(tensors["w"], t["w"]) and cfg["dim"] == 10 and cfg["format_version"] == 1
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_policy_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy_file(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_policy_file(bad)
    p = save_policy(tmp_path / "p.safetensors", {"w": torch.ones(1)}, {"kind": "lstm", "env_id": "l2o/MLP-v0", "dim": None})
    with pytest.raises(CheckpointError, match="'lstm' policy, expected 'gps'"):
        load_policy_file(p, kind="gps")
    _, cfg = load_policy_file(p)
    check_compatible(cfg, p, dim=123)  # coordinatewise: any dimension
    with pytest.raises(CheckpointError, match="trained on 'l2o/MLP-v0'"):
        check_compatible(cfg, p, env_id="l2o/Quadratic-v0")
    with pytest.raises(CheckpointError, match="dimension 3"):
        check_compatible({"dim": 3}, p, dim=10)


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    target = tmp_path / "p.safetensors"
    save_policy(target, {"w": torch.ones(2)}, {"kind": "demo"})
    with pytest.raises(TypeError, match="not tensors"):
        save_policy(target, {"w": "not a tensor"}, {"kind": "demo"})  # type: ignore[dict-item]

    def crash_midway(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash_midway)
    tensors, _ = load_policy_file(target)
    assert torch.equal(tensors["w"], torch.ones(2))
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_training_state_loads_with_weights_only(tmp_path):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.randn(3))])
    p = save_state(tmp_path / "s.pt", {"optimizer": opt.state_dict(), "step": 7, "rng": torch.get_rng_state()})
    s = load_state(p)
    assert s["step"] == 7
    (tmp_path / "evil.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        load_state(tmp_path / "evil.pt")

"""Conv GPS's Φ is built only when read: evaluation (which reads only Ψ) never allocates it."""

from __future__ import annotations

import torch

from l2o_gym.agents.gps import load_policy
from l2o_gym.agents.gps.coord import STATE_DIM, CoordinateFeatures
from l2o_gym.agents.common import pretrained_dir
from l2o_gym.core import CoreConfig
from l2o_gym.policy import run_policy
from l2o_gym.registry import env_family


def _steps(f: CoordinateFeatures, g: torch.Generator, n: int) -> torch.Tensor:
    th = torch.randn(2, 7, generator=g, dtype=torch.float64)
    f.reset(th, th.pow(2).sum(1), 2 * th)
    for _ in range(n):
        th = th - 0.1 * torch.randn(2, 7, generator=g, dtype=torch.float64)
        f.update(th, th.pow(2).sum(1), 2 * th)
    return th


def test_state_is_built_on_first_read_and_dropped_by_update() -> None:
    g = torch.Generator().manual_seed(0)
    f = CoordinateFeatures("sqrt", "ema")
    th = _steps(f, g, 12)
    assert f._phi is None  # Ψ only so far
    s = f.state
    assert s.shape == (2, 7, STATE_DIM) and torch.isfinite(s).all()
    assert f.state is s  # built once per step
    f.update(th - 0.1, (th - 0.1).pow(2).sum(1), 2 * (th - 0.1))
    assert f._phi is None
    assert not torch.equal(f.state, s)


def test_a_restored_tracker_gives_the_same_state_and_obs() -> None:
    g = torch.Generator().manual_seed(1)
    f = CoordinateFeatures("sign", "last3")
    th = _steps(f, g, 9)
    f.state  # noqa: B018 — built before the snapshot: must not be part of it
    snap = f.memory_state()
    assert "_phi" not in snap and "_gnorm" not in snap
    r = CoordinateFeatures.from_memory_state(snap)
    for tr in (f, r):
        tr.update(th * 0.9, (th * 0.9).pow(2).sum(1), 1.8 * th)
    assert torch.equal(f.obs, r.obs) and torch.equal(f.state, r.state)


def test_evaluating_conv_gps_never_builds_phi() -> None:
    policy = load_policy(pretrained_dir() / "gps_NNClassifier.safetensors")
    problems = env_family("l2o/NNClassifier-v0").sample(2, "test", 0, torch.device("cpu"), torch.float32)
    traj = run_policy(policy, problems, 5, CoreConfig(horizon=5, history=1, true_every=5))
    assert traj.memory.features._phi is None

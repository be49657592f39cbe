"""Command-line checks: benchmark thread counts, --family-kwargs values, the torchrun group wrapper."""

from __future__ import annotations


import pytest
import torch

from l2o_gym import core
from l2o_gym.experiments import cli

from conftest import load_script


def _bench():
    return load_script("bench")


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def step_threads(monkeypatch, keep_threads) -> list[int]:
    """The torch thread count at every ``core.step`` call (filled as the test runs)."""
    seen: list[int] = []
    step = core.step

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return step(*args, **kwargs)

    monkeypatch.setattr(core, "step", spy)
    return seen


def test_bench_step_runs_the_env_step_on_the_printed_thread_count(capsys, step_threads):
    """``bench.py step --threads 2`` printed "2 threads" and ran the bare pass on 2, the env step on 1 (its "auto"
    thread policy): the ratio compared different thread counts."""
    seen = step_threads
    rc = _bench().main(["step", "--env", "l2o/Quadratic-v0", "--n", "2", "--reps", "1", "--history", "2",
                        "--threads", "2"])
    assert rc == 0
    assert "2 threads" in capsys.readouterr().out
    assert seen and set(seen) == {2}


def test_bench_convnet_bad_family_kwargs_name_the_value(capsys):
    """``bench.py convnet --family-kwargs notjson`` said only "Expecting value: line 1 column 1 (char 0)"."""
    with pytest.raises(SystemExit) as exc:
        _bench().main(["convnet", "--family-kwargs", "notjson"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--family-kwargs" in err and "'notjson'" in err
    with pytest.raises(SystemExit) as exc:  # JSON, but not an object: refused before any work, naming it
        _bench().main(["convnet", "--family-kwargs", "[1]"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--family-kwargs" in err and "'[1]'" in err and "not a JSON object" in err


def test_torchrun_group_with_world_size_but_no_rank_is_not_distributed(monkeypatch):
    """WORLD_SIZE > 1 without torchrun's RANK made no group, yet the block claimed one and its end raised
    (a barrier on no group) after the work was done."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with cli.torchrun_group("cpu") as distributed:
        assert distributed is False


def test_bench_convnet_runs_the_env_step_on_the_printed_thread_count(capsys, step_threads):
    """As for ``step``: ``bench.py convnet --threads 2`` timed its ``env_step`` on 1 thread beside 2-thread
    variants (seen on a loaded 2-core machine: ``env_step_ratio`` 0.07x)."""
    seen = step_threads
    rc = _bench().main(["convnet", "--n-problems", "1", "--reps", "1", "--no-meta", "--threads", "2"])
    assert rc == 0
    assert "2 threads" in capsys.readouterr().out
    assert seen and set(seen) == {2}


def test_gps_policy_bound_resume_with_another_horizon_is_refused(tmp_path):
    """A finished run at T=2 resumed at T=3 reported its T=2 best value as the T=3 one; now refused, naming it."""
    import pytest

    from l2o_gym.agents.gps.bound import BoundAgent, BoundConfig
    from l2o_gym.agents.common import fit
    from l2o_gym.checkpoint import CheckpointError

    cfg = BoundConfig(horizon=2, history=2, hidden=(4,), episodes=2, batch=4, n_val=4, val_every=1)
    fit(BoundAgent(cfg), tmp_path, progress=False, tensorboard=False)
    import dataclasses

    with pytest.raises(CheckpointError, match=r"horizon \(2, now 3\)"):
        fit(BoundAgent(dataclasses.replace(cfg, horizon=3, episodes=3)), tmp_path, resume=True, progress=False,
            tensorboard=False)

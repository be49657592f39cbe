"""The thread policy (l2o_gym.threads): envs, evaluation, compare workers, the busy-machine benchmark."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import l2o_gym.envs.common as env_common
from l2o_gym.agents.baselines import make_baseline
from l2o_gym.experiments.benchmark import busy_throughput, cpu_competitors
from l2o_gym.experiments.compare import TIMING_FIELDS, CompareConfig, Section, run_comparison
from l2o_gym.experiments.evaluation import evaluate
from l2o_gym.threads import SMALL_WORK, auto_threads, check_threads, torch_threads

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_threads_sets_and_restores_even_on_error():
    torch.set_num_threads(3)
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    with pytest.raises(RuntimeError, match="boom"):
        with torch_threads(2):
            assert torch.get_num_threads() == 2
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 3
    with torch_threads(None):
        assert torch.get_num_threads() == 3


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "two"])
def test_check_threads_names_the_bad_value(bad):
    with pytest.raises(ValueError, match=f"threads must be a positive integer, 'auto' or None, got {bad!r}"):
        check_threads(bad)


def test_auto_rule_is_one_thread_below_the_threshold():
    assert auto_threads(SMALL_WORK - 1) == 1
    assert auto_threads(SMALL_WORK) is None


def _record_step_threads(monkeypatch) -> list[int]:
    seen: list[int] = []
    real_step = env_common.core.step

    def step(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_step(*args, **kwargs)

    monkeypatch.setattr(env_common.core, "step", step)
    return seen


@pytest.mark.parametrize("threads, inside", [("auto", 1), (None, 3), (2, 2)])
def test_vector_env_steps_under_its_thread_setting_and_restores_the_users(monkeypatch, threads, inside):
    seen = _record_step_threads(monkeypatch)
    torch.set_num_threads(3)
    env = gym.make_vec("l2o/Quadratic-v0", 16, threads=threads)
    env.reset(seed=0)
    env.step(torch.zeros(16, 10))
    assert seen == [inside]
    assert torch.get_num_threads() == 3  # the caller's global setting is untouched
    env.close()


def test_single_env_auto_is_one_thread_and_large_batches_keep_the_callers_setting(monkeypatch):
    seen = _record_step_threads(monkeypatch)
    torch.set_num_threads(3)
    env = gym.make("l2o/Quadratic-v0")
    env.reset(seed=0)
    env.step(np.zeros(10, dtype=np.float32))
    assert seen == [1] and torch.get_num_threads() == 3
    big = env_common.BatchedOptimizee("quadratic", SMALL_WORK // 275 + 1)  # N·F just above the threshold
    assert big.num * big.obs_dim >= SMALL_WORK and big.step_threads is None
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        gym.make_vec("l2o/Quadratic-v0", 4, threads=0)


def test_env_outputs_do_not_depend_on_the_thread_setting():
    out = []
    for threads in ("auto", 2):
        env = gym.make_vec("l2o/Quadratic-v0", 64, threads=threads)
        obs, _ = env.reset(seed=3)
        obs, reward, *_ = env.step(torch.full((64, 10), 0.1))
        out.append((obs, reward))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_evaluate_runs_on_one_thread_by_default_and_restores_the_callers_setting():
    policy = make_baseline("sgd", lr=0.01)
    seen: list[int] = []
    act = policy.act

    def recording_act(state, memory):
        seen.append(torch.get_num_threads())
        return act(state, memory)

    policy.act = recording_act
    torch.set_num_threads(3)
    evaluate(policy, "l2o/Quadratic-v0", n_problems=4, horizon=3)
    assert set(seen) == {1} and torch.get_num_threads() == 3
    seen.clear()
    evaluate(policy, "l2o/Quadratic-v0", n_problems=4, horizon=3, threads=None)
    assert set(seen) == {3}
    with pytest.raises(ValueError, match="got 'auto'"):
        evaluate(policy, "l2o/Quadratic-v0", n_problems=4, horizon=3, threads="auto")


def test_results_json_is_identical_for_one_and_two_workers(tmp_path):
    """The reproducibility test of issue 17 §2 at study-tiny size. The LogisticRegression LSTM is a case
    where one and two torch threads give different numbers (MKL's small-matrix sgemm), so identity here also
    shows that the parent's thread setting does not leak into the jobs."""
    sections = [
        Section("l2o/Quadratic-v0", ["sgd", "adam", "lbfgs", "lstm"], 5, 10, n_problems=3),
        Section("l2o/LogisticRegression-v0", ["momentum", "cg", "gps", "lstm"], 2, 4, n_problems=3),
    ]
    torch.set_num_threads(2)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        run_comparison(CompareConfig(sections=sections, out=str(out), workers=workers), progress=False)
        outs.append(out)
    a, b = ((o / "results.json").read_bytes() for o in outs)
    assert a == b
    runs = json.loads(a)["runs"]
    assert len(runs) == 2 * 4 + 2 * 4 and not any(f in r for r in runs for f in TIMING_FIELDS)
    timings = json.loads((outs[1] / "timings.json").read_text())
    assert timings["workers"] == 2 and len(timings["runs"]) == len(runs)
    assert all(t["wall_s"] > 0 and t["cpu_s"] > 0 for t in timings["runs"])
    assert torch.get_num_threads() == 2


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        CompareConfig(envs=["l2o/Quadratic-v0"], out=str(tmp_path), workers=0).resolve_workers(3)
    assert CompareConfig(workers=4).resolve_workers(2) == 2  # never more workers than jobs


def test_cpu_competitors_are_started_and_stopped():
    with cpu_competitors(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)


def test_busy_throughput_reports_idle_busy_and_ratio():
    rows = busy_throughput("l2o/Quadratic-v0", 8, modes=("auto", "1"), rounds=1, seconds=0.05)
    assert [r["mode"] for r in rows] == ["auto", "1"]
    for r in rows:
        assert r["idle_median"] > 0 and r["busy_median"] > 0
        assert r["ratio"] == pytest.approx(r["busy"][0] / r["idle"][0])
    with pytest.raises(ValueError, match="unknown thread mode"):
        busy_throughput(modes=("fast",))


@pytest.mark.parametrize("script, argv, message", [
    ("compare", ["--env", "l2o/Quadratic-v0", "--workers", "0", "--out", "{tmp}"],
     "argument --workers: expected a positive integer, got '0'"),
    ("bench", ["busy", "--rounds", "0"], "argument --rounds: expected a positive integer, got '0'"),
    ("bench", ["busy", "--seconds", "inf"], "argument --seconds: expected a finite number, got 'inf'"),
])
def test_cli_rejects_bad_thread_flags(script, argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _script(script).main([a.format(tmp=tmp_path) for a in argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_failing_job_in_a_worker_raises_in_the_parent(tmp_path, monkeypatch):
    import shutil

    import l2o_gym.experiments.compare as compare
    from l2o_gym.checkpoint import CheckpointError

    ckpt = tmp_path / "lstm.safetensors"
    shutil.copy(compare.pretrained_path("lstm", "l2o/Quadratic-v0"), ckpt)
    real_plan = compare.plan

    def plan_then_delete(cfg):
        jobs = real_plan(cfg)  # checks pass here ...
        ckpt.unlink()  # ... and the file is gone when the worker process loads it
        return jobs

    monkeypatch.setattr(compare, "plan", plan_then_delete)
    cfg = CompareConfig(sections=[Section("l2o/Quadratic-v0", ["sgd", f"lstm={ckpt}"], 3, n_problems=2)],
                        out=str(tmp_path / "out"), workers=2)
    with pytest.raises((CheckpointError, FileNotFoundError), match="lstm.safetensors"):
        compare.run_jobs(cfg, progress=False)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="needs an AVX2 CPU")
def test_portable_runs_pin_the_kernels_and_do_not_depend_on_workers(tmp_path):
    import os

    before = os.environ.get("ATEN_CPU_CAPABILITY")
    sections = [Section("l2o/Quadratic-v0", ["sgd", "lstm"], 4, 8, n_problems=3)]
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        run_comparison(CompareConfig(sections=sections, out=str(out), workers=workers, portable=True), progress=False)
        outs.append(out)
        timings = json.loads((out / "timings.json").read_text())["runs"]
        assert {t["cpu_capability"] for t in timings} == {"AVX2"}
    assert (outs[0] / "results.json").read_bytes() == (outs[1] / "results.json").read_bytes()
    assert os.environ.get("ATEN_CPU_CAPABILITY") == before  # the parent's environment is restored

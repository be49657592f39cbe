"""``compare.py --status`` / ``compare.job_status``: per section, how many jobs a ``--resume`` would take."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script

from l2o_gym.experiments.compare import CompareConfig, Section, job_status, run_jobs


def _cfg(out: Path) -> CompareConfig:
    return CompareConfig(sections=[Section("l2o/Quadratic-v0", ["sgd", "adam"], 3, 6, n_problems=2, title="quad"),
                                   Section("l2o/LogisticRegression-v0", ["sgd"], 3, n_problems=2, title="logreg")],
                         out=str(out), workers=1)


def test_status_counts_saved_jobs_per_section(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "o")
    assert job_status(cfg) == [("quad", 0, 4), ("logreg", 0, 1)]
    run_jobs(CompareConfig(sections=cfg.sections[:1], out=cfg.out, workers=1), progress=False)
    assert job_status(cfg) == [("quad", 4, 4), ("logreg", 0, 1)]


def test_status_uses_the_runs_kernel_keys(tmp_path: Path) -> None:
    import dataclasses

    cfg = _cfg(tmp_path / "o")
    run_jobs(cfg, progress=False)  # native kernels (portable=False)
    assert [d for _, d, _ in job_status(cfg)] == [4, 1]
    pinned = dataclasses.replace(cfg, portable=True)
    from l2o_gym.kernels import can_pin

    if can_pin():
        assert [d for _, d, _ in job_status(pinned)] == [0, 0]  # the pinned run's jobs are other jobs


def test_script_status_runs_nothing(tmp_path: Path, capsys) -> None:
    main = load_script("compare").main
    out = tmp_path / "o"
    argv = ["--env", "l2o/Quadratic-v0", "--policies", "sgd", "--n-problems", "2", "--horizon", "3", "--out", str(out)]
    assert main([*argv, "--status", "--quiet"]) == 0
    assert "0 / 1" in capsys.readouterr().out and not (out / "results.json").exists()
    assert main([*argv, "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert main([*argv, "--status", "--quiet"]) == 0
    assert "1 / 1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--status", "--resume"])
    assert exc.value.code == 2

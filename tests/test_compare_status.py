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
    assert exc.value.code == 2 and "--status runs nothing: it cannot be combined with --resume" in capsys.readouterr().err



def test_saved_only_narrows_to_the_complete_sections(tmp_path: Path) -> None:
    from l2o_gym.experiments.compare import saved_sections

    cfg = _cfg(tmp_path / "o")
    with pytest.raises(ValueError, match=r"no section .* complete .* \(0 of 5 jobs saved\)"):
        saved_sections(cfg)
    run_jobs(CompareConfig(sections=cfg.sections[:1], out=cfg.out, workers=1), progress=False)
    part = saved_sections(cfg)
    assert [s.name for s in part.sections] == ["quad"] and part.resume
    assert part.note.startswith("partial report: 1 of 2 sections") and "logreg (0/1)" in part.note
    assert [d == t for _, d, t in job_status(part)] == [True]  # a run of it evaluates nothing


def test_script_saved_only_reports_what_is_saved_and_runs_nothing(tmp_path: Path, capsys) -> None:
    import json

    main = load_script("compare").main
    out = tmp_path / "o"
    common = ["--policies", "sgd", "adam", "--n-problems", "2", "--horizon", "3", "--long-horizon", "6",
              "--out", str(out), "--workers", "1", "--quiet"]
    both = ["--env", "l2o/Quadratic-v0", "l2o/LogisticRegression-v0", *common]
    with pytest.raises(SystemExit) as exc:  # nothing saved yet
        main([*both, "--saved-only"])
    assert exc.value.code == 2 and "no section of this run is complete" in capsys.readouterr().err
    assert main(["--env", "l2o/Quadratic-v0", *common]) == 0  # one section's jobs
    full = json.loads((out / "results.json").read_text())["runs"]
    n_jobs = len(list((out / "jobs").iterdir()))
    capsys.readouterr()
    assert main([*both, "--saved-only"]) == 0
    assert len(list((out / "jobs").iterdir())) == n_jobs  # nothing new ran
    report = (out / "report.md").read_text()
    assert "partial report: 1 of 2 sections" in report and "l2o/LogisticRegression-v0 (0/4)" in report
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert runs == full  # the same results, read from the saved jobs
    with pytest.raises(SystemExit) as exc:
        main([*both, "--status", "--saved-only"])
    assert exc.value.code == 2 and "cannot be combined with --saved-only" in capsys.readouterr().err

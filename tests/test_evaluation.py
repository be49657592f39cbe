"""Evaluation, tuning and the comparison harness."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from l2o_gym.agents import Adam, GradientDescent, LBFGS
from l2o_gym.agents.baselines import make_baseline
from l2o_gym.checkpoint import CheckpointError
from l2o_gym.experiments.compare import TIMING_FIELDS, CompareConfig, PolicySpec, Section, plan, run_comparison
from l2o_gym.core import CoreConfig
from l2o_gym.experiments.evaluation import bootstrap_mean_ci, evaluate
from l2o_gym.policy import run_policy
from l2o_gym.registry import env_family
from l2o_gym.problems.base import ProblemFamily
from l2o_gym.experiments.tuning import LR_GRID, load_tuned, setting_key, tune, tune_setting, tuned_entry, variant_kwargs

RESULT_KEYS = {
    "env", "policy", "horizon", "n_problems", "seed", "final_mean", "final_median", "log10_final_mean",
    "auc_mean", "diverged_fraction", "grad_evals", "wall_s", "curve_mean", "curve_ci_low", "curve_ci_high",
}


def test_evaluate_metrics_and_determinism():
    a = evaluate(GradientDescent(0.01), "l2o/Quadratic-v0", n_problems=20, horizon=30, seed=1)
    b = evaluate(GradientDescent(0.01), "l2o/Quadratic-v0", n_problems=20, horizon=30, seed=1)
    assert a.curve_mean == b.curve_mean and a.curve_ci_low == b.curve_ci_low
    assert len(a.curve_mean) == 31 and a.grad_evals == 30 and a.diverged_fraction == 0
    assert a.curve_ci_low[-1] <= a.final_mean <= a.curve_ci_high[-1]
    assert a.log10_final_mean == pytest.approx(math.log10(a.final_mean))
    # the per-problem finals and the curve give the summary numbers; AUC: trapezoid rule over t = 0…T, divided by T
    assert len(a.final_values) == 20 and a.final_mean == pytest.approx(float(np.mean(a.final_values)))
    assert a.final_median == pytest.approx(float(np.median(a.final_values))) and a.final_median != a.final_mean
    assert a.curve_mean[-1] == pytest.approx(a.final_mean)
    c = a.curve_mean
    assert a.auc_mean == pytest.approx((sum(c) - 0.5 * (c[0] + c[-1])) / 30, rel=1e-12)
    assert set(a.as_dict()) >= RESULT_KEYS


def test_divergence_is_recorded_not_nan():
    r = evaluate(GradientDescent(10.0), "l2o/Quadratic-v0", n_problems=10, horizon=20)
    assert r.diverged_fraction == 1.0
    assert all(math.isfinite(x) for x in r.curve_mean + [r.final_mean, r.auc_mean])


def test_line_search_evals_reported():
    r = evaluate(LBFGS(), "l2o/LogisticRegression-v0", n_problems=4, horizon=10)
    assert r.grad_evals > 10  # line-search evaluations counted, not one per iteration


def test_bootstrap_ci_covers_the_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, size=(3, 400))
    lo, hi = bootstrap_mean_ci(x, seed=0)
    assert np.all(lo < x.mean(1)) and np.all(x.mean(1) < hi)
    assert np.all(hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.2))


def test_lr_grid_spans_documented_range():
    assert LR_GRID[0] == pytest.approx(1e-5) and LR_GRID[-1] == pytest.approx(10)
    assert len(LR_GRID) == 25 and all(b / a == pytest.approx(10**0.25, rel=1e-4) for a, b in zip(LR_GRID, LR_GRID[1:]))


def test_tuning_never_reads_test(monkeypatch):
    seen = []
    orig = ProblemFamily.sampler

    def spy(self, split="train", *args, **kwargs):
        seen.append(split)
        return orig(self, split, *args, **kwargs)

    monkeypatch.setattr(ProblemFamily, "sampler", spy)
    res = tune_setting("adam", "l2o/Quadratic-v0", n_problems=4, horizon=10)
    assert seen and set(seen) == {"train"}
    assert res["hparams"]["lr"] in LR_GRID
    with pytest.raises(ValueError, match="test split"):
        tune_setting("sgd", "l2o/Quadratic-v0", split="test")


def test_tuning_picks_best_stable_learning_rate():
    res = tune_setting("sgd", "l2o/Quadratic-v0", n_problems=8, horizon=20)
    lr = res["hparams"]["lr"]
    problems = env_family("l2o/Quadratic-v0").sample(8, "train", 0)

    def final(step: float) -> tuple[float, bool]:
        traj = run_policy(GradientDescent(step), problems, 20, CoreConfig(horizon=20, history=1))
        stable = not traj.state.terminated.any() and bool((traj.losses[-1] <= traj.losses[0]).all())
        penalized = torch.where(traj.state.terminated, traj.state.threshold, traj.losses[-1])  # the core's penalty
        return float(penalized.double().mean()), stable

    # the rule, re-implemented over the whole grid: lowest mean penalized final objective, a step whose next larger step
    # is unstable (diverged or ended above f(θ0) somewhere) scoring at least that step's mean
    runs = [final(step) for step in LR_GRID]
    scores = [max(m, runs[k + 1][0]) if k + 1 < len(runs) and not runs[k + 1][1] else m for k, (m, _) in enumerate(runs)]
    assert lr == LR_GRID[scores.index(min(scores))]
    assert runs[LR_GRID.index(lr)][0] == pytest.approx(res["score"])


@pytest.fixture(scope="module")
def tiny_tuned(tmp_path_factory):
    path = tmp_path_factory.mktemp("tuned") / "tuned.json"
    tune(["l2o/Quadratic-v0", "l2o/LogisticRegression-v0"], ["sgd", "adam", "cg"], n_problems=4, horizon=8,
         command="pytest", out=path)
    return path


def test_tuned_file_round_trip(tiny_tuned):
    data = json.loads(tiny_tuned.read_text())
    assert data["protocol"]["grids"]["sgd"]["lr"][0] == pytest.approx(1e-5)
    assert data["protocol"]["grids"]["cg"] == {}
    tuned = load_tuned(tiny_tuned)
    assert set(tuned) == {"l2o/Quadratic-v0@T8", "l2o/LogisticRegression-v0@T8"}
    assert tuned["l2o/Quadratic-v0@T8"]["cg"]["hparams"] == {}
    assert tuned["l2o/Quadratic-v0@T8"]["sgd"]["command"] == "pytest"
    assert tuned["l2o/Quadratic-v0@T8"]["sgd"]["horizon"] == 8


def test_tuned_entry_prefers_the_horizon_and_falls_back(caplog, monkeypatch):
    from l2o_gym.experiments import tuning as tuning_mod

    monkeypatch.setattr(tuning_mod, "_FALLBACKS_SAID", set())
    tuned = {
        "l2o/Quadratic-v0": {"sgd": {"hparams": {"lr": 0.1}, "horizon": 100}},
        "l2o/Quadratic-v0@T20": {"sgd": {"hparams": {"lr": 0.3}, "horizon": 20}},
        "l2o/MLP-v0+relu": {"adam": {"hparams": {"lr": 0.01}, "horizon": 100}},
    }
    assert tuned_entry(tuned, "l2o/Quadratic-v0", "sgd", 20)["hparams"] == {"lr": 0.3}
    assert tuned_entry(tuned, "l2o/Quadratic-v0", "sgd", 100)["hparams"] == {"lr": 0.1}
    with caplog.at_level("WARNING"):
        assert tuned_entry(tuned, "l2o/Quadratic-v0", "sgd", 50)["hparams"] == {"lr": 0.1}
        assert tuned_entry(tuned, "l2o/Quadratic-v0", "sgd", 50)["hparams"] == {"lr": 0.1}
    assert caplog.text.count("no hyperparameters tuned at T=50") == 1  # said once per process
    # without a T=100 entry: the closest horizon (T=300 takes T400's, not T1000's, which sorts first as text)
    art = {f"l2o/NeuralArt-v0@T{t}": {"sgd": {"hparams": {"lr": t}, "horizon": t}} for t in (20, 400, 1000)}
    assert [tuned_entry(art, "l2o/NeuralArt-v0", "sgd", t)["hparams"]["lr"] for t in (300, 900, 210, 1)] == \
        [400, 1000, 20, 20]
    assert tuned_entry(tuned, "l2o/MLP-v0", "adam", 100, "relu")["hparams"] == {"lr": 0.01}
    assert tuned_entry(tuned, "l2o/MLP-v0", "adam", 100) is None  # a variant never stands in for the base env
    assert setting_key("l2o/MLP-v0", 20, "relu") == "l2o/MLP-v0+relu@T20"
    with pytest.raises(ValueError, match="unknown variant 'tanh' of l2o/MLP-v0.*relu"):
        variant_kwargs("l2o/MLP-v0", "tanh")


def test_compare_writes_results_report_and_plots(tiny_tuned, tmp_path):
    out = tmp_path / "run"
    cfg = CompareConfig(envs=["l2o/Quadratic-v0", "l2o/LogisticRegression-v0"], policies=["sgd", "adam", "cg"],
                        n_problems=5, horizon=6, long_horizon=12, out=str(out), tuned=str(tiny_tuned))
    results = run_comparison(cfg, progress=False)
    assert len(results) == 2 * 3 * 2
    data = json.loads((out / "results.json").read_text())
    assert len(data["runs"]) == 12
    for run in data["runs"]:
        assert set(run) >= RESULT_KEYS - set(TIMING_FIELDS)  # timings go to timings.json
        assert len(run["curve_mean"]) == run["horizon"] + 1 == len(run["curve_ci_high"])
    report = (out / "report.md").read_text()
    assert "## l2o/Quadratic-v0 — T = 6," in report and "## l2o/LogisticRegression-v0 — T = 12," in report
    assert report.count("**") >= 2 * 4 * 8  # one bold row per table
    for name in ("Quadratic_T6.png", "Quadratic_T12.png", "LogisticRegression_T6.png"):
        png = out / name
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name, env, horizons, kwargs", [
    ("sgd", "l2o/Quadratic-v0", (5, 12), {}),
    ("cg", "l2o/LogisticRegression-v0", (4, 9), {}),  # line searches: evaluations counted at each horizon
    ("lbfgs", "l2o/LogisticRegression-v0", (4, 9), {}),
    ("lstm", "l2o/Quadratic-v0", (5, 12), {}),
    ("gps", "l2o/LogisticRegression-v0", (4, 9), {}),  # features of the history: the core config of the policy
    ("ppo", "l2o/LogisticRegression-v0", (4, 9), {}),
    ("gps", "l2o/NNClassifier-v0", (10, 20), {"true_every": 5}),  # conv GPS; the true objective every 5 steps
])
def test_one_rollout_gives_every_horizon_exactly_as_separate_runs(name, env, horizons, kwargs):
    from l2o_gym.experiments.compare import PolicySpec, _load_learned
    from l2o_gym.experiments.evaluation import evaluate_horizons

    policy = make_baseline(name) if name in ("sgd", "cg", "lbfgs") else _load_learned(PolicySpec.parse(name), env, "cpu")[0]
    fam = {"n_problems": 3, "n_boot": 50, **kwargs}
    joint = evaluate_horizons(policy, env, horizons=horizons, **fam)
    assert [r.horizon for r in joint] == sorted(horizons)
    for r in joint:
        alone = evaluate(policy, env, horizon=r.horizon, **fam)
        a, b = r.as_dict(), alone.as_dict()
        a.pop("wall_s"), b.pop("wall_s")
        assert a == b  # every field, bit for bit: curves, CIs, medians, AUC, divergence, evaluation counts


def test_evaluate_horizons_rejects_a_prefix_the_true_objective_is_not_exact_at():
    from l2o_gym.experiments.evaluation import evaluate_horizons

    with pytest.raises(ValueError, match=r"horizons \[7\] are not multiples of true_every=5"):
        evaluate_horizons(Adam(0.01), "l2o/NNClassifier-v0", horizons=(7, 20), n_problems=2, true_every=5)
    with pytest.raises(ValueError, match="horizons must be positive integers, got \\(0, 5\\)"):
        evaluate_horizons(Adam(0.01), "l2o/Quadratic-v0", horizons=(0, 5), n_problems=2)


def test_resume_reruns_only_the_unfinished_jobs_and_writes_the_same_results(tiny_tuned, tmp_path, monkeypatch, caplog):
    from l2o_gym.experiments import compare

    cfg = CompareConfig(envs=["l2o/Quadratic-v0"], policies=["sgd", "adam"], n_problems=3, horizon=5, long_horizon=8,
                        out=str(tmp_path), tuned=str(tiny_tuned), workers=1)
    run_comparison(cfg, progress=False)
    first = (tmp_path / "results.json").read_bytes()
    jobs = compare.plan(cfg)
    files = {(j.label, j.horizon): tmp_path / compare.JOBS_DIR / f"{compare.job_key(j.task(cfg))}.json" for j in jobs}
    assert len(files) == 4 and all(f.is_file() for f in files.values())  # one per policy × horizon
    # a run stopped before SGD had finished: its T job's file is missing, its long one corrupt (a crash cannot
    # leave one half-written — atomic writes — but a truncated copy is re-run with a warning)
    files["sgd", 5].unlink()
    files["sgd", 8].write_text("{not json")
    ran = []
    real = compare._evaluate_task
    monkeypatch.setattr(compare, "_evaluate_task", lambda task, policy=None: ran.append(task) or real(task, policy))
    (tmp_path / "results.json").unlink()
    with caplog.at_level("WARNING"):
        run_comparison(dataclasses.replace(cfg, resume=True), progress=False)
    # one rollout of 8 steps gives SGD's T = 5 and 8 results (evaluate_horizons); Adam's came from its files
    assert [(t.label, t.prefixes, t.horizon) for t in ran] == [("sgd", (5,), 8)] and "unreadable job file" in caplog.text
    assert (tmp_path / "results.json").read_bytes() == first  # byte-identical to the uninterrupted run
    # everything cached now: a resumed run evaluates nothing; without resume every policy runs again
    ran.clear()
    run_comparison(dataclasses.replace(cfg, resume=True), progress=False)
    assert ran == [] and (tmp_path / "results.json").read_bytes() == first
    run_comparison(cfg, progress=False)
    assert sorted(t.label for t in ran) == ["adam", "sgd"]
    # the key covers what the result depends on: horizon, hyperparameters, a checkpoint's bytes (not its path)
    task = compare.plan(cfg)[0].task(cfg)
    assert compare.job_key(task) != compare.job_key(dataclasses.replace(task, horizon=6))
    assert compare.job_key(task) != compare.job_key(dataclasses.replace(task, hparams={"lr": 0.5}))
    assert compare.job_key(task) != compare.job_key(task, portable=True)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"one"), b.write_bytes(b"one")
    ka, kb = (compare.job_key(dataclasses.replace(task, checkpoint=str(f))) for f in (a, b))
    assert ka == kb
    b.write_bytes(b"two")
    assert compare.job_key(dataclasses.replace(task, checkpoint=str(b))) != ka


def test_one_rollout_per_policy_never_mixes_two_jobs(tiny_tuned, tmp_path):
    from l2o_gym.agents.lstm.policy import PRETRAINED_DIR, LSTMPolicy
    from l2o_gym.experiments.compare import run_jobs

    base = dict(envs=["l2o/Quadratic-v0"], n_problems=3, horizon=5, tuned=str(tiny_tuned), workers=1)
    # the same policy twice: every job gets its own result at its own horizon
    twice = run_jobs(CompareConfig(policies=["sgd", "sgd"], long_horizon=8, out=str(tmp_path / "a"), **base))
    assert [(r.policy, r.horizon) for r in twice] == [("sgd", 5), ("sgd", 8), ("sgd", 5), ("sgd", 8)]
    assert twice[0].final_mean == twice[2].final_mean and twice[1].final_mean == twice[3].final_mean
    # a long horizon equal to T would run every job twice and list every row twice: refused before any work
    with pytest.raises(ValueError, match="long_horizon=5 equals the horizon T=5"):
        run_jobs(CompareConfig(policies=["sgd"], long_horizon=5, out=str(tmp_path / "b"), **base))
    # two checkpoints of one kind (one label): one rollout each, never one for both
    a, b = str(PRETRAINED_DIR / "lstm_Quadratic.safetensors"), str(tmp_path / "other.safetensors")
    other = LSTMPolicy.load(a)
    with torch.no_grad():
        other.net.out.weight.mul_(0.5)  # another checkpoint of the same kind and env
    other.save(b)
    two = run_jobs(CompareConfig(policies=[f"lstm={a}", f"lstm={b}"], long_horizon=8, out=str(tmp_path / "c"), **base))
    assert [(r.extra["checkpoint"], r.horizon) for r in two] == [(a, 5), (a, 8), (b, 5), (b, 8)]
    for r in two:
        alone = run_jobs(CompareConfig(policies=[f"lstm={r.extra['checkpoint']}"], out=str(tmp_path / "d"),
                                       **{**base, "horizon": r.horizon}))[0]
        assert r.final_mean == alone.final_mean and r.curve_mean == alone.curve_mean
    assert two[0].final_mean != two[2].final_mean


def test_two_sections_of_one_env_and_horizon_get_one_figure_each(tiny_tuned, tmp_path):
    # e.g. a 10T check on fewer problems beside the T section: the second figure must not overwrite the first
    sections = [Section("l2o/Quadratic-v0", ["sgd"], 6, None, n_problems=4),
                Section("l2o/Quadratic-v0", ["sgd"], 6, 12, n_problems=2, title="Quadratic (10T, 2 problems)")]
    run_comparison(CompareConfig(sections=sections, out=str(tmp_path), tuned=str(tiny_tuned)), progress=False)
    report = (tmp_path / "report.md").read_text()
    assert "(Quadratic_T6.png)" in report and "(Quadratic-10T-2-problems_T6.png)" in report
    assert "(Quadratic_T12.png)" in report  # unique already: its own name
    for name in ("Quadratic_T6.png", "Quadratic-10T-2-problems_T6.png", "Quadratic_T12.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"envs": ["l2o/Nope-v0"]}, ValueError, "unknown env id 'l2o/Nope-v0'.*l2o/Quadratic-v0"),
        ({"policies": ["newton"]}, ValueError, "unknown policy 'newton'.*sgd.*lstm"),
        ({"policies": ["sgd=foo.pt"]}, ValueError, "takes no checkpoint"),
        ({"policies": ["lstm=/nonexistent.safetensors"]}, CheckpointError, "does not exist"),
        ({"envs": ["l2o/Rosenbrock-v0"]}, ValueError, "no tuned hyperparameters"),
        ({"out": "/proc/forbidden/run"}, OSError, "not writable"),
    ],
)
def test_compare_bad_input_fails_before_work(tiny_tuned, tmp_path, kwargs, exc, match):
    base = dict(envs=["l2o/Quadratic-v0"], policies=["sgd"], n_problems=2, horizon=2, out=str(tmp_path / "o"),
                tuned=str(tiny_tuned))
    with pytest.raises(exc, match=match):
        plan(CompareConfig(**{**base, **kwargs}))


def test_policy_spec_parsing():
    assert PolicySpec.parse("LSTM=ckpt.safetensors") == PolicySpec("lstm", "ckpt.safetensors")
    assert PolicySpec.parse("adam") == PolicySpec("adam", None)


def test_compare_cli_usage_errors(tmp_path, capsys):
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["compare.py", "--env", "l2o/Nope-v0", "--out", str(tmp_path)]
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path("scripts/compare.py", run_name="__main__")
    finally:
        sys.argv = argv
    assert e.value.code == 2 and "unknown env id" in capsys.readouterr().err


def test_first_order_baselines_on_1000_quadratics_are_fast():
    # Correctness at scale (timing is recorded by docs/benchmarks.md, not asserted here).
    r = evaluate(Adam(0.1), "l2o/Quadratic-v0", n_problems=1000, horizon=100, n_boot=50)
    assert r.n_problems == 1000 and r.final_mean < 0.5 * r.curve_mean[0]


def test_oracle_rows_use_the_sections_own_tuned_setting(tmp_path):
    import json

    from l2o_gym.experiments.compare import CompareConfig, PolicySpec, Section, plan

    assert PolicySpec.parse("Adam:oracle") == PolicySpec("adam", None, True)
    assert PolicySpec.parse("adam:oracle").label == "adam:oracle"
    with pytest.raises(ValueError, match="only a hand-designed baseline has an oracle row"):
        PolicySpec.parse("lstm:oracle")
    tuned = tmp_path / "tuned.json"
    entry = lambda lr: {"hparams": {"lr": lr}, "horizon": 10}  # noqa: E731
    tuned.write_text(json.dumps({"envs": {"l2o/MLP-v0@T10": {"sgd": entry(0.1)},
                                          "l2o/MLP-v0+relu@T10": {"sgd": entry(0.3)}}}))
    sec = Section("l2o/MLP-v0", ["sgd", "sgd:oracle"], 10, variant="relu", n_problems=1, tuned_as="")
    jobs = plan(CompareConfig(sections=[sec], out=str(tmp_path / "o"), tuned=str(tuned)))
    by = {j.label: j for j in jobs}
    assert by["sgd"].hparams == {"lr": 0.1} and by["sgd"].extra["tuned_as"] == "l2o/MLP-v0"
    assert by["sgd:oracle"].hparams == {"lr": 0.3} and by["sgd:oracle"].extra["tuned_as"] == "relu"
    tuned.write_text(json.dumps({"envs": {"l2o/MLP-v0@T10": {"sgd": entry(0.1)}}}))
    with pytest.raises(ValueError, match=r"'sgd:oracle'.*--variant relu --horizon 10 --policies sgd"):
        plan(CompareConfig(sections=[sec], out=str(tmp_path / "o"), tuned=str(tuned)))


def test_compare_defaults_to_the_baselines_tuned_for_every_env():
    """``compare.py --env ...`` without ``--policies`` runs the baselines that have tuned hyperparameters for all
    its envs (AdaGrad is tuned only for the neural-net families), never one it would then refuse."""
    from l2o_gym.experiments.compare import tuned_baselines_for

    plain = tuned_baselines_for(["l2o/Quadratic-v0"], 100)
    assert "adam" in plain and "adagrad" not in plain
    assert "adagrad" in tuned_baselines_for(["l2o/NNClassifier-v0"], 400)
    assert tuned_baselines_for(["l2o/Quadratic-v0", "l2o/NNClassifier-v0"], 100) == [
        p for p in plain if p in tuned_baselines_for(["l2o/NNClassifier-v0"], 100)]


def test_compare_script_without_policies_runs_the_tuned_baselines(tmp_path):
    import json

    from conftest import load_script

    code = load_script("compare").main(["--env", "l2o/Quadratic-v0", "--n-problems", "2", "--horizon", "5",
                                         "--workers", "1", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    ran = {r["policy"] for r in json.loads((tmp_path / "results.json").read_text())["runs"]}
    assert "sgd" in ran and "lbfgs" in ran and "adagrad" not in ran

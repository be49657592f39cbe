"""``compare.py --variant`` / ``CompareConfig.variants``: one section per named variant of every env, baselines tuned
on the variant itself or (``--tuned-on env``) on the plain env, applied unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

from l2o_gym.experiments.compare import CompareConfig, plan

NN = "l2o/NNClassifier-v0"


def test_sections_per_env_and_variant() -> None:
    cfg = CompareConfig(envs=[NN], variants=["digits", "mnist-wide"], policies=["sgd"], tuned_on="env")
    secs = cfg.resolve_sections()
    assert [(s.env, s.variant, s.tuned_as) for s in secs] == [(NN, "digits", ""), (NN, "mnist-wide", "")]
    assert [s.variant for s in CompareConfig(envs=[NN], policies=["sgd"]).resolve_sections()] == [None]
    with pytest.raises(ValueError, match="unknown tuned_on 'mnist'"):
        CompareConfig(envs=[NN], variants=["digits"], tuned_on="mnist").resolve_sections()


def test_tuned_on_env_uses_the_plain_envs_hyperparameters(tmp_path: Path) -> None:
    cfg = CompareConfig(envs=[NN], variants=["mnist-wide"], policies=["adagrad"], tuned_on="env", horizon=400,
                        n_problems=1, out=str(tmp_path))
    (job,) = plan(cfg)
    assert job.section.variant == "mnist-wide" and job.family_kwargs["hidden"] == 200
    assert job.extra["tuned_as"] == NN
    (plain,) = plan(CompareConfig(envs=[NN], policies=["adagrad"], horizon=400, n_problems=1, out=str(tmp_path)))
    assert job.hparams == plain.hparams  # MNIST-48's tuned AdaGrad, unchanged (Li & Malik's protocol)


def test_unknown_variant_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown variant 'nope' of l2o/NNClassifier-v0: expected one of mnist"):
        plan(CompareConfig(envs=[NN], variants=["nope"], policies=["sgd"], out=str(tmp_path)))


@pytest.mark.parametrize(("argv", "message"), [
    (["--env", NN, "--variant", "nope", "--policies", "sgd"], "unknown variant 'nope'"),
    (["--env", NN, "--tuned-on", "env", "--policies", "sgd"], "--tuned-on applies to --variant sections"),
    (["--preset", "study-tiny", "--variant", "digits"], "--preset and --variant are exclusive"),
    (["--env", NN, "--variant", "digits", "--tuned-on", "mnist"], "invalid choice: 'mnist'"),
])
def test_cli_refuses_bad_variant_flags(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    main = load_script("compare").main
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "o"), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_runs_a_variant_section(tmp_path: Path) -> None:
    main = load_script("compare").main
    out = tmp_path / "o"
    assert main(["--env", NN, "--variant", "breast_cancer", "--tuned-on", "env", "--policies", "sgd", "lstm",
                 "--n-problems", "2", "--horizon", "5", "--out", str(out), "--workers", "1", "--quiet"]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert {(r["policy"], r["variant"]) for r in runs} == {("sgd", "breast_cancer"), ("lstm", "breast_cancer")}
    assert all(r["section"] == "l2o/NNClassifier-v0 + breast_cancer" for r in runs)
    assert all(r["family_kwargs"] == {"dataset": "breast_cancer"} for r in runs)
    assert [r["tuned_as"] for r in runs if r["policy"] == "sgd"] == [NN]

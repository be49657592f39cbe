"""The RL-vs-supervised study preset (the README's main job) at toy size, and its summary tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2o_gym.experiments.compare import LEARNED, Section, pretrained_path
from l2o_gym.experiments.evaluation import EvalResult
from l2o_gym.experiments.study import (
    PRESETS,
    long_horizon_rows,
    nn_rows,
    nn_section,
    nn_verdict_lines,
    paired_rows,
    preset_config,
    run_study,
    study_sections,
    summary_lines,
)


def test_every_policy_of_the_study_is_shipped():
    for sec in study_sections():
        for name in sec.policies:
            if name in LEARNED:
                assert pretrained_path(name, sec.env) is not None, f"no shipped {name} checkpoint for {sec.env}"


def test_every_learned_policy_of_every_preset_loads_its_shipped_checkpoint():
    """Each preset names learned policies by kind; the shipped file for each (kind, env) must load as that kind
    (the conv-net preset's LSTM-sub and shared LSTM are multi-LSTM checkpoints)."""
    from l2o_gym.experiments.compare import PolicySpec, _load_learned

    pairs = {(name, sec.env) for preset in PRESETS.values() for sec in preset() for name in sec.policies
             if name in LEARNED}
    assert ("mlstm-shared", "l2o/ConvNet-v0") in pairs and ("gps", "l2o/NNClassifier-v0") in pairs
    for name, env in sorted(pairs):
        policy, path = _load_learned(PolicySpec(name, None, False), env, "cpu")
        assert policy is not None and Path(path).is_file(), (name, env)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    cfg = preset_config("study-tiny", out=str(out), command="pytest")
    return out, cfg, run_study(cfg, progress=False)


def test_tiny_study_writes_a_complete_report(tiny_study):
    out, cfg, results = tiny_study
    sections = cfg.resolve_sections()
    expected = sum(len(s.policies) * (2 if s.long_horizon else 1) for s in sections)
    assert len(results) == expected
    data = json.loads((out / "results.json").read_text())
    assert len(data["runs"]) == expected
    assert set(data["study"]) == {"versus", "paired", "long_horizon", "sample_efficiency", "nn_benchmark"}
    assert {r["policy"] for r in data["study"]["paired"]} >= {"lstm", "gps", "ppo"}
    assert all(0 <= r["lower"] <= r["n"] and r["ci_low"] <= r["mean_diff"] <= r["ci_high"] for r in data["study"]["paired"])
    report = (out / "report.md").read_text()
    for heading in ("## RL vs supervised", "## Long horizon", "## Sample efficiency"):
        assert heading in report
    # every learned optimizer of every section with a long horizon gets a verdict
    learned = {(s.name, p) for s in sections if s.long_horizon for p in s.policies if p in LEARNED}
    rows = {(r["section"], r["policy"]) for r in data["study"]["long_horizon"]}
    assert rows == learned
    assert all(r["verdict"] in ("stable", "recovers", "grows", "diverges") for r in data["study"]["long_horizon"])
    # the RL checkpoints carry their training summaries into the sample-efficiency table
    se = {(r["env"], r["policy"]): r for r in data["study"]["sample_efficiency"]}
    for key in (("l2o/LogisticRegression-v0", "gps"), ("l2o/LogisticRegression-v0", "ppo")):
        assert "env_steps_total" in se[key] and se[key]["env_steps_total"] > 0
    assert "- l2o/LogisticRegression-v0, best first-order baseline: GPS" in report  # GPS vs PPO line
    # one plot per section and horizon, the MLP variants included
    for name in ("Quadratic_T10.png", "Quadratic_T20.png", "LogisticRegression_T2.png", "MLP-relu_T10.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "## l2o/MLP-v0 + relu — T = 10," in report
    # NN benchmark (Li & Malik 2017): true objective; baselines tuned on MNIST-48 only, applied to every setting
    assert "## NN benchmark (Li & Malik 2017)" in report
    nn = [r for r in data["runs"] if r["env"] == "l2o/NNClassifier-v0"]
    assert nn and all(r["objective"] == "true" for r in nn)
    tuned = json.loads((Path(__file__).parents[1] / "agents" / "tuned_baselines.json").read_text())["envs"]
    for r in nn:
        name, _, oracle = r["policy"].partition(":")
        if name not in LEARNED and not oracle:
            assert r["tuned_as"] == "l2o/NNClassifier-v0"
            assert r["hparams"] == tuned["l2o/NNClassifier-v0@T400"][r["policy"]]["hparams"]
        elif oracle:  # the oracle rows: re-tuned on the setting itself
            assert oracle == "oracle" and r["tuned_as"] == r["variant"] != "mnist"
            assert r["hparams"] == tuned[f"l2o/NNClassifier-v0+{r['variant']}@T400"][name]["hparams"]
    assert any(r["policy"].endswith(":oracle") for r in nn)
    for row in data["study"]["nn_benchmark"]:
        assert not row["best_baseline"].endswith(":oracle") and set(row["learned"]) == {"lstm", "gps"}
        assert (row["best_oracle"] is None) == (row["variant"] == "mnist")
    sections_nn = {r["section"] for r in data["study"]["nn_benchmark"]}
    assert sections_nn == {s.name for s in sections if s.env == "l2o/NNClassifier-v0"}
    # neural art: the grid of the images each optimizer reaches, linked from the report
    assert (out / "art_NeuralArt_T3.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Pictures: l2o/NeuralArt-v0, T = 3" in report and "(art_NeuralArt_T3.png)" in report


def test_art_full_preset_covers_the_papers_transfer_tests():
    secs = PRESETS["art-full"]()
    assert [(s.variant, s.horizon, s.long_horizon, s.n_problems) for s in secs] == [
        (None, 32, None, 100), (None, 32, 320, 20), ("128", 32, None, 100), ("style2", 32, None, 100),
        ("128+style2", 32, None, 100)]  # the paper's 100 test images; 10T on 20 of them
    assert len({s.name for s in secs}) == len(secs)  # one report heading (and figure) per section
    for s in secs:
        assert {"sgd", "momentum", "nag", "adam", "rmsprop", "lstm"} <= set(s.policies)


def test_long_horizon_verdicts():
    def res(policy, horizon, final, diverged=0.0, peak=None):
        curve = [final] * (horizon + 1)
        if peak is not None:
            curve[horizon // 2] = peak
        return EvalResult("l2o/Quadratic-v0", policy, horizon, 4, 0, final, final, 0.0, final, diverged, horizon, 0.0,
                          curve, curve, curve, extra={"section": "l2o/Quadratic-v0"})

    sec = [s for s in PRESETS["study"]() if s.env == "l2o/Quadratic-v0"][0]
    rows = long_horizon_rows([res("lstm", 100, 0.1), res("lstm", 1000, 0.105)], [sec])
    assert rows[0]["verdict"] == "stable" and rows[0]["ratio"] == pytest.approx(1.05)
    rows = long_horizon_rows([res("lstm", 100, 0.1), res("lstm", 1000, 0.2)], [sec])
    assert rows[0]["verdict"] == "grows"
    rows = long_horizon_rows([res("lstm", 100, 0.1), res("lstm", 1000, 0.05, diverged=0.01)], [sec])
    assert rows[0]["verdict"] == "diverges"
    rows = long_horizon_rows([res("lstm", 100, 0.1), res("lstm", 1000, 0.1, peak=0.5)], [sec])
    assert rows[0]["verdict"] == "recovers" and rows[0]["worst_ratio"] == pytest.approx(5.0)


def test_nn_verdict_table_counts_each_learned_optimizer():
    # two NN settings, T = 400 and 2T = 800: the LSTM grows on one (f(2T) = 2 f(T)) and is stable on the other;
    # GPS recovers on both (a peak past T, back below f(T)); the table counts the baselines each one beats
    secs = [nn_section("mnist", 3, oracle=False), nn_section("digits", 3, oracle=False)]

    def res(sec, policy, horizon, final, peak=None):
        curve = [final] * (horizon + 1)
        if peak is not None:
            curve[horizon // 2 + 100] = peak
        return EvalResult(sec.env, policy, horizon, 3, 0, final, final, 0.0, final, 0.0, horizon, 0.0, curve, curve,
                          curve, extra={"section": sec.name, "variant": sec.variant})

    results = []
    for sec, lstm_grows in zip(secs, (True, False)):
        sec.policies[:] = ["sgd", "adam", "lstm", "gps"]
        for h in (400, 800):
            results += [res(sec, "sgd", h, 1.0), res(sec, "adam", h, 0.5)]
            results.append(res(sec, "lstm", h, 0.4 if h == 400 or not lstm_grows else 0.8))
            results.append(res(sec, "gps", h, 0.6 if h == 400 else 0.3, peak=None if h == 400 else 6.0))
    lines = nn_verdict_lines(nn_rows(results, secs), long_horizon_rows(results, secs))
    text = "\n".join(lines)
    assert "| NNClassifier mnist | 3 | adam 0.5 | — | 0.4 → 0.8 (≤ 2/2 → 1/2) grows | 0.6 → 0.3 (≤ 1/2 → 2/2) recovers |" in text
    assert "| NNClassifier digits | 3 | adam 0.5 | — | 0.4 → 0.4 (≤ 2/2 → 2/2) stable |" in text
    assert "- lstm: 1 stable, 0 recovers, 1 grows, 0 diverges of 2 settings." in text
    assert "- gps: 0 stable, 2 recovers, 0 grows, 0 diverges of 2 settings." in text


def test_summary_tables_keep_a_learned_policy_given_with_its_checkpoint():
    # `--preset nn-small --policies gps=CKPT adam` (or `GPS=CKPT`: names are case-insensitive) leaves the entry as
    # given in the section while the results are labelled `gps`: every table must still find them
    for entry in ("gps=runs/new/gps_best.safetensors", "GPS=runs/new/gps_best.safetensors"):
        sec = nn_section("mnist", 3, oracle=False)
        sec.policies[:] = ["adam", entry]

        def res(policy, h, f):
            c = [f] * (h + 1)
            return EvalResult(sec.env, policy, h, 3, 0, f, f, 0.0, f, 0.0, h, 0.0, c, c, c,
                              extra={"section": sec.name, "variant": sec.variant}, final_values=[f] * 3)

        results = [res(p, h, f) for h in (400, 800) for p, f in (("adam", 0.5), ("gps", 0.3))]
        (nn,) = [r for r in nn_rows(results, [sec]) if r["T"] == 400]
        assert set(nn["learned"]) == {"gps"} and nn["learned"]["gps"]["beats"] == 1
        assert [r["policy"] for r in long_horizon_rows(results, [sec])] == ["gps"]
        assert [r["policy"] for r in paired_rows(results, [sec])] == ["gps"]
        lines, data = summary_lines(results, [sec])
        assert data["versus"][0]["gps@400"] == 0.3
        assert "- gps: 1 stable, 0 recovers, 0 grows, 0 diverges of 1 settings." in lines


def test_paired_table_differences_the_learned_optimizer_with_the_best_baseline_problem_by_problem():
    sec = Section("l2o/Quadratic-v0", ["sgd", "adam", "lstm"], 10, None, n_problems=4)

    def res(policy, values):
        m = sum(values) / len(values)
        return EvalResult(sec.env, policy, 10, 4, 0, m, m, 0.0, m, 0.0, 10, 0.0, [m], [m], [m],
                          extra={"section": sec.name}, final_values=values)

    # per problem the spread (1 … 4) dwarfs the LSTM's edge over Adam (0.1 lower on three problems, 0.1 higher on
    # one): the unpaired means 2.45 vs 2.5 overlap, the paired difference is −0.05 on every resample's mean scale
    results = [res("sgd", [2.0, 3.0, 4.0, 5.0]), res("adam", [1.0, 2.0, 3.0, 4.0]), res("lstm", [0.9, 1.9, 2.9, 4.1])]
    (row,) = paired_rows(results, [sec])
    assert row["baseline"] == "adam" and row["policy"] == "lstm" and (row["lower"], row["n"]) == (3, 4)
    assert row["mean_diff"] == pytest.approx(-0.05) and row["relative"] == pytest.approx(-0.02)
    assert -0.1 - 1e-9 <= row["ci_low"] <= row["mean_diff"] <= row["ci_high"] <= 0.1 + 1e-9
    lines, data = summary_lines(results, [sec])
    assert "| l2o/Quadratic-v0 | 10 | lstm | adam | -0.05 [" in "\n".join(lines) and data["paired"] == [row]
    # a result without per-problem values (an older results file) is left out, not mispaired
    results[2].final_values = []
    assert paired_rows(results, [sec]) == []



def test_summary_tables_flag_diverged_optimizers():
    sec = Section("l2o/Quadratic-v0", ["sgd", "adam", "lstm", "gps"], 10, 100, n_problems=2)

    def res(policy, h, m, diverged=0.0):
        c = [m] * (h + 1)
        return EvalResult(sec.env, policy, h, 2, 0, m, m, 0.0, m, diverged, h, 0.0, c, c, c,
                          extra={"section": sec.name}, final_values=[m, m])

    results = [res("sgd", 10, 2.0), res("adam", 10, 1.0, diverged=0.5), res("lstm", 10, 0.9),
               res("gps", 10, 0.8, diverged=0.5), res("sgd", 100, 2.0), res("adam", 100, 1.0),
               res("lstm", 100, 5.0, diverged=1.0), res("gps", 100, 0.5)]
    lines, data = summary_lines(results, [sec])
    text = "\n".join(lines)
    (vs,) = data["versus"]
    assert vs["diverged"] == {"best_baseline@10": 0.5, "gps@10": 0.5, "lstm@10": 0.0, "best_baseline@100": 0.0,
                              "gps@100": 0.0, "lstm@100": 1.0}
    assert "| 10 / 100 | adam 1 ⚠ → adam 1 | 0.8 ⚠ → 0.5 | 0.9 → 5 ⚠ |" in text
    paired = {r["policy"]: r for r in data["paired"]}
    assert paired["gps"]["diverged_fraction"] == 0.5 and paired["lstm"]["diverged_fraction"] == 0.0
    assert paired["lstm"]["baseline_diverged_fraction"] == 0.5
    assert "| l2o/Quadratic-v0 | 10 | gps ⚠ | adam ⚠ |" in text and "| l2o/Quadratic-v0 | 10 | lstm | adam ⚠ |" in text


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'big'.*study"):
        preset_config("big")


def test_preset_restricted_to_some_policies_keeps_their_sections_and_swaps_checkpoints():
    full = preset_config("nn-small").sections
    cfg = preset_config("nn-small", policies=["gps=runs/new/gps_best.safetensors", "adam"])
    assert len(cfg.sections) == len(full)  # every nn section has gps
    for sec, orig in zip(cfg.sections, full):
        expected = [p if p == "adam" else "gps=runs/new/gps_best.safetensors" for p in orig.policies if p in ("adam", "gps")]
        assert sec.policies == expected and expected[-1].startswith("gps=")
        assert (sec.env, sec.variant, sec.horizon, sec.long_horizon, sec.n_problems, sec.tuned_as) == (
            orig.env, orig.variant, orig.horizon, orig.long_horizon, orig.n_problems, orig.tuned_as)
    only_gps = preset_config("study", policies=["gps"]).sections
    assert only_gps and all(s.policies == ["gps"] for s in only_gps)
    assert len(only_gps) < len(preset_config("study").sections)  # sections without gps are dropped
    with pytest.raises(ValueError, match=r"\['sac'\] are in none of the preset's sections \(they have: .*gps"):
        preset_config("nn-target", policies=["sac"])

"""Review (session 10) of the numerics of the report code: regression tests for the defects it fixed."""

from __future__ import annotations

from l2o_gym.experiments.study import _gps_ppo_ratio


def test_gps_ppo_ratio_when_ppo_reached_the_target_at_its_first_validation():
    # SB3 validates before training (validate_first): a target its initial policy already meets is reached after
    # 0 env steps. The report's GPS/PPO line must say so, not raise ZeroDivisionError after a whole study has run.
    rows = [
        {"env": "l2o/LogisticRegression-v0", "policy": "gps", "env_steps_to_reach_baseline": None,
         "env_steps_to_reach_first_order": 1200},
        {"env": "l2o/LogisticRegression-v0", "policy": "ppo", "env_steps_to_reach_baseline": 6400,
         "env_steps_to_reach_first_order": 0},
    ]
    lines = _gps_ppo_ratio(rows)
    assert lines[0] == "- l2o/LogisticRegression-v0, best baseline: GPS not reached, PPO 6,400 env steps."
    assert lines[1] == "- l2o/LogisticRegression-v0, best first-order baseline: GPS 1,200, PPO 0 env steps."
    # a positive count on both sides keeps the ratio
    rows[1]["env_steps_to_reach_first_order"] = 600
    assert _gps_ppo_ratio(rows)[1] == ("- l2o/LogisticRegression-v0, best first-order baseline: GPS needed 2× the env "
                                       "steps of PPO (1,200 vs 600).")

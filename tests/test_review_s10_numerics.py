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


def test_line_search_baselines_count_scipys_evaluations_less_the_start_point():
    # The core evaluates f and ∇f at θ₀ itself; scipy's first call evaluates θ₀ again. After T iterations CG and
    # L-BFGS must report scipy's own count less that duplicate (before the fix: one more at every iterate ≥ 1).
    import numpy as np
    import scipy.optimize
    import torch

    from l2o_gym.agents.baselines import make_baseline
    from l2o_gym.core import CoreConfig, reset
    from l2o_gym.registry import env_family

    problems = env_family("l2o/LogisticRegression-v0").sample(2, "test", 0, torch.device("cpu"), torch.float64)
    horizon = 5
    for name, method, options in (("cg", "CG", {"gtol": 0.0}),
                                  ("lbfgs", "L-BFGS-B", {"gtol": 0.0, "ftol": 0.0, "maxfun": 10**9})):
        policy = make_baseline(name)
        memory = policy.reset(reset(problems, CoreConfig(horizon=horizon, history=1)))
        assert policy.evals(memory, 0).tolist() == [0.0, 0.0]
        for i in range(2):
            one = problems.index(slice(i, i + 1))

            def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
                f, g = one.loss_and_grad(torch.from_numpy(x).reshape(1, -1), 0)
                return float(f[0]), g[0].numpy()

            res = scipy.optimize.minimize(fun, one.x0[0].numpy(), jac=True, method=method,
                                          options={"maxiter": horizon, **options})
            assert res.nit == horizon
            assert float(policy.evals(memory, horizon)[i]) == res.nfev - 1

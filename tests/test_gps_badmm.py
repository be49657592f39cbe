"""The BADMM loop on a linear-quadratic control problem with a known optimum (scipy's DARE)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from l2o_gym.agents.gps.badmm import BADMMConfig, BADMMTrainer
from l2o_gym.agents.gps.global_policy import GaussianMLP, RegressionConfig
from l2o_gym.agents.gps.task import LinearQuadraticTask

D = torch.float64


def _lq_problem():
    g = torch.Generator().manual_seed(0)
    dx, du, m, t_len = 3, 2, 6, 25
    A = torch.tensor([[0.9, 0.2, 0.0], [0.0, 0.8, 0.3], [0.1, 0.0, 0.7]], dtype=D)
    B = torch.randn(dx, du, generator=g, dtype=D)
    Q, R = torch.eye(dx, dtype=D), 0.5 * torch.eye(du, dtype=D)
    x0 = 3 * torch.randn(m, dx, generator=g, dtype=D)
    return LinearQuadraticTask(A, B, Q, R, x0, t_len, noise_std=0.05)


def _closed_loop_cost(task, gain):
    """Noise-free cost of u = gain x from the task's initial states (numpy, independent of the library)."""
    A, B, Q, R = (a.numpy() for a in (task.A, task.B, task.Q, task.R))
    total = 0.0
    for x in task.x0.numpy():
        for _ in range(task.horizon):
            u = gain @ x
            total += 0.5 * x @ Q @ x + 0.5 * u @ R @ u
            x = A @ x + B @ u
    return total


def test_badmm_global_policy_converges_to_optimal_linear_feedback():
    task = _lq_problem()
    A, B, Q, R = (a.numpy() for a in (task.A, task.B, task.Q, task.R))
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K_opt = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    model = GaussianMLP(task.dx, task.du, hidden=()).double()  # a linear global policy
    cfg = BADMMConfig(n_samples=10, kl_step=1.0, init_nu=0.1, kl_target=0.05,
                      regression=RegressionConfig(iterations=300, lr=1e-2))
    trainer = BADMMTrainer(task, task.initial_policy(1.0), model, cfg, seed=0)
    history = [trainer.iteration() for _ in range(12)]
    lin = model.net[0]
    gain = (model.out_std[:, None] * lin.weight / model.in_std[None, :]).detach().numpy()
    assert np.abs(gain - K_opt).max() < 0.12 * np.abs(K_opt).max() + 0.05, (gain, K_opt)
    # The global policy's cost is close to the optimal stationary feedback's, far below doing nothing.
    c_opt, c_glob, c_zero = (_closed_loop_cost(task, k) for k in (K_opt, gain, np.zeros_like(K_opt)))
    assert c_glob <= 1.03 * c_opt and c_opt < 0.5 * c_zero
    # The λ/ν updates drive local and global policies together: KL(p‖π) falls tenfold, to ~kl_target.
    assert history[-1]["kl_local_global"] < 0.2 * history[0]["kl_local_global"]
    assert history[-1]["lambda_norm"] > 0
    assert history[-1]["sample_cost"] < 0.1 * history[0]["sample_cost"]

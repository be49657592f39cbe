"""Guided policy search (Li & Malik, *Learning to Optimize*): LQR local controllers + a Gaussian-MLP global
policy coupled by Bregman ADMM, batched over conditions. One module per component:

* :mod:`.lingauss` — linear-Gaussian controllers/dynamics, marginals, KL divergences;
* :mod:`.dynamics` — per-time-step dynamics fit with a pooled normal-inverse-Wishart prior;
* :mod:`.cost` — second-order cost expansion around samples;
* :mod:`.lqr` — LQR backward pass with BADMM/KL terms and the η search;
* :mod:`.global_policy` — the Gaussian MLP and its precision-weighted regression;
* :mod:`.task` — what is trained on (optimization problems through the core; a linear-quadratic system);
* :mod:`.badmm` — the BADMM loop; :mod:`.train` — its agent in the common run lifecycle (:func:`l2o_gym.agents.common.fit`);
* :mod:`.policy` — the trained global policy as a :class:`~l2o_gym.policy.Policy`.
"""

from l2o_gym.agents.gps.badmm import BADMMConfig, BADMMTrainer
from l2o_gym.agents.gps.dynamics import GPSFitError
from l2o_gym.agents.gps.global_policy import GaussianMLP, RegressionConfig
from l2o_gym.agents.gps.lingauss import LinearGaussianDynamics, LinearGaussianPolicy
from l2o_gym.agents.gps.policy import GPSPolicy, load_gps_policy, load_policy

__all__ = [
    "BADMMConfig",
    "BADMMTrainer",
    "GPSFitError",
    "GPSPolicy",
    "GaussianMLP",
    "LinearGaussianDynamics",
    "LinearGaussianPolicy",
    "RegressionConfig",
    "load_gps_policy",
    "load_policy",
]

"""Train the GPS learned optimizer (Li & Malik) on an l2o-gym env; argument parsing only.

    python scripts/train_gps.py --env l2o/LogisticRegression-v0 --conditions 20 --horizon 20 --iterations 10 \
        --out runs/gps_lr --save agents/pretrained/gps_LogisticRegression.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

from l2o_gym.agents.gps.badmm import BADMMConfig
from l2o_gym.agents.gps.global_policy import RegressionConfig
from l2o_gym.agents.gps.dynamics import GPSFitError
from l2o_gym.agents.gps.train import GPSTrainConfig, train_gps
from l2o_gym.checkpoint import CheckpointError
from l2o_gym.registry import ENV_IDS

_POSITIVE_INT = ("conditions", "samples", "horizon", "history", "iterations", "inner", "reg_iters", "val", "threads",
                 "long_factor")
_POSITIVE_FLOAT = ("kl_step", "max_mult", "kl_target", "init_nu", "prior_strength", "init_std", "reg_lr",
                   "max_step_factor")


def _check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Usage errors (exit 2) for values the library would only reject deep inside a run."""
    if a.env not in ENV_IDS:
        p.error(f"unknown env id {a.env!r}: expected one of {', '.join(ENV_IDS)}")
    for name in _POSITIVE_INT + _POSITIVE_FLOAT:
        value = getattr(a, name)
        if not value > 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value!r}")
    for name in ("global_samples", "weight_decay", "action_penalty", "stable_factor"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be non-negative, got {getattr(a, name)!r}")
    if a.init_lr is not None and not a.init_lr > 0:
        p.error(f"--init-lr must be positive, got {a.init_lr!r}")
    if any(h < 1 for h in a.hidden):
        p.error(f"--hidden widths must be positive, got {a.hidden}")
    if a.stable_factor != 0 and a.stable_factor < 1:
        p.error(f"--stable-factor must be 0 (off) or >= 1 (the peak ratio is never below 1), got {a.stable_factor!r}")
    if a.resume and not (Path(a.out) / "state.pt").is_file():
        p.error(f"--resume: no training state {str(Path(a.out) / 'state.pt')!r} to continue from")
    if a.evaluate and not Path(a.evaluate).is_file():
        p.error(f"--evaluate: checkpoint {a.evaluate!r} does not exist")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="l2o/LogisticRegression-v0", help="registered env id")
    p.add_argument("--conditions", type=int, default=20, help="M training problems (train split)")
    p.add_argument("--samples", type=int, default=5, help="N samples per condition per iteration")
    p.add_argument("--horizon", type=int, default=20, help="T")
    p.add_argument("--history", type=int, default=5, help="H of the features the global policy reads")
    p.add_argument("--include-steps", action="store_true",
                   help="also feed the last H steps to the global policy (secant pairs, as L-BFGS uses)")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--inner", type=int, default=2, help="local/global/dual rounds per iteration")
    p.add_argument("--kl-step", type=float, default=0.5, help="base KL step per time step")
    p.add_argument("--max-mult", type=float, default=10.0, help="bound of the adaptive KL-step multiplier")
    p.add_argument("--kl-target", type=float, default=0.5, help="target KL(p‖π) per time step (ν adjustment)")
    p.add_argument("--global-samples", type=int, default=0,
                   help="trajectories per condition of the global policy added to its regression data (0: off)")
    p.add_argument("--init-nu", type=float, default=1e-2)
    p.add_argument("--prior-strength", type=float, default=1.0)
    p.add_argument("--init-lr", type=float, default=None, help="initial gradient-step size (default: tuned)")
    p.add_argument("--init-std", type=float, default=0.1, help="initial exploration std")
    p.add_argument("--hidden", type=int, nargs="*", default=[50], help="global policy hidden widths")
    p.add_argument("--reg-iters", type=int, default=500, help="Adam steps per global update")
    p.add_argument("--reg-lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay of the global policy")
    p.add_argument("--hessian", choices=["exact", "psd", "none"], default="exact")
    p.add_argument("--action-penalty", type=float, default=0.0)
    p.add_argument("--max-step-factor", type=float, default=2.0)
    p.add_argument("--val", type=int, default=100, help="val problems for model selection")
    p.add_argument("--stable-factor", type=float, default=0.0,
                   help="select the best iteration only among those whose mean val objective stays at most this multiple "
                        "of its value at T at every step from T to LONG_FACTOR*T (0: select on T alone)")
    p.add_argument("--long-factor", type=int, default=10, help="horizon multiple of the --stable-factor check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/gps", help="run folder (checkpoints, state.pt, tb/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    p.add_argument("--save", default=None, help="copy the best checkpoint here")
    p.add_argument("--evaluate", default=None, metavar="CKPT",
                   help="no training: the docs/gps.md table for CKPT (baselines tuned on val at --horizon, "
                        "100 test problems at T and 10T) as JSON")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    a = p.parse_args(argv)
    _check(p, a)
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.evaluate:
        from l2o_gym.agents.gps.train import evaluate_on_test

        rows = evaluate_on_test(a.evaluate, a.env, a.horizon, seed=a.seed)
        for name, r in rows.items():
            print(f"{name:9s} f(T)={r['f_T']:.4f} f(10T)={r['f_long']:.4f} ({r['ratio_long']:.2f}) "
                  f"evals(T)={r['evals_T']:.1f} f(<=T evals)={r['f_at_T_evals']:.4f} gap(T)={r['gap_T']:.2e} "
                  f"settled(T)={r['settled_T']:.2f} val={r['val_final']:.4f} {r['hparams']}")
        print(json.dumps(rows))
        return 0
    cfg = GPSTrainConfig(
        env_id=a.env, n_conditions=a.conditions, horizon=a.horizon, history=a.history, include_steps=a.include_steps,
        iterations=a.iterations,
        init_lr=a.init_lr, init_std=a.init_std, hidden=tuple(a.hidden), action_penalty=a.action_penalty,
        hessian=a.hessian, n_val=a.val, max_step_factor=a.max_step_factor, seed=a.seed,
        stable_factor=a.stable_factor, long_factor=a.long_factor,
        badmm=BADMMConfig(
            n_samples=a.samples, inner_iterations=a.inner, kl_step=a.kl_step, max_mult=a.max_mult,
            kl_target=a.kl_target, init_nu=a.init_nu, prior_strength=a.prior_strength,
            global_samples=a.global_samples,
            regression=RegressionConfig(iterations=a.reg_iters, lr=a.reg_lr, weight_decay=a.weight_decay),
        ),
    )
    try:
        summary = train_gps(cfg, a.out, resume=a.resume, device=a.device)
    except KeyboardInterrupt:
        print(f"interrupted: the last completed iteration is saved in {a.out}/state.pt (and gps_best.safetensors); "
              "continue with --resume", file=sys.stderr)
        return 130
    except (CheckpointError, GPSFitError, ValueError) as exc:
        print(f"train_gps.py: error: {exc}", file=sys.stderr)
        return 1
    steps = summary["env_steps_to_reach_baseline"]
    b = summary["baseline"]
    gps_val = "none selected" if summary["best_val"] is None else f"{summary['best_val']:.5g}"
    print(f"best val objective at T={a.horizon}: GPS {gps_val} (iteration {summary['best_iteration']}), "
          f"best baseline {b['name']} {b['hparams']} {b['val_final']:.5g}")
    print(f"env steps to reach the best baseline: {steps if steps is not None else 'not reached'} "
          f"(of {summary['env_steps_total']}); mean GPS iteration wall time {summary['mean_iteration_wall_s']:.2f} s")
    fo, fo_steps = summary["first_order_baseline"], summary["env_steps_to_reach_first_order"]
    print(f"best first-order baseline {fo['name']} {fo['hparams']} {fo['val_final']:.5g}; env steps to reach it: "
          f"{fo_steps if fo_steps is not None else 'not reached'}")
    print("tuned baselines on val: " + ", ".join(
        f"{k} {v['hparams']} {v['val_final']:.5g}" for k, v in summary["tuned_baselines"].items()))
    if a.save:
        if summary["best_iteration"] < 0:
            print(f"train_gps.py: error: no iteration was selected as best (see the warning above): nothing saved to "
                  f"{a.save} ({a.out}/gps_last.safetensors is the last iterate)", file=sys.stderr)
            return 1
        shutil.copyfile(f"{a.out}/gps_best.safetensors", a.save)
        print(f"saved {a.save}")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("history", "train_config", "training", "tuned_baselines")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
r"""Train the GPS learned optimizer (Li & Malik) on an l2o-gym env; argument parsing only.

    python scripts/train_gps.py --env l2o/LogisticRegression-v0 --conditions 20 --horizon 20 --iterations 10 \
        --out runs/gps_lr --export agents/pretrained/gps_LogisticRegression.safetensors

Flags are generated from ``GPSTrainConfig`` / ``BADMMConfig`` / ``RegressionConfig`` (l2o_gym.experiments.cli);
the run folder is the common lifecycle's (gps_best/gps_last.safetensors, state.pt, summary.json, tb/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from l2o_gym.agents.baselines import BASELINES
from l2o_gym.agents.gps.train import HESSIANS, GPSTrainConfig, train_gps
from l2o_gym.experiments import cli

RENAME = {
    "env_id": "--env", "n_conditions": "--conditions", "badmm.n_samples": "--samples",
    "badmm.inner_iterations": "--inner", "badmm.regression.iterations": "--reg-iters",
    "badmm.regression.lr": "--reg-lr", "badmm.regression.batch_size": "--reg-batch-size",
}


def build_parser() -> tuple[argparse.ArgumentParser, cli.ConfigArgs]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg_args = cli.add_config_args(p, GPSTrainConfig, rename=RENAME,
                                   choices={"hessian": HESSIANS, "baselines": tuple(BASELINES)},
                                   types_={"hidden": cli.positive_int})
    cli.deprecated_alias(p, "--val", "--n-val", "cfg__n_val", type=cli.positive_int)
    cli.add_run_args(p, tensorboard=True, out_default="runs/gps")
    p.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: cpu)")
    p.add_argument("--evaluate", default=None, metavar="CKPT",
                   help="no training: the docs/gps.md table for CKPT (baselines tuned on val at --horizon, "
                        "100 test problems at T and 10T) as JSON")
    return p, cfg_args


def main(argv: list[str] | None = None) -> int:
    parser, cfg_args = build_parser()

    def body(a: argparse.Namespace) -> int:
        if a.evaluate and not Path(a.evaluate).is_file():
            what = "is a folder, not a checkpoint file" if Path(a.evaluate).is_dir() else "does not exist"
            raise cli.UsageError(f"--evaluate: checkpoint {a.evaluate!r} {what}")
        if a.evaluate and (a.resume or a.export):
            other = "--resume" if a.resume else "--export"
            raise cli.UsageError(f"--evaluate trains nothing: it does not go with {other}")
        cfg = cli.prepare(a, cfg_args)
        if a.evaluate:
            from l2o_gym.agents.gps.train import evaluate_on_test

            rows = evaluate_on_test(a.evaluate, cfg.env_id, cfg.horizon, seed=cfg.seed)
            for name, r in rows.items():
                print(f"{name:9s} f(T)={r['f_T']:.4f} f(10T)={r['f_long']:.4f} ({r['ratio_long']:.2f}) "
                      f"evals(T)={r['evals_T']:.1f} f(<=T evals)={r['f_at_T_evals']:.4f} gap(T)={r['gap_T']:.2e} "
                      f"settled(T)={r['settled_T']:.2f} val={r['val_final']:.4f} {r['hparams']}")
            print(json.dumps(rows))
            return 0
        summary = train_gps(cfg, a.out, resume=a.resume, device=a.device, progress=not a.quiet,
                            tensorboard=not a.no_tensorboard)
        gps_val = "none selected" if summary["best_val"] is None else f"{summary['best_val']:.5g}"
        print(f"best val objective at T={cfg.horizon}: GPS {gps_val} (iteration {summary['best_iteration']}, at "
              f"{summary['best_env_steps']:,} env steps of {summary['env_steps_total']:,}); mean GPS iteration wall time "
              f"{summary['mean_iteration_wall_s']:.2f} s")
        print("\n".join(cli.target_lines(summary)))
        if summary["tuned_baselines"]:
            print("tuned baselines on val: " + ", ".join(
                f"{k} {v['hparams']} {v['val_final']:.5g}" for k, v in summary["tuned_baselines"].items()))
        return cli.export_best(summary, a.export, "train_gps.py", "gps", a.out)

    return cli.run(parser, body, argv, interrupted=(
        "interrupted: the last completed iteration is saved in --out (state.pt, gps_last/gps_best.safetensors); "
        "continue with --resume"))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
r"""Train the convolutional-GPS learned optimizer (Li & Malik 2017) on an l2o-gym env; argument parsing only.

    python scripts/train_conv_gps.py --env l2o/MLP-v0 --family-kwargs '{"dataset": "digits", "hidden": [48]}' \
        --horizon 100 --iterations 10 --out runs/cgps
    torchrun --nproc_per_node 2 scripts/train_conv_gps.py ...      # trajectories sampled on 2 processes (gloo)

Flags are generated from ``ConvGPSTrainConfig`` / ``ConvGPSConfig`` (l2o_gym.experiments.cli); the run folder
is the common lifecycle's (gps_best/gps_last.safetensors with header kind "conv_gps", state.pt, summary.json,
tb/). docs/conv-gps.md explains the method.
"""

from __future__ import annotations

import argparse
import sys

from l2o_gym.agents.baselines import BASELINES
from l2o_gym.agents.gps.conv_train import ConvGPSTrainConfig, train_conv_gps
from l2o_gym.experiments import cli

RENAME = {"env_id": "--env", "n_conditions": "--conditions", "gps.n_samples": "--samples", "gps.seed": "--gps-seed",
          "gps.hidden": "--lstm-hidden"}


def build_parser() -> tuple[argparse.ArgumentParser, cli.ConfigArgs]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg_args = cli.add_config_args(p, ConvGPSTrainConfig, rename=RENAME, choices={"baselines": tuple(BASELINES)},
                                   types_={"family_kwargs": cli.json_object})
    cli.add_run_args(p, tensorboard=True, out_default="runs/conv_gps")
    p.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: cpu)")
    return p, cfg_args


def main(argv: list[str] | None = None) -> int:
    parser, cfg_args = build_parser()

    def body(a: argparse.Namespace) -> int:
        cfg = cli.prepare(a, cfg_args)
        with cli.torchrun_group(a.device):
            summary = train_conv_gps(cfg, a.out, resume=a.resume, device=a.device, progress=not a.quiet,
                                     tensorboard=not a.no_tensorboard)
        if not cli.is_rank0():
            return 0
        val = "none selected" if summary["best_val"] is None else f"{summary['best_val']:.5g}"
        print(f"best val objective at T={cfg.gps.horizon}: conv GPS {val} (iteration {summary['best_iteration']})")
        print("\n".join(cli.target_lines(summary)))
        return cli.export_best(summary, a.export, "train_conv_gps.py", "gps", a.out)

    return cli.run(parser, body, argv, interrupted=(
        "interrupted: the last completed iteration is saved in --out (state.pt, gps_last/gps_best.safetensors); "
        "continue with --resume"))


if __name__ == "__main__":
    sys.exit(main())

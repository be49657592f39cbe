#!/usr/bin/env python
"""Meta-train the coordinatewise LSTM optimizer (Andrychowicz et al., 2016) by truncated BPTT; argument parsing only.

    python scripts/train_lstm.py --env l2o/Quadratic-v0 --out runs/lstm_quadratic
    torchrun --nproc_per_node 2 scripts/train_lstm.py --env l2o/Quadratic-v0 --out runs/lstm_ddp

The defaults reproduce the paper's quadratic set-up: 128 problems per meta-batch, T = 100 steps, unrolls
of 20, Adam(1e-3) on the meta-parameters, first-order, a 2-layer LSTM with 20 units, log/sign
preprocessing (p = 10), output scale 0.1. Writes the common run folder: ``<out>/lstm_best.safetensors``
(best on the val split), ``lstm_last.safetensors``, ``state.pt`` (for ``--resume``), ``summary.json`` and
TensorBoard scalars in ``<out>/tb``. With ``--export PATH`` the best checkpoint is also copied to ``PATH``
(e.g. agents/pretrained/). Flags are generated from ``TrainConfig``/``LSTMConfig`` (l2o_gym.experiments.cli).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from l2o_gym.agents.lstm import TrainConfig, train
from l2o_gym.agents.lstm.trainer import OBJECTIVES, WEIGHTINGS
from l2o_gym.agents.lstm.policy import PREPROCESSING
from l2o_gym.checkpoint import atomic_write
from l2o_gym.distributed import world as process_world
from l2o_gym.experiments import cli


def build_parser() -> tuple[argparse.ArgumentParser, cli.ConfigArgs]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg_args = cli.add_config_args(
        p, TrainConfig, rename={"env_id": "--env", "val_problems": "--n-val"}, skip=("out", "progress"),
        choices={"weighting": WEIGHTINGS, "objective": OBJECTIVES, "preprocessing": PREPROCESSING,
                 "dtype": ("float32", "float64")})
    cli.deprecated_alias(p, "--val-problems", "--n-val", "cfg__val_problems", type=cli.positive_int)
    cli.add_run_args(p, out_default="runs/lstm")
    p.add_argument("--reset-best", action="store_true",
                   help="with --resume: forget the best val value (fine-tuning on another family)")
    return p, cfg_args


def main(argv: list[str] | None = None) -> int:
    parser, cfg_args = build_parser()

    def body(a: argparse.Namespace) -> int:
        if a.reset_best and not a.resume:
            raise cli.UsageError("--reset-best needs --resume")
        cfg = cli.prepare(a, cfg_args, out=a.out, progress=not a.quiet)
        with cli.torchrun_group(cfg.device):
            rank, world = process_world()  # the group torchrun_group made (0, 1 without torchrun)
            policy = train(cfg, resume=a.resume, reset_best=a.reset_best)
            if rank == 0:
                print(f"done: {cfg.episodes} episodes on {world} process(es); out={a.out}")
                summary_file = Path(a.out) / "summary.json"
                if summary_file.is_file():  # the run's result, as the other trainers print it
                    summary = json.loads(summary_file.read_text())
                    val = "none selected" if summary.get("best_val") is None else f"{summary['best_val']:.5g}"
                    print(f"best val objective at T={cfg.horizon}: LSTM {val} (episode {summary.get('best_iteration')})")
                    print("\n".join(cli.target_lines(summary)))
                if a.export:
                    best = Path(a.out) / f"{'mlstm' if cfg.kinds else 'lstm'}_best.safetensors"  # multi-LSTM: mlstm_
                    if best.is_file():
                        atomic_write(a.export, lambda tmp: shutil.copyfile(best, tmp))
                    else:
                        policy.save(a.export, {"train_config": cfg.as_dict()})
                    print(f"exported {a.export}")
        return 0

    return cli.run(parser, body, argv,
                   interrupted="interrupted: the last checkpoint in --out is intact; continue with --resume")


if __name__ == "__main__":
    sys.exit(main())

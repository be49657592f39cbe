r"""Train a stable-baselines3 learned optimizer (PPO, SAC, RecurrentPPO) on an l2o-gym env; argument parsing only.

    python scripts/train_sb3.py --algo ppo --env l2o/LogisticRegression-v0 --horizon 20 --history 5 \
        --timesteps 2000000 --n-envs 64 --out runs/ppo_lr --export agents/pretrained/ppo_LogisticRegression.safetensors

Continue an interrupted run with the same command plus ``--resume`` (``--timesteps`` may be raised).
``recurrent_ppo`` needs the optional extra: ``pip install -c constraints.txt -e ".[contrib]"``.
Flags are generated from ``SB3TrainConfig`` (l2o_gym.experiments.cli); ``--batch-size`` is (Recurrent)PPO's
minibatch, ``--sac-batch-size`` SAC's. See docs/sb3.md.
"""

from __future__ import annotations

import argparse
import sys

from l2o_gym.agents.baselines import BASELINES
from l2o_gym.agents.sb3 import ACTIVATIONS, ALGOS, SB3TrainConfig, train_sb3
from l2o_gym.envs.common import REWARD_MODES
from l2o_gym.experiments import cli

RENAME = {"env_id": "--env", "total_timesteps": "--timesteps", "learning_rate": "--lr",
          "lstm_hidden_size": "--lstm-hidden"}


def build_parser() -> tuple[argparse.ArgumentParser, cli.ConfigArgs]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg_args = cli.add_config_args(
        p, SB3TrainConfig, rename=RENAME,
        choices={"algo": ALGOS, "reward_mode": REWARD_MODES, "activation": tuple(ACTIVATIONS),
                 "baselines": tuple(BASELINES)},
        types_={"net_arch": cli.positive_int})
    cli.add_run_args(p, tensorboard=True, out_default="runs/sb3")
    return p, cfg_args


def main(argv: list[str] | None = None) -> int:
    parser, cfg_args = build_parser()

    def body(a: argparse.Namespace) -> int:
        cfg = cli.prepare(a, cfg_args)
        try:
            cfg.validate()
        except ImportError as exc:
            raise cli.UsageError(f"--algo {cfg.algo}: {exc}") from None
        summary = train_sb3(cfg, a.out, resume=a.resume, progress_bar=not a.quiet, tensorboard=not a.no_tensorboard)
        best = "none" if summary["best_val"] is None else f"{summary['best_val']:.5g}"
        print(f"best val objective at T={cfg.horizon}: {cfg.algo} {best} "
              f"(at {summary['best_env_steps']} env steps of {summary['env_steps_total']}); "
              f"{summary['env_steps_per_s']:.0f} env steps/s")
        print("\n".join(cli.target_lines(summary)))
        # no best checkpoint (no finite validation value): an error naming the last one, not a missing-file usage error
        return cli.export_best(summary, a.export, "train_sb3.py", cfg.algo, a.out)

    return cli.run(parser, body, argv,
                   interrupted="interrupted; the last checkpoint is in --out (continue with --resume)")


if __name__ == "__main__":
    sys.exit(main())

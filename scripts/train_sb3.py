"""Train a stable-baselines3 learned optimizer (PPO, SAC, RecurrentPPO) on an l2o-gym env; argument parsing only.

    python scripts/train_sb3.py --algo ppo --env l2o/LogisticRegression-v0 --horizon 20 --history 5 \
        --timesteps 2000000 --n-envs 64 --out runs/ppo_lr --save agents/pretrained/ppo_LogisticRegression.safetensors

Continue an interrupted run with the same command plus ``--resume`` (``--timesteps`` may be raised).
``recurrent_ppo`` needs the optional extra: ``pip install -c constraints.txt -e ".[contrib]"``.
See docs/sb3.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

from l2o_gym.checkpoint import atomic_write
from l2o_gym.agents.sb3 import ACTIVATIONS, ALGOS, SB3TrainConfig, train_sb3
from l2o_gym.envs.common import REWARD_MODES
from l2o_gym.registry import ENV_TABLE


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    d = SB3TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=ALGOS, default="ppo")
    p.add_argument("--env", default=d.env_id, help=f"registered env id ({', '.join(ENV_TABLE)})")
    p.add_argument("--timesteps", type=_positive_int, default=d.total_timesteps, help="total env steps")
    p.add_argument("--n-envs", type=_positive_int, default=d.n_envs, help="parallel optimizees")
    p.add_argument("--horizon", type=_positive_int, default=d.horizon, help="episode length T")
    p.add_argument("--history", type=_positive_int, default=d.history, help="H of the observation features")
    p.add_argument("--include-steps", action="store_true", help="also observe the last H steps")
    p.add_argument("--action-scale", type=_positive_float, default=None, help="step per unit action (default: the env's)")
    p.add_argument("--reward-mode", choices=REWARD_MODES, default=d.reward_mode)
    p.add_argument("--net-arch", type=_positive_int, nargs="+", default=list(d.net_arch), help="hidden widths")
    p.add_argument("--activation", choices=list(ACTIVATIONS), default=d.activation)
    p.add_argument("--log-std-init", type=float, default=d.log_std_init, help="initial log std of the PPO Gaussian")
    p.add_argument("--lr", type=_positive_float, default=d.learning_rate, help="learning rate")
    p.add_argument("--gamma", type=_positive_float, default=d.gamma)
    p.add_argument("--n-steps", type=_positive_int, default=d.n_steps, help="(Recurrent)PPO rollout length per env")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"minibatch size (default: {d.batch_size} for PPO, {d.sac_batch_size} for SAC)")
    p.add_argument("--n-epochs", type=_positive_int, default=d.n_epochs, help="(Recurrent)PPO epochs per rollout")
    p.add_argument("--ent-coef", type=float, default=d.ent_coef, help="(Recurrent)PPO entropy bonus")
    p.add_argument("--lstm-hidden", type=_positive_int, default=d.lstm_hidden_size, help="RecurrentPPO LSTM width")
    p.add_argument("--buffer-size", type=_positive_int, default=d.buffer_size, help="SAC replay buffer")
    p.add_argument("--learning-starts", type=int, default=d.learning_starts, help="SAC random steps first")
    p.add_argument("--no-norm-reward", action="store_true", help="do not normalise rewards")
    p.add_argument("--eval-every", type=_positive_int, default=d.eval_every, help="env steps between validations")
    p.add_argument("--checkpoint-every", type=_positive_int, default=d.checkpoint_every,
                   help="env steps between state.pt writes")
    p.add_argument("--n-val", type=_positive_int, default=d.n_val, help="val problems of the validation metric")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="torch device of the networks")
    p.add_argument("--out", default="runs/sb3", help="run folder (checkpoints, state.pt, summary.json, tb/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    p.add_argument("--save", default=None, help="copy the best checkpoint here (e.g. agents/pretrained/...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs")
    p.add_argument("--threads", type=_positive_int, default=1, help="torch intra-op threads")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    if a.env not in ENV_TABLE:
        p.error(f"unknown env id {a.env!r}: expected one of {', '.join(ENV_TABLE)}")
    if a.learning_starts < 0:
        p.error(f"--learning-starts must be >= 0, got {a.learning_starts}")
    if a.resume and not (Path(a.out) / "state.pt").is_file():
        p.error(f"--resume: no training state {str(Path(a.out) / 'state.pt')!r} to continue from")
    batch = {}
    if a.batch_size is not None:
        batch = {"sac_batch_size" if a.algo == "sac" else "batch_size": a.batch_size}
    cfg = SB3TrainConfig(
        algo=a.algo, env_id=a.env, total_timesteps=a.timesteps, n_envs=a.n_envs, horizon=a.horizon,
        history=a.history, include_steps=a.include_steps, action_scale=a.action_scale, reward_mode=a.reward_mode,
        net_arch=tuple(a.net_arch), activation=a.activation, log_std_init=a.log_std_init, learning_rate=a.lr,
        gamma=a.gamma, n_steps=a.n_steps, n_epochs=a.n_epochs, ent_coef=a.ent_coef, lstm_hidden_size=a.lstm_hidden,
        buffer_size=a.buffer_size, learning_starts=a.learning_starts, norm_reward=not a.no_norm_reward,
        eval_every=a.eval_every, checkpoint_every=a.checkpoint_every, n_val=a.n_val, seed=a.seed, device=a.device,
        **batch,
    )
    try:
        cfg.validate()
    except (ValueError, ImportError) as exc:
        p.error(str(exc))
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        summary = train_sb3(cfg, a.out, resume=a.resume, progress_bar=not a.no_progress,
                            tensorboard=not a.no_tensorboard)
    except ValueError as exc:  # e.g. --resume with another configuration
        p.error(str(exc))
    except KeyboardInterrupt:
        print(f"interrupted; the last checkpoint is in {a.out} (continue with --resume)", file=sys.stderr)
        return 130
    b, fo = summary["baseline"], summary["first_order_baseline"]
    reach = summary["env_steps_to_reach_baseline"]
    reach_fo = summary["env_steps_to_reach_first_order"]
    print(f"best val objective at T={a.horizon}: {a.algo} {summary['best_val']:.5g} "
          f"(at {summary['best_env_steps']} env steps of {summary['env_steps_total']}); "
          f"{summary['env_steps_per_s']:.0f} env steps/s")
    def when(steps: int | None) -> str:
        return "not reached" if steps is None else f"reached after {steps} env steps"

    print(f"best baseline {b['name']} {b['hparams']} {b['val_final']:.5g}: {when(reach)}; "
          f"best first-order {fo['name']} {fo['hparams']} {fo['val_final']:.5g}: {when(reach_fo)}")
    if a.save:
        atomic_write(a.save, lambda tmp: shutil.copyfile(summary["best_checkpoint"], tmp))
        print(f"saved {a.save}")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("training", "train_config")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

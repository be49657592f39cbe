#!/usr/bin/env python
"""Meta-train the coordinatewise LSTM optimizer (Andrychowicz et al., 2016) by truncated BPTT.

    python scripts/train_lstm.py --env l2o/Quadratic-v0 --out runs/lstm_quadratic
    torchrun --nproc_per_node 2 scripts/train_lstm.py --env l2o/Quadratic-v0 --out runs/lstm_ddp

The defaults reproduce the paper's quadratic set-up: 128 problems per meta-batch, T = 100 steps, unrolls
of 20, Adam(1e-3) on the meta-parameters, first-order, a 2-layer LSTM with 20 units, log/sign
preprocessing (p = 10), output scale 0.1. Writes ``<out>/best.safetensors`` (best on the val split),
``<out>/last.safetensors``, ``<out>/state.pt`` (for ``--resume``) and TensorBoard scalars in ``<out>/tb``.
With ``--export PATH`` the best checkpoint is also copied to ``PATH`` (e.g. agents/pretrained/).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys

import torch

from l2o_gym.agents.lstm import LSTMConfig, TrainConfig, train
from l2o_gym.checkpoint import CheckpointError
from l2o_gym.agents.lstm.trainer import OBJECTIVES, WEIGHTINGS, init_distributed
from l2o_gym.registry import ENV_IDS


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="l2o/Quadratic-v0", choices=ENV_IDS, help="env id (default: %(default)s)")
    p.add_argument("--family-kwargs", default="{}", help="JSON size overrides of the family, e.g. '{\"dim\": 10}'")
    p.add_argument("--out", default=None, help="output folder (checkpoints, TensorBoard)")
    p.add_argument("--episodes", type=_positive_int, default=100, help="episodes (default: %(default)s)")
    p.add_argument("--n-problems", type=_positive_int, default=128, help="problems per meta-batch per process (default: %(default)s)")
    p.add_argument("--horizon", type=_positive_int, default=100, help="episode length T (default: %(default)s)")
    p.add_argument("--unroll", type=_positive_int, default=20, help="truncation length (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--clip", type=float, default=1.0, help="meta-gradient norm clipping, 0 = off (default: %(default)s)")
    p.add_argument("--weighting", choices=WEIGHTINGS, default="uniform", help="meta-loss weights over the unroll")
    p.add_argument("--objective", choices=OBJECTIVES, default="sum", help="meta-loss: sum of f (paper) or of log f")
    p.add_argument("--second-order", action="store_true", help="keep the optimizee gradient's graph")
    p.add_argument("--hidden", type=_positive_int, default=20, help="LSTM units per layer (default: %(default)s)")
    p.add_argument("--layers", type=_positive_int, default=2, help="LSTM layers (default: %(default)s)")
    p.add_argument("--preprocessing", choices=("log", "none"), default="log", help="input preprocessing")
    p.add_argument("--p", type=_positive_float, default=10.0, help="preprocessing parameter p (default: %(default)s)")
    p.add_argument("--output-scale", type=_positive_float, default=0.1, help="output scale (default: %(default)s)")
    p.add_argument("--global-cells", type=int, default=0, help="global averaging cells per layer (default: %(default)s)")
    p.add_argument("--val-every", type=int, default=10, help="validate every K episodes (default: %(default)s)")
    p.add_argument("--val-problems", type=_positive_int, default=256, help="val problems (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/state.pt")
    p.add_argument("--reset-best", action="store_true",
                   help="with --resume: forget the best val value (fine-tuning on another family)")
    p.add_argument("--export", default=None, help="copy the best checkpoint to this path")
    p.add_argument("--kinds", default="",
                   help="comma-separated LSTM names of a multi-LSTM (one LSTM per parameter kind), e.g. conv,fc,bn,bias; "
                        "empty (default): one shared LSTM")
    p.add_argument("--assign", default="{}",
                   help="JSON parameter kind -> LSTM name for --kinds ('*': the rest), e.g. '{\"*\": \"all\"}'")
    p.add_argument("--init", default=None, help="warm start from this checkpoint (lstm: copied into every LSTM)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        family_kwargs = json.loads(args.family_kwargs)
        if not isinstance(family_kwargs, dict):
            raise ValueError("not a JSON object")
        arch = LSTMConfig(hidden=args.hidden, layers=args.layers, preprocessing=args.preprocessing, p=args.p,
                          output_scale=args.output_scale, global_cells=args.global_cells)
        assign = json.loads(args.assign)
        if not isinstance(assign, dict):
            raise ValueError("--assign: not a JSON object")
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        cfg = TrainConfig(kinds=kinds, assign=assign, init=args.init, env_id=args.env, family_kwargs=family_kwargs, arch=arch, n_problems=args.n_problems,
                          horizon=args.horizon, unroll=args.unroll, episodes=args.episodes, lr=args.lr,
                          clip=args.clip, weighting=args.weighting, objective=args.objective,
                          second_order=args.second_order, val_every=args.val_every, val_problems=args.val_problems,
                          seed=args.seed, device=args.device, out=args.out, progress=not args.no_progress)
    except ValueError as exc:
        parser.error(str(exc))
    if args.init and not __import__("os").path.isfile(args.init):
        parser.error(f"--init: checkpoint {args.init!r} does not exist")
    if args.resume and not args.out:
        parser.error("--resume needs --out")
    if args.reset_best and not args.resume:
        parser.error("--reset-best needs --resume")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rank, world = init_distributed(args.device)
    try:
        policy = train(cfg, resume=args.resume, reset_best=args.reset_best)
    except CheckpointError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint in --out is intact; continue with --resume", file=sys.stderr)
        return 130
    if rank == 0:
        print(f"done: {cfg.episodes} episodes on {world} process(es); out={args.out}")
        if args.export:
            if not args.out:
                policy.save(args.export, {"train": cfg.as_dict()})
            else:
                shutil.copyfile(f"{args.out}/best.safetensors", args.export)
            print(f"exported {args.export}")
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

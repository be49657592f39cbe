#!/usr/bin/env python
"""Benchmarks that print figures (record them in docs/benchmarks.md).

    python scripts/bench.py env [--env l2o/Quadratic-v0] [--sizes 1 64 1024 16384] [--device cpu]
    python scripts/bench.py eval [--n-problems 1000] [--horizon 100]

``env``: env-steps/s of the native torch vector env against ``gymnasium.vector.SyncVectorEnv`` over the
single env, with their ratio.
``eval``: wall time of evaluating every first-order baseline on 1,000 quadratics x 100 steps (batched).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys

import torch

from l2o_gym.experiments.benchmark import baseline_eval_time, env_throughput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("env", help="env-steps/s: native torch VectorEnv vs SyncVectorEnv")
    p.add_argument("--env", default="l2o/Quadratic-v0", help="registered env id (default: %(default)s)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024, 16384], help="numbers of envs N")
    p.add_argument("--device", default="cpu", help="torch device of the native env (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=2.0, help="measurement time per configuration")
    p.add_argument(
        "--sync-max", type=int, default=16384, help="skip SyncVectorEnv above this N (default: %(default)s)"
    )
    p.add_argument("--history", type=int, default=25, help="history length H (default: %(default)s)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    e = sub.add_parser("eval", help="wall time of evaluating the first-order baselines (batched)")
    e.add_argument("--env", default="l2o/Quadratic-v0", help="registered env id (default: %(default)s)")
    e.add_argument("--n-problems", type=int, default=1000, help="problems (default: %(default)s)")
    e.add_argument("--horizon", type=int, default=100, help="iterations (default: %(default)s)")
    e.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    q = sub.add_parser("lstm", help="seconds per LSTM meta-iteration (128 quadratics x 10-d, unroll 20)")
    q.add_argument("--n-problems", type=int, default=128, help="problems per meta-batch (default: %(default)s)")
    q.add_argument("--dim", type=int, default=10, help="quadratic dimension (default: %(default)s)")
    q.add_argument("--unroll", type=int, default=20, help="truncation length (default: %(default)s)")
    q.add_argument("--iters", type=int, default=20, help="timed meta-iterations (default: %(default)s)")
    q.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    q.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    c = sub.add_parser("convnet", help="conv-net family: batched fwd+bwd (grouped vs vmap vs separate nets), env "
                                        "step, multi-LSTM meta-iteration (docs/convnet.md)")
    c.add_argument("--n-problems", type=int, default=8, help="conv nets N (default: %(default)s)")
    c.add_argument("--reps", type=int, default=5, help="timed repetitions, interleaved (default: %(default)s)")
    c.add_argument("--unroll", type=int, default=10, help="meta-iteration truncation length (default: %(default)s)")
    c.add_argument("--no-meta", action="store_true", help="skip the multi-LSTM meta-iteration")
    c.add_argument("--family-kwargs", default="{}", help="JSON ConvNet arguments, e.g. '{\"dataset\": \"mnist\"}'")
    c.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    c.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.what == "convnet":
        return _bench_convnet(args, parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.what in ("env", "eval"):
        from l2o_gym.registry import ENV_IDS

        if args.env not in ENV_IDS:
            parser.error(f"unknown env id {args.env!r}: expected one of {', '.join(ENV_IDS)}")
    if args.what == "env":
        if min(args.sizes) < 1 or args.history < 1 or args.seconds <= 0:
            parser.error(f"--sizes and --history must be positive integers and --seconds positive, got "
                         f"{args.sizes}, {args.history}, {args.seconds}")
    if args.what == "eval" and (args.n_problems < 1 or args.horizon < 1):
        parser.error(f"--n-problems and --horizon must be positive, got {args.n_problems} and {args.horizon}")
    if args.what == "lstm":
        return _bench_lstm(args, parser)
    if args.what == "eval":
        times = baseline_eval_time(args.env, args.n_problems, args.horizon, args.device)
        print(f"# {args.env}: {args.n_problems} problems x {args.horizon} steps, device={args.device}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        for name, sec in times.items():
            print(f"{name:9s} {sec:6.2f} s")
        print(f"{'total':9s} {sum(times.values()):6.2f} s")
        return 0

    print(f"# {args.env}, H={args.history}, device={args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'N':>7} {'native steps/s':>16} {'sync steps/s':>14} {'ratio':>8}")
    rows = []
    for n in args.sizes:
        native = env_throughput(args.env, n, "native", args.device, args.seconds, history=args.history)
        sync = None
        if n <= args.sync_max:
            sync = env_throughput(args.env, n, "sync", args.device, args.seconds, min_steps=1, history=args.history)
        ratio = native.steps_per_s / sync.steps_per_s if sync else float("nan")
        sync_txt = f"{sync.steps_per_s:14,.0f}" if sync else f"{'skipped':>14}"
        print(f"{n:>7} {native.steps_per_s:16,.0f} {sync_txt} {ratio:8.1f}", flush=True)
        rows.append({"native": native.as_dict(), "sync": sync.as_dict() if sync else None, "ratio": ratio})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


def _bench_lstm(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from l2o_gym.agents.lstm import time_meta_iteration

    for name in ("n_problems", "dim", "unroll", "iters", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if 100 % args.unroll:
        parser.error("--unroll must divide the horizon 100")
    torch.set_num_threads(args.threads)
    r = time_meta_iteration(args.n_problems, args.dim, args.unroll, args.iters, device=args.device)
    print(f"# LSTM meta-iteration: {args.n_problems} quadratics x {args.dim}-d, unroll {args.unroll}, "
          f"device={args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"median {r['median_s']:.4f} s  (min {r['min_s']:.4f}, max {r['max_s']:.4f}, {r['iters']} iterations)")
    return 0


def _bench_convnet(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from l2o_gym.experiments.benchmark import convnet_speed

    for name in ("n_problems", "reps", "unroll", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    try:
        kw = json.loads(args.family_kwargs)
        if not isinstance(kw, dict):
            raise ValueError("not a JSON object")
        from l2o_gym.problems import ConvNet

        ConvNet(**kw)
    except (ValueError, TypeError) as exc:
        parser.error(f"--family-kwargs: {exc}")
    torch.set_num_threads(args.threads)
    r = convnet_speed(args.n_problems, args.reps, args.unroll, kw, meta=not args.no_meta, device=args.device)
    print(f"# ConvNet {kw or '(default)'}: N = {args.n_problems} nets, d = {r['dim']}, device={args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.reps} interleaved reps")
    for k, v in r.items():
        if k.endswith("_ratio"):
            print(f"{k:24s} {v:8.2f}x")
        elif isinstance(v, float):
            print(f"{k:24s} {v:8.4f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Benchmarks that print figures (record them in docs/benchmarks.md).

    python scripts/bench.py env [--env l2o/Quadratic-v0] [--sizes 1 64 1024 16384] [--device cpu]
    python scripts/bench.py eval [--n-problems 1000] [--horizon 100]
    python scripts/bench.py busy [--num-envs 1024] [--rounds 3] [--competitors 1] [--modes auto torch-default]

``env``: env-steps/s of the native torch vector env against ``gymnasium.vector.SyncVectorEnv`` over the
single env, with their ratio.
``eval``: wall time of evaluating every first-order baseline on 1,000 quadratics x 100 steps (batched).
``nn``: the NN-classifier benchmark (MNIST-48, N = 100): core step vs a bare batched forward+backward of the
same nets, and seconds per LSTM meta-iteration (``python scripts/bench.py nn``).
``conv-gps``: wall seconds per convolutional-GPS iteration on MNIST-48 (T = 400, the shipped checkpoint's
configuration); under ``torchrun --nproc_per_node 2`` the trajectories are split over 2 processes (gloo), e.g.
``torchrun --nproc_per_node 2 scripts/bench.py conv-gps``.
``busy``: native env-steps/s idle and beside CPU-bound competitor processes that the benchmark starts and stops
itself, rounds alternating idle/busy; per thread mode (``auto``: the envs' thread policy, ``torch-default``: torch's
global setting, ``1``) the medians and the busy/idle ratio (l2o_gym.threads, docs/threads.md).
``kernels``: four small comparison jobs, each depending on one kernel library (torch's own kernels, MKL, oneDNN,
OpenBLAS), run with the pinned kernels of ``--portable`` (or ``--no-portable``), printed beside the reference
recorded in ``l2o_gym.experiments.benchmark.KERNEL_REFERENCE``: a machine that prints "DIFFERENT" does not
reproduce the study's numbers (docs/threads.md).
``step``: one native vector-env step against a bare batched forward + backward of the same objective
(interleaved medians and their ratio), e.g. ``python scripts/bench.py step --env l2o/NeuralArt-v0 --n 8``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys

import torch

from l2o_gym.experiments import cli
from l2o_gym.experiments.benchmark import THREAD_MODES, baseline_eval_time, busy_throughput, env_throughput, step_overhead


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("env", help="env-steps/s: native torch VectorEnv vs SyncVectorEnv")
    p.add_argument("--env", default="l2o/Quadratic-v0", help="registered env id (default: %(default)s)")
    p.add_argument("--sizes", type=cli.positive_int, nargs="+", default=[1, 64, 1024, 16384], help="numbers of envs N")
    p.add_argument("--device", type=cli.device, default="cpu", help="torch device of the native env (default: %(default)s)")
    p.add_argument("--seconds", type=cli.positive_float, default=2.0,
                   help="measurement time per configuration (finite, positive; default: %(default)s)")
    p.add_argument(
        "--sync-max", type=cli.nonnegative_int, default=16384, help="skip SyncVectorEnv above this N (default: %(default)s)"
    )
    p.add_argument("--history", type=cli.positive_int, default=25, help="history length H (default: %(default)s)")
    p.add_argument("--json", type=cli.out_file, default=None, help="also write the results to this JSON file")
    e = sub.add_parser("eval", help="wall time of evaluating the first-order baselines (batched)")
    e.add_argument("--env", default="l2o/Quadratic-v0", help="registered env id (default: %(default)s)")
    e.add_argument("--n-problems", type=cli.positive_int, default=1000, help="problems (default: %(default)s)")
    e.add_argument("--horizon", type=cli.positive_int, default=100, help="iterations (default: %(default)s)")
    e.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: %(default)s)")
    e.add_argument("--threads", type=cli.nonnegative_int, default=1,
                   help="torch threads of each evaluation (default: %(default)s, as compare.py; 0: torch's setting)")
    b = sub.add_parser("busy", help="env-steps/s idle vs beside CPU-bound competitor processes")
    b.add_argument("--env", default="l2o/Quadratic-v0", help="registered env id (default: %(default)s)")
    b.add_argument("--num-envs", type=cli.positive_int, default=1024, help="number of envs N (default: %(default)s)")
    b.add_argument("--rounds", type=cli.positive_int, default=3, help="idle/busy rounds (default: %(default)s)")
    b.add_argument("--seconds", type=cli.positive_float, default=1.0,
                   help="measurement time per figure (finite, positive; default: %(default)s)")
    b.add_argument("--competitors", type=cli.positive_int, default=1, help="CPU-bound processes started (default: %(default)s)")
    b.add_argument("--modes", nargs="+", default=["auto", "torch-default"], choices=list(THREAD_MODES),
                   help="thread modes to compare (default: %(default)s)")
    b.add_argument("--json", type=cli.out_file, default=None, help="also write the results to this JSON file")
    q = sub.add_parser("lstm", help="seconds per LSTM meta-iteration (128 quadratics x 10-d, unroll 20)")
    q.add_argument("--n-problems", type=cli.positive_int, default=128, help="problems per meta-batch (default: %(default)s)")
    q.add_argument("--dim", type=cli.positive_int, default=10, help="quadratic dimension (default: %(default)s)")
    q.add_argument("--unroll", type=cli.positive_int, default=20, help="truncation length (default: %(default)s)")
    q.add_argument("--iters", type=cli.positive_int, default=20, help="timed meta-iterations (default: %(default)s)")
    q.add_argument("--threads", type=cli.positive_int, default=1, help="torch intra-op threads (default: %(default)s)")
    q.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: %(default)s)")
    st = sub.add_parser("step", help="env step vs a bare batched forward+backward of the same objective")
    st.add_argument("--env", default="l2o/NeuralArt-v0", help="registered env id (default: %(default)s)")
    st.add_argument("--n", type=cli.positive_int, default=8, help="number of envs / problems N (default: %(default)s)")
    st.add_argument("--history", type=cli.positive_int, default=25, help="history length H (default: %(default)s)")
    st.add_argument("--reps", type=cli.positive_int, default=20, help="timed repetitions (default: %(default)s)")
    st.add_argument("--family-kwargs", type=cli.json_object, default={},
                    help="JSON family overrides, e.g. '{\"size\": 128}'")
    st.add_argument("--threads", type=cli.positive_int, default=1, help="torch intra-op threads (default: %(default)s)")
    st.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: %(default)s)")
    c = sub.add_parser("convnet", help="conv-net family: batched fwd+bwd (grouped vs vmap vs separate nets), env "
                                        "step, multi-LSTM meta-iteration (docs/convnet.md)")
    c.add_argument("--n-problems", type=cli.positive_int, default=8, help="conv nets N (default: %(default)s)")
    c.add_argument("--reps", type=cli.positive_int, default=5, help="timed repetitions, interleaved (default: %(default)s)")
    c.add_argument("--unroll", type=cli.positive_int, default=10, help="meta-iteration truncation length (default: %(default)s)")
    c.add_argument("--no-meta", action="store_true", help="skip the multi-LSTM meta-iteration")
    c.add_argument("--family-kwargs", type=cli.json_object, default={},
                   help="JSON ConvNet arguments, e.g. '{\"dataset\": \"mnist\"}'")
    c.add_argument("--threads", type=cli.positive_int, default=1, help="torch intra-op threads (default: %(default)s)")
    c.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: %(default)s)")
    nn = sub.add_parser("nn", help="NN-classifier step vs bare forward+backward; LSTM meta-iteration")
    nn.add_argument("--n-problems", type=cli.positive_int, default=100, help="problems N (default: %(default)s)")
    nn.add_argument("--steps", type=cli.positive_int, default=50, help="timed steps (default: %(default)s)")
    nn.add_argument("--lstm-problems", type=cli.positive_int, default=4,
                    help="problems per LSTM meta-iteration (default: %(default)s)")
    nn.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: %(default)s)")
    k = sub.add_parser("kernels", help="small comparison jobs whose numbers depend on each kernel library, pinned "
                                       "(--portable) or not, against the recorded pinned reference")
    k.add_argument("--no-portable", dest="portable", action="store_false",
                   help="this machine's own kernels instead of the pinned ones")
    g = sub.add_parser("conv-gps", help="seconds per convolutional-GPS iteration on MNIST-48 (torchrun-aware)")
    g.add_argument("--iters", type=cli.positive_int, default=2, help="timed iterations (default: %(default)s)")
    g.add_argument("--horizon", type=cli.positive_int, default=400, help="T (default: %(default)s)")
    g.add_argument("--conditions", type=cli.positive_int, default=4, help="training problems (default: %(default)s)")
    g.add_argument("--samples", type=cli.positive_int, default=4, help="trajectories per condition (default: %(default)s)")
    g.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: %(default)s)")
    return cli.run(parser, _body, argv)


def _bench_kernels(args: argparse.Namespace) -> int:
    import tempfile

    from l2o_gym.experiments.benchmark import kernel_check

    with tempfile.TemporaryDirectory() as out:
        rows = kernel_check(out, args.portable)
    print(f"# kernels {'pinned (portable)' if args.portable else 'of this machine'}: {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}")
    for r in rows:
        ref = "" if r["reference"] is None else f"  reference {r['reference']!r}: {'same' if r['same'] else 'DIFFERENT'}"
        print(f"{r['name']:16s} {r['library']:18s} {r['value']!r}{ref}")
    return 0


def _bench_conv_gps(args: argparse.Namespace) -> int:
    from l2o_gym.experiments.benchmark import conv_gps_iteration

    torch.set_num_threads(1)
    with cli.torchrun_group(args.device):
        r = conv_gps_iteration(args.iters, args.conditions, args.samples, args.horizon, device=args.device)
    if cli.is_rank0():
        print(f"# conv GPS on l2o/NNClassifier-v0 (MNIST-48), T = {args.horizon}, {args.conditions} conditions x "
              f"{args.samples} samples, {r['world_size']} process(es) x 1 thread, device={args.device}, "
              f"torch {torch.__version__}")
        print("seconds per iteration: " + ", ".join(f"{t:.1f}" for t in r["iteration_s"])
              + f" (median {r['median_s']:.1f}; {r['env_steps_per_iteration']} env steps each)")
    return 0


def _body(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.what in ("env", "eval", "busy", "step"):
        from l2o_gym.registry import ENV_IDS

        if args.env not in ENV_IDS:
            raise cli.UsageError(f"unknown env id {args.env!r}: expected one of {', '.join(ENV_IDS)}")
    if args.what == "lstm":
        return _bench_lstm(args)
    if args.what == "conv-gps":
        return _bench_conv_gps(args)
    if args.what == "kernels":
        return _bench_kernels(args)
    if args.what == "convnet":
        return _bench_convnet(args)
    if args.what == "busy":
        return _bench_busy(args)
    if args.what == "step":
        return _bench_step(args)
    if args.what == "nn":
        return _bench_nn(args)
    if args.what == "eval":
        threads = args.threads or None
        times = baseline_eval_time(args.env, args.n_problems, args.horizon, args.device, threads)
        print(f"# {args.env}: {args.n_problems} problems x {args.horizon} steps, device={args.device}, "
              f"torch {torch.__version__}, {threads or torch.get_num_threads()} thread(s)")
        for name, sec in times.items():
            print(f"{name:9s} {sec:6.2f} s")
        print(f"{'total':9s} {sum(times.values()):6.2f} s")
        return 0

    from l2o_gym.threads import SMALL_WORK

    print(f"# {args.env}, H={args.history}, device={args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads (the envs step under their 'auto' thread policy: 1 thread below "
          f"N·F = {SMALL_WORK:,}), {platform.processor() or platform.machine()}")
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
        _write_json(args.json, rows)
    return 0


def _write_json(path: str, rows: list[dict]) -> None:
    from pathlib import Path

    from l2o_gym.checkpoint import atomic_write

    text = json.dumps(rows, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))  # a crash leaves no half-written file


def _bench_busy(args: argparse.Namespace) -> int:
    rows = busy_throughput(args.env, args.num_envs, tuple(args.modes), args.rounds, args.seconds, args.competitors)
    r0 = rows[0]
    print(f"# {args.env}, N={args.num_envs}, {args.competitors} competing process(es), {args.rounds} rounds x "
          f"{args.seconds} s, torch {torch.__version__} ({torch.get_num_threads()} threads by default), "
          f"{os.cpu_count()} CPUs, load average before {r0['load_before'][0]:.2f}, after {r0['load_after'][0]:.2f}")
    print(f"{'mode':>14} {'idle steps/s':>14} {'busy steps/s':>14} {'busy/idle':>10}   per round (idle -> busy)")
    for r in rows:
        rounds = ", ".join(f"{i:,.0f}->{b:,.0f}" for i, b in zip(r["idle"], r["busy"]))
        print(f"{r['mode']:>14} {r['idle_median']:14,.0f} {r['busy_median']:14,.0f} {r['ratio']:10.2f}   {rounds}")
    if args.json:
        _write_json(args.json, rows)
    return 0


def _bench_step(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    fkw = args.family_kwargs
    # threads=None: the env steps with --threads too (its "auto" policy would use 1 thread while the bare pass,
    # printed beside it, used --threads)
    r = step_overhead(args.env, args.n, args.history, args.reps, device=args.device, threads=None, **fkw)
    print(f"# {args.env} {fkw or ''}: N={args.n}, H={args.history}, device={args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"env step {r['env_step_s'] * 1e3:.1f} ms, bare forward+backward {r['bare_forward_backward_s'] * 1e3:.1f} ms, "
          f"ratio {r['ratio']:.2f} (medians of {r['reps']}, interleaved)")
    return 0


def _bench_lstm(args: argparse.Namespace) -> int:
    from l2o_gym.agents.lstm import time_meta_iteration

    if 100 % args.unroll:
        raise cli.UsageError(f"--unroll must divide the horizon 100, got {args.unroll}")
    torch.set_num_threads(args.threads)
    r = time_meta_iteration(args.n_problems, args.dim, args.unroll, args.iters, device=args.device)
    print(f"# LSTM meta-iteration: {args.n_problems} quadratics x {args.dim}-d, unroll {args.unroll}, "
          f"device={args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"median {r['median_s']:.4f} s  (min {r['min_s']:.4f}, max {r['max_s']:.4f}, {r['iters']} iterations)")
    return 0


def _bench_nn(args: argparse.Namespace) -> int:
    from l2o_gym.experiments.benchmark import nn_lstm_meta_iteration, nn_step_time

    r = nn_step_time(args.n_problems, args.steps, device=args.device)
    print(f"# l2o/NNClassifier-v0 (MNIST-48, 48-48-10, batch 64, M = 1000): N = {args.n_problems}, "
          f"device={args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.steps}")
    print(f"bare fwd+bwd           {1e3 * r['bare']:8.2f} ms")
    print(f"core.step (minibatch)  {1e3 * r['core_minibatch']:8.2f} ms  ratio {r['ratio_minibatch']:.2f}")
    print(f"core.step (+true f)    {1e3 * r['core_true_every_step']:8.2f} ms  ratio {r['ratio_true_every_step']:.2f}")
    m = nn_lstm_meta_iteration(args.lstm_problems, device=args.device)
    print(f"LSTM meta-iteration ({args.lstm_problems} problems, unroll 20): median {m['median_s']:.2f} s "
          f"(min {m['min_s']:.2f}, max {m['max_s']:.2f})")
    return 0


def _bench_convnet(args: argparse.Namespace) -> int:
    from l2o_gym.experiments.benchmark import convnet_speed

    kw = args.family_kwargs
    try:
        from l2o_gym.problems import ConvNet

        ConvNet(**kw)
    except (ValueError, TypeError) as exc:
        raise cli.UsageError(f"--family-kwargs: {exc}") from None
    torch.set_num_threads(args.threads)
    r = convnet_speed(args.n_problems, args.reps, args.unroll, kw, meta=not args.no_meta, device=args.device,
                      threads=None)  # every variant, the env step included, on --threads
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

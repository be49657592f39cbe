"""Infrastructure checks found in review: BPTT under several processes, the run lifecycle under Ctrl-C."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_BPTT_WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from torch import nn
    import torch.distributed as dist
    from l2o_gym import core, make_family
    from l2o_gym.agents.bptt import BPTT
    from l2o_gym.distributed import init_group, world
    from l2o_gym.policy import Policy

    class Step(Policy):  # "unused": meta-parameters of an LSTM whose kind of coordinates the problems lack
        def __init__(self):
            self.unused = nn.Parameter(torch.ones(3))
            self.lr = nn.Parameter(torch.tensor([0.01]))

        def act(self, state, memory):
            return -self.lr * state.grad, memory

    init_group("cpu")
    rank, size = world()
    policy = Step()
    opt = torch.optim.Adam([policy.unused, policy.lr], lr=0.01)
    bptt = BPTT(policy, [policy.unused, policy.lr], opt)
    fam = make_family("quadratic", dim=3)
    cc = core.CoreConfig(horizon=4, history=1, validate=False)
    for ep in range(2):
        assert bptt.step(core.reset(fam.sample(4, "train", ep), cc), None, 4).updated
    if rank == 0:
        st = opt.state_dict()["state"]
        print("RESULT " + json.dumps({"states": sorted(st), "steps": {str(k): float(v["step"]) for k, v in st.items()},
                                      "unused_grad": policy.unused.grad is not None}))
    if dist.is_initialized():
        dist.destroy_process_group()
""")


def _result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_bptt_parameters_without_gradient_on_every_rank_are_skipped_as_with_one_process(tmp_path):
    """A meta-parameter no rank's loss reaches (e.g. the LSTM of a parameter kind the problems lack) is left out of
    the optimizer step under 2 gloo processes exactly as under 1: Adam neither creates its state nor advances its
    step counter (which would change its bias correction once the parameter is reached, e.g. when fine-tuning)."""
    script = tmp_path / "worker.py"
    script.write_text(_BPTT_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    one = _result(subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120))
    two = _result(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                  str(script)], capture_output=True, text=True, env=env, timeout=120))
    assert one == {"states": [1], "steps": {"1": 2.0}, "unused_grad": False}
    assert two == one


def _toy_interrupted_while_writing(name: str, at: int = 2):
    """``test_lifecycle.Toy`` that receives a SIGINT (the user's Ctrl-C) while writing file ``name`` at iteration ``at``."""
    import signal

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_lifecycle import Toy
    finally:
        sys.path.remove(str(ROOT / "tests"))

    class Interrupted(Toy):
        def save_policy(self, path, extra):
            if path.name == name and self.k == at:
                signal.raise_signal(signal.SIGINT)
            return super().save_policy(path, extra)

    return Interrupted


def test_ctrl_c_while_the_new_best_is_written_keeps_the_best_file_and_the_record_together(tmp_path):
    """A Ctrl-C arriving while ``{kind}_best`` is being written must not leave a best value recorded (in
    ``state.pt`` of an interrupt-safe agent, in ``summary.json``) whose file was never written: after a resume
    that best value would block every later, better-than-the-file iterate from becoming ``{kind}_best``."""
    import signal

    import pytest

    from l2o_gym.agents.common import fit, read_run_state
    from l2o_gym.checkpoint import load_policy_file

    Interrupted = _toy_interrupted_while_writing("toy_best.safetensors")

    with pytest.raises(KeyboardInterrupt):
        fit(Interrupted([3.0, 1.0, 2.0], interrupt_safe=True), tmp_path, progress=False, tensorboard=False)
    recorded = read_run_state(tmp_path / "state.pt", "toy")["record"]["best_val"]
    assert load_policy_file(tmp_path / "toy_best.safetensors")[1]["val_final"] == recorded == 1.0
    assert json.loads((tmp_path / "summary.json").read_text())["best_val"] == 1.0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_atomic_write_never_deletes_the_temporary_file_of_another_file_being_written(tmp_path):
    """The clean-up of stale temporaries of ``x`` took ``.x.999999999.<pid>.<random>.tmp`` — a live writer's
    temporary of the file ``x.999999999`` — for one of ``x`` left by the (dead) process 999999999, and deleted it
    (that writer's ``os.replace`` then fails)."""
    from l2o_gym.checkpoint import atomic_write

    live = tmp_path / f".x.999999999.{os.getpid()}.abcdefgh.tmp"
    live.write_text("being written")
    stale = tmp_path / ".x.999999999.abcdefgh.tmp"  # a temporary of x left by the dead process 999999999
    stale.write_text("left by a killed writer")
    atomic_write(tmp_path / "x", lambda tmp: Path(tmp).write_text("ok"))
    assert live.exists() and not stale.exists() and (tmp_path / "x").read_text() == "ok"


def test_number_checks_refuse_bools_and_strings():
    import pytest

    from l2o_gym.checks import check_nonnegative, check_positive

    for bad in (True, "1e-3", b"1"):
        with pytest.raises(ValueError, match="must be a positive number, got"):
            check_positive("lr", bad)
        with pytest.raises(ValueError, match="must be a non-negative number, got"):
            check_nonnegative("penalty", bad)
    assert check_positive("lr", 0.5) == 0.5 and check_nonnegative("penalty", 0) == 0.0


def test_ctrl_c_while_the_last_checkpoint_is_written_keeps_last_and_state_together(tmp_path):
    """The same for ``{kind}_last`` and ``state.pt``: a Ctrl-C during the last checkpoint's write waits until both are
    written (one iteration's policy file and training state, never one of them a step behind)."""
    import signal

    import pytest

    from l2o_gym.agents.common import fit, read_run_state
    from l2o_gym.checkpoint import load_policy_file

    Interrupted = _toy_interrupted_while_writing("toy_last.safetensors")

    with pytest.raises(KeyboardInterrupt):
        fit(Interrupted([3.0, 2.0, 1.0]), tmp_path, progress=False, tensorboard=False)
    assert read_run_state(tmp_path / "state.pt", "toy")["k"] == 2
    assert load_policy_file(tmp_path / "toy_last.safetensors")[1]["iteration"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

"""The one run lifecycle (agents/common.py) on a toy agent, the one stability verdict, the one BPTT trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from l2o_gym.agents.common import Agent, Validation, fit, load_run_state, read_run_state
from l2o_gym.checkpoint import CheckpointError, load_policy_file, save_policy
from l2o_gym.stability import stability


class Toy(Agent):
    """Iteration k adds one to a counter; validation returns ``values[k-1]``; eligible unless listed."""

    kind = "toy"
    baselines = ()

    def __init__(self, values: list[float], ineligible: tuple[int, ...] = (), val_every: int = 1,
                 interrupt_at: int | None = None, interrupt_safe: bool = False) -> None:
        super().__init__()
        self.values, self.ineligible, self.val_every = values, ineligible, val_every
        self.interrupt_at, self.interrupt_safe = interrupt_at, interrupt_safe
        self.k = 0
        self.w = torch.zeros(2)

    def iteration(self) -> dict[str, float]:
        if self.interrupt_at is not None and self.k + 1 == self.interrupt_at:
            self.w += 100.0  # half an iteration: must never be saved unless the agent says it is consistent
            raise KeyboardInterrupt
        self.k += 1
        self.w += 1.0
        return {"k": float(self.k)}

    def validate(self) -> Validation:
        return Validation(self.values[self.k - 1], eligible=self.k not in self.ineligible, metrics={"val_extra": 1.0})

    def save_policy(self, path: Path, extra: dict[str, Any]) -> Path:
        return save_policy(path, {"w": self.w}, {"kind": "toy", **extra})

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k, "w": self.w.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k, self.w = int(state["k"]), state["w"].clone()

    @property
    def iterations_done(self) -> int:
        return self.k

    def done(self) -> bool:
        return self.k >= len(self.values)

    @property
    def env_steps(self) -> int:
        return 10 * self.k


def test_best_is_the_lowest_eligible_validation_and_every_file_is_written(tmp_path):
    s = fit(Toy([3.0, 1.0, 2.0, 0.5], ineligible=(4,)), tmp_path, progress=False, tensorboard=False)
    assert (s["best_val"], s["best_iteration"], s["best_env_steps"]) == (1.0, 2, 20)
    assert s["training"]["curve"] == [[10, 3.0], [20, 1.0], [30, 2.0], [40, 0.5]]
    assert {p.name for p in tmp_path.iterdir()} >= {"toy_best.safetensors", "toy_last.safetensors", "state.pt",
                                                    "summary.json"}
    tensors, cfg = load_policy_file(tmp_path / "toy_best.safetensors")
    assert cfg["iteration"] == 2 and cfg["val_final"] == 1.0 and torch.equal(tensors["w"], torch.full((2,), 2.0))
    assert cfg["training"] == s["training"]
    assert read_run_state(tmp_path / "state.pt", "toy")["k"] == 4
    assert json.loads((tmp_path / "summary.json").read_text())["best_val"] == 1.0
    assert [h.get("val_extra") for h in s["history"]] == [1.0] * 4


def test_val_every_and_no_eligible_iterate(tmp_path, caplog):
    s = fit(Toy([3.0, 1.0, 2.0, 0.5, 7.0], ineligible=(2, 4, 5), val_every=2), tmp_path, progress=False,
            tensorboard=False)
    assert [c[0] for c in s["training"]["curve"]] == [20, 40, 50]  # every 2nd iteration and the last
    assert s["best_val"] is None and s["best_iteration"] == -1
    assert not (tmp_path / "toy_best.safetensors").exists() and "no toy_best checkpoint" in caplog.text


def test_a_new_run_moves_the_previous_checkpoints_aside_and_resume_continues(tmp_path):
    fit(Toy([3.0, 1.0]), tmp_path, progress=False, tensorboard=False)
    fit(Toy([5.0, 4.0]), tmp_path, progress=False, tensorboard=False)
    assert load_policy_file(tmp_path / "toy_best.previous.safetensors")[1]["val_final"] == 1.0
    agent = Toy([5.0, 4.0, 3.5])
    s = fit(agent, tmp_path, resume=True, progress=False, tensorboard=False)
    assert agent.k == 3 and [c[1] for c in s["training"]["curve"]] == [5.0, 4.0, 3.5]


def test_resume_with_reset_best_moves_the_earlier_phases_best_aside(tmp_path):
    """Fine-tuning (reset_best) whose iterates never qualify must not leave the earlier phase's best file as this
    run's best, relabelled with this run's record."""
    fit(Toy([3.0, 1.0]), tmp_path, progress=False, tensorboard=False)
    s = fit(Toy([3.0, 1.0, 9.0, 8.0], ineligible=(3, 4)), tmp_path, resume=True, reset_best=True, progress=False,
            tensorboard=False)
    assert s["best_val"] is None and not (tmp_path / "toy_best.safetensors").exists()
    assert load_policy_file(tmp_path / "toy_best.previous.safetensors")[1]["val_final"] == 1.0
    # the same through the agent's own resume (as Trainer.resume(reset_best=True) before train())
    fit(Toy([3.0, 1.0]), tmp_path / "b", progress=False, tensorboard=False)
    Toy([3.0, 1.0]).resume(tmp_path / "b" / "state.pt", reset_best=True)
    assert not (tmp_path / "b" / "toy_best.safetensors").exists()
    assert (tmp_path / "b" / "toy_best.previous.safetensors").is_file()

def test_ctrl_c_keeps_the_last_completed_state_unless_the_agent_is_consistent(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(Toy([3.0, 2.0, 1.0], interrupt_at=3), tmp_path / "a", progress=False, tensorboard=False)
    st = read_run_state(tmp_path / "a" / "state.pt", "toy")
    assert st["k"] == 2 and torch.equal(st["w"], torch.full((2,), 2.0))  # not the half-done iteration
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["interrupted"] is True
    with pytest.raises(KeyboardInterrupt):
        fit(Toy([3.0, 2.0, 1.0], interrupt_at=3, interrupt_safe=True), tmp_path / "b", progress=False,
            tensorboard=False)
    assert torch.equal(read_run_state(tmp_path / "b" / "state.pt", "toy")["w"], torch.full((2,), 102.0))


def test_resume_refuses_missing_foreign_and_malformed_states(tmp_path):
    with pytest.raises(CheckpointError, match="no training state"):
        fit(Toy([1.0]), tmp_path, resume=True, progress=False, tensorboard=False)
    fit(Toy([1.0]), tmp_path, progress=False, tensorboard=False)
    other = Toy([1.0])
    other.kind = "lstm"
    with pytest.raises(CheckpointError, match="belongs to a 'toy' run, not 'lstm'"):
        load_run_state(other, tmp_path / "state.pt")
    torch.save({"kind": "toy", "run_format": 2}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match=r"state\.pt' does not fit this toy run: KeyError"):
        load_run_state(Toy([1.0]), tmp_path / "state.pt")


@pytest.mark.parametrize("f_T, curve, diverged, verdict, ratio, peak", [
    (1.0, [1.0, 0.9, 0.8], 0.0, "stable", 0.8, 1.0),
    (1.0, [1.0, 1.5, 1.05], 0.0, "recovers", 1.05, 1.5),
    (1.0, [1.0, 1.2, 1.3], 0.0, "grows", 1.3, 1.3),
    (1.0, [1.0, 0.5, 0.5], 0.1, "diverges", 0.5, 1.0),
    (0.0, [0.0, 0.0], 0.0, "stable", 1.0, 1.0),
    (0.0, [0.0, 0.1], 0.0, "grows", math.inf, math.inf),
])
def test_stability_verdict(f_T, curve, diverged, verdict, ratio, peak):
    v = stability(f_T, curve, diverged, 1.1)
    assert (v.verdict, v.ratio, v.peak_ratio) == (verdict, pytest.approx(ratio), pytest.approx(peak))
    assert v.stable == (verdict == "stable")
    with pytest.raises(ValueError, match="factor must be >= 1"):
        stability(f_T, curve, diverged, 0.9)


def test_bptt_trains_any_module_policy_and_skips_non_finite_updates(caplog):
    """The one BPTT trainer: a learned scalar step size on quadratics converges toward the optimal one, and a
    NaN meta-loss leaves the parameters untouched with a warning."""
    from torch import nn

    from l2o_gym import core, make_family
    from l2o_gym.agents.bptt import BPTT
    from l2o_gym.policy import Policy

    class Step(Policy):
        def __init__(self) -> None:
            self.net = nn.Linear(1, 1, bias=False)
            nn.init.constant_(self.net.weight, 0.01)

        def act(self, state, memory):
            return -self.net.weight[0, 0] * state.grad, memory

    policy = Step()
    fam = make_family("quadratic", dim=3)
    bptt = BPTT(policy, policy.net.parameters(), torch.optim.Adam(policy.net.parameters(), lr=0.05))
    cc = core.CoreConfig(horizon=10, history=1, validate=False)
    first = None
    for ep in range(30):
        r = bptt.step(core.reset(fam.sample(16, "train", ep), cc), None, 10)
        first = r.loss if first is None else first
        assert r.updated
    assert r.loss < 0.5 * first and float(policy.net.weight) > 0.01
    before = policy.net.weight.detach().clone()
    bptt.loss_fn = lambda costs, t0: costs.mean() * float("nan")
    r = bptt.step(core.reset(fam.sample(16, "train", 99), cc), None, 10)
    assert not r.updated and torch.equal(before, policy.net.weight) and "update skipped" in caplog.text


def test_bptt_all_reduce_lays_the_gradient_over_every_parameter(monkeypatch):
    """With several processes the all-reduced buffer covers every parameter, in order, also one this rank's loss
    did not reach (another rank's may have), then one has-gradient flag per parameter: each gradient lands on its own
    parameter; one with a gradient on no rank is left out of the step (grad None), as with one process."""
    from l2o_gym import core, make_family
    from torch import nn

    from l2o_gym.agents import bptt as bptt_mod
    from l2o_gym.policy import Policy

    class Step(Policy):
        def __init__(self) -> None:
            self.unused = nn.Parameter(torch.ones(5))  # listed first, larger than the used one
            self.lr = nn.Parameter(torch.tensor([0.01]))

        def act(self, state, memory):
            return -self.lr * state.grad, memory

    policy = Step()
    state = core.reset(make_family("quadratic", dim=3).sample(4, "train", 0), core.CoreConfig(horizon=5, history=1))
    expected = torch.autograd.grad(bptt_mod.rollout(policy, state, 5).costs.mean(), policy.lr)[0]
    sizes = []

    def all_reduce(buf):  # the other rank sent the same gradient: the mean is this rank's
        sizes.append(buf.numel())
        buf.mul_(2)

    monkeypatch.setattr(bptt_mod, "world", lambda: (0, 2))
    monkeypatch.setattr(bptt_mod.dist, "all_reduce", all_reduce)
    opt = torch.optim.SGD([policy.unused, policy.lr], lr=1.0)
    r = bptt_mod.BPTT(policy, [policy.unused, policy.lr], opt).step(state, None, 5)
    assert r.updated and sizes == [5 + 1 + 2]  # the gradients of both parameters, then their two flags
    torch.testing.assert_close(policy.lr.grad, expected)
    assert policy.unused.grad is None and torch.equal(policy.unused.detach(), torch.ones(5))


def test_bptt_non_finite_rank_joins_the_all_reduce_with_a_buffer_of_the_gradients_dtype(monkeypatch):
    """A rank whose loss is NaN sends a NaN buffer of the parameters' dtype (float64 here), not the default dtype:
    the other rank's buffer of gradients is float64, and a collective over mismatched dtypes fails."""
    from l2o_gym import core, make_family
    from torch import nn

    from l2o_gym.agents import bptt as bptt_mod
    from l2o_gym.policy import Policy

    class Step(Policy):
        def __init__(self) -> None:
            self.lr = nn.Parameter(torch.tensor([0.01], dtype=torch.float64))

        def act(self, state, memory):
            return -self.lr * state.grad, memory

    policy = Step()
    state = core.reset(make_family("quadratic", dim=3).sample(4, "train", 0, dtype=torch.float64),
                       core.CoreConfig(horizon=5, history=1))
    sent = []
    monkeypatch.setattr(bptt_mod, "world", lambda: (0, 2))
    monkeypatch.setattr(bptt_mod.dist, "all_reduce", lambda buf: sent.append((buf.dtype, buf.numel())))
    opt = torch.optim.SGD([policy.lr], lr=1.0)
    for loss_fn in (lambda c, t0: c.mean(), lambda c, t0: c.mean() * float("nan")):
        bptt_mod.BPTT(policy, [policy.lr], opt, loss_fn).step(state, None, 5)
    assert sent == [(torch.float64, 2), (torch.float64, 2)]  # the gradient and its has-gradient flag


def test_checkpoint_every_thins_the_state_writes(tmp_path):
    agent = Toy([3.0, 2.0, 1.0, 0.5, 0.2], interrupt_at=4)
    agent.checkpoint_every = 2
    with pytest.raises(KeyboardInterrupt):
        fit(agent, tmp_path, progress=False, tensorboard=False)
    assert read_run_state(tmp_path / "state.pt", "toy")["k"] == 2  # written after iteration 2, not 1 or 3
    agent = Toy([3.0, 2.0, 1.0])
    agent.checkpoint_every = 2
    fit(agent, tmp_path / "b", progress=False, tensorboard=False)
    assert read_run_state(tmp_path / "b" / "state.pt", "toy")["k"] == 3  # and always after the last one


@pytest.mark.parametrize("device, local_rank, backend, selected", [
    ("cpu", "1", "gloo", None), ("cuda", "1", "nccl", 1), ("cuda:0", "1", "nccl", None), ("cuda", None, "nccl", None),
])
def test_init_group_picks_the_backend_and_each_ranks_gpu(monkeypatch, device, local_rank, backend, selected):
    """Under torchrun: gloo on CPU, nccl on CUDA, and ``device="cuda"`` selects the GPU of ``LOCAL_RANK`` first
    (every rank on GPU 0 would be refused by nccl); an explicit index is the user's choice."""
    from l2o_gym import distributed

    calls = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: bool(calls and calls[-1][0] == "init"))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda b: calls.append(("init", b)))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    assert distributed.init_group(device) == (1, 2)
    assert calls == ([("set_device", selected)] if selected is not None else []) + [("init", backend)]
    assert distributed.init_group(device) == (1, 2) and len(calls) == (2 if selected is not None else 1)  # once


def test_init_group_outside_torchrun_is_one_process(monkeypatch):
    from l2o_gym import distributed

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_group("cpu") == (0, 1) and not distributed.launched()

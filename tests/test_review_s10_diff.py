"""Review of session 10's changes: ``fmt_percent`` at the ends of its range, tensor learning rates set by a
scheduler, the CPU fingerprint of ARM machines, and edge cases of the core's gradient hook and of the lazy Φ."""

from __future__ import annotations

import copy
import pathlib
import pickle

import pytest
import torch

from l2o_gym.agents.baselines import GradientDescent
from l2o_gym.agents.gps.coord import CoordinateFeatures
from l2o_gym.core import CoreConfig, reset, step
from l2o_gym.experiments import compare
from l2o_gym.experiments.compare import fmt_percent
from l2o_gym.optim import LearnedOptimizer
from l2o_gym.registry import env_family


# ---- fmt_percent ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fraction", "text"), [
    (199 / 200, "99.5%"),  # was "100%": one of 200 problems had not diverged
    (0.996, "99.6%"),
    (0.9999, "99.99%"),
    (0.994, "99%"),
    (1.0, "100%"),
    (0.25, "25%"),
    (1e-7, "0.00001%"),  # was "1e-05%"
    (0.001, "0.1%"),  # was "0%" beside the ⚠ flag
    (0.01, "1%"),
    (0.0, "0%"),
])
def test_fmt_percent_reads_100_only_when_all(fraction: float, text: str) -> None:
    assert fmt_percent(fraction) == text


def test_fmt_percent_never_rounds_to_the_ends() -> None:
    for k in range(1, 100_000, 7):
        f = k / 100_000
        s = fmt_percent(f)
        assert s not in ("0%", "100%") and "e" not in s, (f, s)


# ---- LearnedOptimizer lr ---------------------------------------------------------------------------------------
def _run(lam) -> tuple[LearnedOptimizer, torch.Tensor]:
    w = torch.nn.Parameter(torch.ones(3))
    opt = LearnedOptimizer([w], GradientDescent(0.1), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    for _ in range(3):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
        sched.step()
    return opt, w.detach().clone()


def test_a_scheduler_may_set_a_tensor_lr() -> None:
    # LambdaLR multiplies the base lr by what the lambda returns: a 0-d tensor when it is written with torch ops.
    # Before the session's lr check this ran (torch.add takes a 0-d tensor alpha); the check refused it.
    _, w_tensor = _run(lambda e: torch.tensor(0.5) ** e)
    _, w_float = _run(lambda e: 0.5 ** e)
    assert torch.equal(w_tensor, w_float)


@pytest.mark.parametrize("bad", [torch.tensor(float("nan")), torch.tensor(-1.0), torch.tensor([0.5]),
                                 torch.tensor(True)])
def test_a_bad_tensor_lr_is_still_refused(bad: torch.Tensor) -> None:
    w = torch.nn.Parameter(torch.ones(3))
    opt = LearnedOptimizer([w], GradientDescent(0.1))
    (w ** 2).sum().backward()
    opt.param_groups[0]["lr"] = bad
    with pytest.raises(ValueError, match="lr of param group 0"):
        opt.step()


# ---- kernel_fingerprint ----------------------------------------------------------------------------------------
_ARM = ("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd {extra}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x{variant}\nCPU part\t: 0x{part}\nCPU revision\t: 1\n")


def _fingerprint_with(monkeypatch: pytest.MonkeyPatch, cpuinfo: str) -> dict:
    real = pathlib.Path.read_text

    def read_text(self, *args, **kwargs):
        return cpuinfo if str(self) == "/proc/cpuinfo" else real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    try:
        return compare.kernel_fingerprint(False)
    finally:
        monkeypatch.undo()


def test_two_arm_cpus_have_different_fingerprints(monkeypatch: pytest.MonkeyPatch) -> None:
    # ARM's /proc/cpuinfo has no vendor_id, model name or flags: every ARM machine had the same key
    n1 = _fingerprint_with(monkeypatch, _ARM.format(extra="atomics", variant="3", part="d0c"))  # Neoverse N1
    v1 = _fingerprint_with(monkeypatch, _ARM.format(extra="atomics sve", variant="1", part="d40"))  # Neoverse V1
    assert n1 != v1
    assert n1["cpu"]["CPU part"] == "0xd0c"


def test_x86_fingerprint_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    # the keys of jobs already saved on x86 machines stay valid: the same fields as before
    fp = _fingerprint_with(monkeypatch, "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
                                        "model name\t: Xeon\nflags\t\t: sse2 avx2 fpu\ncpu MHz\t\t: 2600\n")
    assert fp["cpu"] == {"vendor_id": "GenuineIntel", "model name": "Xeon"}
    assert set(fp) == {"portable", "cpu", "cpu_flags", "capability"}


def test_a_cpuinfo_naming_no_cpu_falls_back_to_the_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    fp = _fingerprint_with(monkeypatch, "processor\t: 0\nBogoMIPS\t: 50\n")
    assert "model name" in fp["cpu"]


# ---- the core's gradient hook ----------------------------------------------------------------------------------
@pytest.mark.parametrize("second_order", [False, True])
def test_divergence_mid_unroll_gives_finite_first_and_second_derivatives(second_order: bool) -> None:
    problems = env_family("l2o/Quadratic-v0").sample(3, "train", 0, torch.device("cpu"), torch.float64)
    state = reset(problems, CoreConfig(horizon=10, history=1, second_order=second_order))
    w = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    total = torch.zeros((), dtype=torch.float64)
    for t in range(5):
        scale = torch.ones(3, 1, dtype=torch.float64)
        if t == 2:
            scale[1] = 1e200  # overflows the quadratic: rejected, then frozen (and still pushed) for the rest
        state, cost, terminated, _ = step(state, -w * scale * state.grad)
        total = total + cost.sum()
    assert terminated.tolist() == [False, True, False]
    (gw,) = torch.autograd.grad(total, w, create_graph=True)
    assert torch.isfinite(gw)
    (ggw,) = torch.autograd.grad(gw, w)  # double backward through the hooks
    assert torch.isfinite(ggw)


# ---- the lazy Φ ------------------------------------------------------------------------------------------------
def test_lazy_state_survives_copies_mid_episode() -> None:
    g = torch.Generator().manual_seed(0)
    f = CoordinateFeatures("sqrt", "ema")
    th = torch.randn(2, 5, generator=g, dtype=torch.float64)
    f.reset(th, th.pow(2).sum(1), 2 * th)
    for _ in range(6):
        th = th - 0.1 * torch.randn(2, 5, generator=g, dtype=torch.float64)
        f.update(th, th.pow(2).sum(1), 2 * th)
    before = copy.deepcopy(f)  # Φ not built yet
    phi = f.state
    copies = [before, copy.deepcopy(f), pickle.loads(pickle.dumps(f))]
    assert all(torch.equal(c.state, phi) for c in copies)
    restored = CoordinateFeatures.from_memory_state(f.memory_state())
    th = th * 0.9
    for tr in (f, *copies, restored):
        tr.update(th, th.pow(2).sum(1), 2 * th)
    assert all(torch.equal(c.state, f.state) and torch.equal(c.obs, f.obs) for c in (*copies, restored))


def _loaded_continues_identically(edit_state) -> None:
    """An Adam ``LearnedOptimizer`` state, edited by ``edit_state``, loads into a fresh optimizer of a copy of the
    model, and the next steps of both are the same (Adam's moments came through)."""
    from l2o_gym.agents.baselines import make_baseline

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(4, 3)
    opt = LearnedOptimizer(model.parameters(), make_baseline("adam", lr=0.01))
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    state = opt.state_dict()
    edit_state(state)
    twin = copy.deepcopy(model)
    other = LearnedOptimizer(twin.parameters(), make_baseline("adam", lr=0.01))
    other.load_state_dict(state)
    fresh = copy.deepcopy(model)  # without the state: a first Adam step, which differs
    new = LearnedOptimizer(fresh.parameters(), make_baseline("adam", lr=0.01))
    for m, o in ((model, opt), (twin, other), (fresh, new)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_a_state_without_the_policy_key_still_loads() -> None:
    # optimizer states saved before the policy class was recorded have no "policy" entry
    def drop(state):
        assert state["l2o"]["policy"].endswith(":Adam")
        del state["l2o"]["policy"]

    _loaded_continues_identically(drop)


def test_repeated_envs_and_variants_give_one_section_each():
    from l2o_gym.experiments.compare import CompareConfig

    cfg = CompareConfig(envs=["l2o/NNClassifier-v0", "l2o/NNClassifier-v0"], variants=["digits", "digits", "mnist"],
                        policies=["sgd"])
    assert [s.variant for s in cfg.resolve_sections()] == ["digits", "mnist"]


def test_optimizer_state_loads_when_the_policy_class_was_imported_under_another_module_path():
    def rename(state):
        module, _, name = state["l2o"]["policy"].rpartition(":")
        state["l2o"]["policy"] = f"agents.baselines:{name}"  # the repository root's top-level import of the same class

    _loaded_continues_identically(rename)
"""Chunked evaluation of coordinatewise networks (l2o_gym.policy.rowwise): the same steps, less memory traffic."""

from __future__ import annotations

import pytest
import torch

from l2o_gym import policy as policy_mod
from l2o_gym.agents.lstm.policy import CoordinateLSTM, LSTMConfig
from l2o_gym.policy import join_rows
from l2o_gym.policy import rowwise


def test_rowwise_gives_the_rows_of_one_call_in_chunks_of_at_least_chunk_rows():
    torch.manual_seed(0)
    w = torch.randn(5, 3)
    calls: list[int] = []

    def fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(x.shape[0])
        return torch.tanh(x @ w), x.sum(1) * y

    x, y = torch.randn(2 * 64 + 37, 5), torch.randn(2 * 64 + 37)
    with torch.no_grad():
        a, b = fn(x, y)
        calls.clear()
        ca, cb = rowwise(fn, x, y, chunk=64)
    assert calls == [64, 64 + 37]  # the remainder joins the last chunk: no small matrix
    torch.testing.assert_close(ca, a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cb, b, rtol=1e-6, atol=1e-7)
    calls.clear()
    rowwise(fn, x[:127], y[:127], chunk=64)  # under 2 chunks: one call
    assert calls == [127]
    calls.clear()
    with torch.enable_grad():  # recording gradients (BPTT): one call, the graph as before
        out, _ = rowwise(fn, x.requires_grad_(), y, chunk=64)
    assert calls == [x.shape[0]] and out.requires_grad
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=f"chunk must be a positive integer, got {bad}"):
            rowwise(fn, x, y, chunk=bad)


@pytest.mark.parametrize("global_cells", [0, 4])
def test_the_lstm_takes_the_same_steps_in_chunks(monkeypatch, global_cells):
    torch.manual_seed(1)
    net = CoordinateLSTM(LSTMConfig(global_cells=global_cells))
    n, d = 3, 100  # 300 coordinates: 4 chunks of 64 (+ 44) when ROW_CHUNK = 64
    g = torch.randn(n * d)
    mem = tuple(torch.randn(n * d, 20) for _ in range(4))
    with torch.no_grad():
        monkeypatch.setattr(policy_mod, "ROW_CHUNK", 10**9)
        ref = net(g, mem, n)
        monkeypatch.setattr(policy_mod, "ROW_CHUNK", 64)
        out = net(g, mem, n)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-6, atol=1e-7)
    assert len(join_rows(out[1])) == len(join_rows(ref[1])) == 4
    for a, b in zip(join_rows(out[1]), join_rows(ref[1])):  # the memory, chunked or not, as whole [M, hidden] tensors
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_conv_gps_policy_takes_the_same_steps_in_chunks(monkeypatch):
    from l2o_gym.experiments.compare import PolicySpec, _load_learned
    from l2o_gym.experiments.evaluation import evaluate

    policy = _load_learned(PolicySpec.parse("gps"), "l2o/NNClassifier-v0", "cpu")[0]
    runs = []
    for chunk in (10**9, 256):  # 2,842 coordinates per net: 11 chunks of 256 rows per weight group
        monkeypatch.setattr(policy_mod, "ROW_CHUNK", chunk)
        runs.append(evaluate(policy, "l2o/NNClassifier-v0", horizon=6, n_problems=2, n_boot=20))
    torch.testing.assert_close(torch.tensor(runs[1].curve_mean), torch.tensor(runs[0].curve_mean), rtol=1e-5, atol=1e-7)


def test_rowwise_carry_keeps_the_recurrent_state_in_chunks_and_equals_rowwise():
    from l2o_gym.policy import rowwise_carry

    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(3, 4)
    x = [torch.randn(300, 3) for _ in range(3)]
    h, c = torch.zeros(300, 4), torch.zeros(300, 4)
    carry = (h, c)  # whole tensors: split at the first call
    with torch.no_grad():
        for xt in x:
            def fn(xi, hi, ci):
                h1, c1 = cell(xi, (hi, ci))
                return h1.sum(1), h1, c1

            ref, h, c = rowwise(fn, xt, h, c, chunk=64)
            (out,), carry = rowwise_carry(fn, (xt,), carry, chunk=64)
            assert [p[0].shape[0] for p in carry] == [64, 64, 64, 108]  # the chunks rowwise evaluates
            assert torch.equal(out, ref)
            assert torch.equal(torch.cat([p[0] for p in carry]), h) and torch.equal(torch.cat([p[1] for p in carry]), c)
        # a carry in other chunks (e.g. made with gradients enabled: one chunk) is re-split, same numbers
        (out,), again = rowwise_carry(fn, (x[0],), tuple((p[0], p[1]) for p in carry), chunk=100)
        ref, *_ = rowwise(fn, x[0], h, c, chunk=100)
        assert [p[0].shape[0] for p in again] == [100, 100, 100] and torch.equal(out, ref)


def test_rowwise_carry_with_an_empty_carry_is_rowwise():
    # ``carry: tuple[Tensor, ...]`` admits ``()`` (a stateless fn); it raised IndexError in chunk_rows
    x = torch.randn(20, 3)

    def fn(x: torch.Tensor) -> tuple[torch.Tensor]:
        return (2 * x,)

    with torch.no_grad():
        (out,), carry = policy_mod.rowwise_carry(fn, (x,), (), chunk=4)
        assert torch.equal(out, rowwise(fn, x, chunk=4)[0])
        assert len(carry) == 5 and all(c == () for c in carry)
        (again,), carry = policy_mod.rowwise_carry(fn, (x,), carry, chunk=4)  # chunks of no carry, passed back in
        assert torch.equal(again, out) and all(c == () for c in carry)


def test_the_lstm_memory_stays_in_chunks_and_equals_the_whole_blocks_bitwise(monkeypatch):
    """Several steps with the memory kept in row chunks give exactly the outputs and memory of the same chunks
    copied back into whole ``[M, hidden]`` blocks after every step (the layout before)."""
    torch.manual_seed(2)
    net = CoordinateLSTM(LSTMConfig())
    n, d = 3, 100
    monkeypatch.setattr(policy_mod, "ROW_CHUNK", 64)
    mem_c = mem_w = net.initial_hidden(n * d, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        for _ in range(4):
            g = torch.randn(n * d)
            out_c, mem_c = net(g, mem_c, n)
            out_w, mem_w = net(g, mem_w, n)
            mem_w = join_rows(mem_w)  # re-split from whole tensors at every step
            assert not isinstance(mem_c[0], torch.Tensor) and len(mem_c) == 4  # chunks: 64, 64, 64, 108 rows
            assert torch.equal(out_c, out_w)
            assert all(torch.equal(a, b) for a, b in zip(join_rows(mem_c), mem_w))

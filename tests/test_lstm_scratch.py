"""The coordinatewise LSTM's reused temporaries (``CoordinateLSTM._scratch``): without gradients its step writes
its temporaries into tensors kept between calls — bitwise the numbers of fresh ones, never in the memory it
returns — and with gradients (meta-training) it keeps every temporary of the graph."""

from __future__ import annotations

import pytest
import torch

from l2o_gym.agents.lstm import LSTMConfig
from l2o_gym.agents.lstm.policy import CoordinateLSTM
from l2o_gym.policy import ROW_CHUNK


def _net(**kw) -> CoordinateLSTM:
    torch.manual_seed(0)
    net = CoordinateLSTM(LSTMConfig(**kw))
    with torch.no_grad():  # non-trivial biases and read-out
        for b in net.biases:
            b.add_(0.3 * torch.randn_like(b))
        net.out.weight.mul_(10.0)
    return net


def _inputs(rows: int, hidden: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(rows, generator=g, dtype=dtype) * torch.logspace(-6, 2, rows, dtype=dtype)
    memory = tuple(torch.randn(rows, hidden, generator=g, dtype=dtype) for _ in range(4))
    return grad, memory


def _fresh(net, grad, memory, n=1):
    with torch.enable_grad():
        out, new = net._step(grad, memory, n)
    return out.detach(), tuple(t.detach() for t in new)


@pytest.mark.parametrize("rows", [ROW_CHUNK, 1000, 1])
def test_reused_temporaries_give_the_numbers_of_fresh_ones(rows):
    net = _net()
    with torch.no_grad():
        first = net._step(*_inputs(rows, 20, 1), 1)
        kept = (first[0].clone(), tuple(t.clone() for t in first[1]))
        second = net._step(*_inputs(rows, 20, 2), 1)  # the same scratch tensors, other numbers
    assert net._scratch_bufs, "the no-grad step reused no temporaries"
    for got, seed in ((first, 1), (second, 2)):
        want = _fresh(net, *_inputs(rows, 20, seed))
        assert torch.equal(got[0], want[0]) and all(torch.equal(a, b) for a, b in zip(got[1], want[1]))
    # the first call's output and memory are its own: the second call overwrote none of them
    assert torch.equal(first[0], kept[0]) and all(torch.equal(a, b) for a, b in zip(first[1], kept[1]))
    scratch = {t.data_ptr() for t in net._scratch_bufs.values()}
    assert not scratch & {t.data_ptr() for t in (*first[1], *second[1], first[0], second[0])}


def test_meta_training_keeps_its_graph_and_no_scratch():
    net = _net()
    grad, memory = _inputs(64, 20, 3)
    out, new = net._step(grad, memory, 1)
    assert out.requires_grad and not hasattr(net, "_scratch_bufs")
    out.sum().backward()
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in net.weights)


def test_global_cells_over_more_than_a_chunk_take_fresh_temporaries():
    net = _net(global_cells=3)
    grad, memory = _inputs(ROW_CHUNK + 2, 20, 5)  # every row at once: no scratch of that size is kept
    with torch.no_grad():
        got = net._step(grad, memory, 2)
    want = _fresh(net, grad, memory, 2)
    assert not getattr(net, "_scratch_bufs", None)
    assert torch.equal(got[0], want[0]) and all(torch.equal(a, b) for a, b in zip(got[1], want[1]))

"""Regression tests for defects found in the final review of the day's changes."""

from __future__ import annotations

import torch

from l2o_gym.policy import rowwise, rowwise_carry


def test_rowwise_carry_with_an_empty_carry_is_rowwise():
    # ``carry: tuple[Tensor, ...]`` admits ``()`` (a stateless fn); it raised IndexError in chunk_rows
    x = torch.randn(20, 3)

    def fn(x: torch.Tensor) -> tuple[torch.Tensor]:
        return (2 * x,)

    with torch.no_grad():
        (out,), carry = rowwise_carry(fn, (x,), (), chunk=4)
        assert torch.equal(out, rowwise(fn, x, chunk=4)[0])
        assert len(carry) == 5 and all(c == () for c in carry)
        (again,), carry = rowwise_carry(fn, (x,), carry, chunk=4)  # chunks of no carry, passed back in
        assert torch.equal(again, out) and all(c == () for c in carry)

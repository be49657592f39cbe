"""What every agent's training run shares: the training record stored in checkpoints."""

from __future__ import annotations

from typing import Any


def steps_to_reach(curve: list[list[float]], target: float) -> int | None:
    """Env steps of the first point of ``curve`` (``[[env_steps, val_final], …]``) at or below ``target``."""
    for steps, value in curve:
        if value <= target:
            return int(steps)
    return None


def training_record(
    curve: list[list[float]], env_steps_total: int, baseline: tuple[str, float], first_order: tuple[str, float]
) -> dict[str, Any]:
    """The training summary stored in checkpoints under ``"training"`` (same schema as the PPO checkpoints).

    Args:
        curve: ``[[env_steps, val_final], …]`` after every iteration (deterministic global policy on ``val``).
        env_steps_total: env steps (sampled transitions) of the whole run.
        baseline: ``(name, val_final)`` of the best tuned baseline of the run (any of its ``baselines``).
        first_order: ``(name, val_final)`` of the best tuned first-order baseline (:data:`FIRST_ORDER`).
    """
    return {
        "env_steps_total": int(env_steps_total),
        "baseline": {"name": baseline[0], "val_final": float(baseline[1])},
        "env_steps_to_reach_baseline": steps_to_reach(curve, baseline[1]),
        "first_order_baseline": {"name": first_order[0], "val_final": float(first_order[1])},
        "env_steps_to_reach_first_order": steps_to_reach(curve, first_order[1]),
        "curve": [[int(s), float(v)] for s, v in curve],
    }

"""Checks from session 12's review."""
from __future__ import annotations

import argparse
import dataclasses

from l2o_gym.experiments import cli


@dataclasses.dataclass
class _Cfg:
    """A config whose ``scale`` is declared None and resolved after construction.

    Attributes:
        scale: step size; None: the env's.
        width: hidden units.
    """

    scale: float | None = None
    width: int = 4

    def __post_init__(self) -> None:
        if self.scale is None:
            self.scale = 0.25


def _help_of(parser: argparse.ArgumentParser, flag: str) -> str:
    action = next(a for a in parser._actions if flag in a.option_strings)
    return action.help or ""


def test_help_shows_the_declared_none_not_the_resolved_value() -> None:
    parser = argparse.ArgumentParser()
    args = cli.add_config_args(parser, _Cfg)
    assert "(default: None)" in _help_of(parser, "--scale")
    assert "(default: 4)" in _help_of(parser, "--width")
    # only the help text changed: absent → the config's own resolution, a value → that value
    assert args.build(parser.parse_args([])).scale == 0.25
    assert args.build(parser.parse_args(["--scale", "0.5"])).scale == 0.5


def test_train_sb3_action_scale_help_says_the_env_decides() -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("train_sb3", Path(__file__).parents[1] / "scripts" / "train_sb3.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    parser, _ = mod.build_parser()
    text = _help_of(parser, "--action-scale")
    assert "ENV_TABLE" in text and "(default: None)" in text

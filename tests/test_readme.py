"""Every ```python block of README.md runs as written (a block that is not meant to run uses another fence
language, e.g. ```bash or ```text)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, source)`` of every block fenced as ```python, in order."""
    out = []
    for m in _FENCE.finditer(text):
        if m.group(1).strip() == "python":
            out.append((text.count("\n", 0, m.start()) + 1, m.group(2)))
    return out


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4, "README.md lost its code examples (or their ```python fences)"


def test_block_extraction():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = 2\n")]


@pytest.mark.parametrize("line,source", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a block writes lands in a temporary folder
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CI machines; README figures do not depend on it here
    try:
        exec(compile(source, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(threads)

"""The package layers: imports only go downward (foundation → envs → agents → experiments/scripts).

Every ``import`` statement of every module is checked, including those inside functions, by parsing the
source with :mod:`ast` (nothing is imported).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: source folder -> the module prefix it installs as.
PACKAGES = {"l2o_gym": "l2o_gym", "envs": "l2o_gym.envs", "agents": "l2o_gym.agents"}

#: agent kinds: each may import the shared agent modules but not another kind.
AGENT_KINDS = ("l2o_gym.agents.lstm", "l2o_gym.agents.gps", "l2o_gym.agents.sb3")

LAYERS = ("foundation", "envs", "agents", "experiments")


def layer(module: str) -> str:
    for prefix, name in (("l2o_gym.experiments", "experiments"), ("l2o_gym.agents", "agents"), ("l2o_gym.envs", "envs")):
        if module == prefix or module.startswith(prefix + "."):
            return name
    return "foundation"


def kind(module: str) -> str | None:
    return next((k for k in AGENT_KINDS if module == k or module.startswith(k + ".")), None)


def modules() -> list[tuple[str, Path]]:
    out = []
    for folder, prefix in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([prefix, *parts]), path))
    return out


def imported(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in ALL]
            found += [(node.lineno, t) for t in subs]
            if len(subs) < len(node.names):  # names defined in the module itself
                found.append((node.lineno, target))
    return [(ln, t) for ln, t in found if t == "l2o_gym" or t.startswith("l2o_gym.")]


ALL = {m for m, _ in modules()}


def test_modules_found():
    assert {"l2o_gym.core", "l2o_gym.registry", "l2o_gym.envs.env", "l2o_gym.agents.baselines"} <= ALL


def test_imports_only_go_downward():
    bad = []
    for module, path in modules():
        src_layer = LAYERS.index(layer(module))
        for lineno, target in imported(path, module):
            if target == "l2o_gym":
                if layer(module) != "experiments" and module != "l2o_gym":
                    bad.append(f"{path.relative_to(ROOT)}:{lineno} imports the package root 'l2o_gym'")
                continue
            if LAYERS.index(layer(target)) > src_layer:
                bad.append(f"{path.relative_to(ROOT)}:{lineno} ({layer(module)}) imports {target} ({layer(target)})")
            k_src, k_dst = kind(module), kind(target)
            if k_dst is not None and k_src is not None and k_src != k_dst:
                bad.append(f"{path.relative_to(ROOT)}:{lineno}: agent kind {k_src} imports another kind, {target}")
            if k_dst is not None and k_src is None and layer(module) == "agents" and not module.startswith("l2o_gym.agents.pretrained"):
                if module != "l2o_gym.agents":
                    bad.append(f"{path.relative_to(ROOT)}:{lineno}: shared agent module imports agent kind {target}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("statement", ["import l2o_gym", "import l2o_gym.envs", "import l2o_gym.agents",
                                       "import gymnasium as gym, l2o_gym; gym.make('l2o/Quadratic-v0')"])
def test_no_sb3_on_import(statement):
    code = f"import sys; {statement}; print('stable_baselines3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", f"{statement!r} imported stable_baselines3"

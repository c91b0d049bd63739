"""Every ``torch.load`` in the repository passes ``weights_only=True`` (issue 14, finding 4).

``pyproject.toml`` allows torch versions (< 2.6) where ``torch.load`` unpickles anything by default,
and torch >= 2.6 goes back to that with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``: a weights file
given to a bundle, the Deploy app or a benchmark would run code. Checked on the source's syntax
tree (comments and strings do not count), over every Python file of the repository.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"build", "dist", "__pycache__", "node_modules"}


def python_files() -> list[Path]:
    """The repository's Python files; hidden folders (.git, the side venvs .venv-*) are not entered."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.startswith(".")]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return found


def unsafe_loads(source: str) -> list[int]:
    """Line numbers of ``torch.load(...)`` calls without ``weights_only=True``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                lines.append(node.lineno)
    return lines


def test_every_torch_load_passes_weights_only():
    files = python_files()
    assert any(p.parts[-2:] == ("deploy_app", "app.py") for p in files)  # the walk reaches the apps
    found = {str(p.relative_to(ROOT)): unsafe_loads(p.read_text()) for p in files}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_check_sees_unsafe_calls():
    assert unsafe_loads("import torch\ntorch.load('m.pt')\ntorch.load(p, weights_only=False)\n") == [2, 3]
    assert unsafe_loads("torch.load(p, map_location='cpu', weights_only=True)\n# torch.load(x)\n") == []

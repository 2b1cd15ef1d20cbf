"""No code path may unpickle: user-supplied tensors are read with safetensors only."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
BANNED_MODULES = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve"}


def _violations(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES
        ):
            found.append(node.module or "")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "load"
            and isinstance(node.value, ast.Name)
            and node.value.id == "torch"
        ):
            found.append("torch.load")
        elif isinstance(node, ast.keyword) and node.arg == "weights_only":
            found.append("weights_only=")
    return found


def test_scanner_catches_what_it_should() -> None:
    assert _violations("import pickle\nimport torch\ntorch.load('x', weights_only=False)") == [
        "pickle",
        "torch.load",
        "weights_only=",
    ]


def test_app_never_unpickles() -> None:
    files = sorted(APP.rglob("*.py"))
    assert len(files) > 10
    bad = {str(f.relative_to(APP)): v for f in files if (v := _violations(f.read_text()))}
    assert bad == {}

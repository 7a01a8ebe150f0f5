"""Packaging and architecture rules that keep the package installable beside anyone's torch and readable.

* ``import centerloss`` and ``centerloss --help`` import no torch, numpy, OpenCV or matplotlib;
  ``from centerloss import CenterLoss, JointLoss`` imports torch but never OpenCV or matplotlib.
* The core dependencies are loose lower bounds (torch has no pin and no upper cap); heavy parts are extras.
* The library core (losses, models, eval maths) never imports the engine or a CLI.
* Exactly one place in ``src/`` calls ``.backward()``, and no function body is longer than 80 lines.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "centerloss"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    return {m.split(".")[0] for m in out}


def test_help_and_import_are_light() -> None:
    mods = _modules_after("import centerloss, centerloss.cli; centerloss.cli.build_parser().format_help()")
    assert not mods & {"torch", "numpy", "cv2", "matplotlib", "PIL", "yaml"}, mods & {"torch", "numpy", "cv2"}
    mods = _modules_after("from centerloss import CenterLoss, JointLoss; import centerloss.engine.trainer")
    assert "torch" in mods and not mods & {"cv2", "matplotlib"}


def test_help_runs_without_a_traceback() -> None:
    r = subprocess.run([sys.executable, "-m", "centerloss.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "Exit codes" in r.stdout


def test_dependencies_are_loose_and_heavy_parts_are_extras() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in deps}
    assert names == {"torch", "numpy", "pillow", "safetensors", "pyyaml", "tqdm"}
    for d in deps:
        assert "==" not in d and "<" not in d, f"{d}: an exact pin or an upper cap blocks people's own installs"
    extras = meta["optional-dependencies"]
    assert {"align", "plots", "faiss", "tensorboard", "onnx", "all", "dev"} <= set(extras)
    assert any(d.startswith("opencv") for d in extras["align"]) and "mtcnn==1.0.0" in extras["align"]
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


@pytest.mark.parametrize("pkg", ["losses", "models", "utils"])
def test_library_core_never_imports_the_engine_or_a_cli(pkg: str) -> None:
    for f in (SRC / pkg).rglob("*.py"):
        bad = {m for m in _imports(f) if "engine" in m or m.endswith("cli") or "experiments" in m}
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_eval_maths_never_imports_the_engine() -> None:
    for name in ("metrics.py", "verification.py", "identification.py", "protocols.py", "compactness.py"):
        bad = {m for m in _imports(SRC / "eval" / name) if "engine" in m or "experiments" in m}
        assert not bad, f"eval/{name} imports {bad}"


def test_one_backward_call_and_short_functions() -> None:
    calls, long = [], []
    for f in sorted(SRC.rglob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward":
                calls.append(f"{f.relative_to(SRC)}:{node.lineno}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                n = (body[-1].end_lineno - body[0].lineno + 1) if body else 0
                if n > 80:
                    long.append(f"{f.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert calls == [c for c in calls if c.startswith("engine/trainer.py")] and len(calls) == 1, calls
    assert not long, long

"""README.md's results tables are what the committed report and benchmark JSON files give (never typed in)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_are_regenerated_from_the_json() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "make_readme.py"), "--check"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_a_table_without_its_source_says_not_measured_and_shows_no_figure(tmp_path, monkeypatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_readme", ROOT / "docs" / "make_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "BENCH", tmp_path / "benchmarks" / "results")
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    new, missing = mod.render("x\n<!-- BEGIN onnx -->\n| 12.3 img/s |\n<!-- END onnx -->\ny\n")
    assert missing == ["onnx (benchmarks/results/onnx_cpu.md)"]
    assert new == ("x\n<!-- BEGIN onnx -->\n*Not measured yet: `benchmarks/results/onnx_cpu.md` does not exist "
                   "(`python benchmarks/bench_onnx.py --model M` produces it).*\n<!-- END onnx -->\ny\n")


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = text.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci" / "run").read_text()

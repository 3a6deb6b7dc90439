"""The benchmark scripts are run by hand, some only on a CPU not measured yet (`make bench-cpu`), so
a rename in the package must not leave them broken until then: each one imports and parses its flags."""

from __future__ import annotations

import runpy
import subprocess
import sys

import pytest
from support import REPO

SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_each_benchmark_script_imports_and_prints_its_usage(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(script), run_name="__main__")
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_the_new_cpu_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "new_cpu.sh")]).returncode == 0


def test_the_scripts_are_found():
    assert len(SCRIPTS) >= 10

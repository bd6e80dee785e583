"""No unused imports or variables, no undefined names (pyflakes rules via ruff) in the shipped code."""

import shutil
import subprocess
import sys
from pathlib import Path

from paths import ROOT


def test_pyflakes_rules_pass():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extra"
    proc = subprocess.run([ruff, "check", "--select", "F", "--no-cache", "ptq_core", "ptqflow", "flows", "tasks",
                           "deployments", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]

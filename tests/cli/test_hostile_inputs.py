"""Every bad input in ``hostile_cases.CASES`` ends in one clean line and exit 2 with nothing written;
the accepted ones give a model onnxruntime runs. The table in docs/hostile-inputs.md is generated from the same cases."""

from __future__ import annotations

import re
from pathlib import Path

import onnxruntime as ort
import pytest
from hostile_cases import CASES, CLASSES, table
from paths import ROOT

from ptqflow.cli import main


def _snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _run(case, tmp_path, capsys) -> tuple[int, str, str, dict]:
    flags = case.build(tmp_path)
    before = _snapshot(tmp_path)
    rc = main(["convert", *flags] + ([] if case.flow else ["--no-flow"]))
    err = capsys.readouterr().err.strip()
    output = next(f.split("=", 1)[1] for f in flags if f.startswith("--outputFile="))
    return rc, err, output, before


def _changed(tmp_path: Path, before: dict) -> list[Path]:
    """Files created or rewritten by the run (outputs, temporary files), anywhere under the test folder."""
    after = _snapshot(tmp_path)
    return sorted(p for p, stamp in after.items() if before.get(p) != stamp)


@pytest.fixture
def flow_harness(request):
    if request.node.callspec.params["case"].flow:
        request.getfixturevalue("prefect_harness")


@pytest.mark.parametrize("case", [c for c in CASES if not c.accepted], ids=lambda c: f"{c.klass}: {c.name}")
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys, flow_harness):
    rc, err, output, before = _run(case, tmp_path, capsys)
    assert rc == 2, err
    assert err.startswith("ptq: error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    for needle in case.expect:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert _changed(tmp_path, before) == []


@pytest.mark.parametrize("case", [c for c in CASES if c.accepted], ids=lambda c: f"{c.klass}: {c.name}")
def test_accepted_odd_input_gives_a_model_onnxruntime_runs(case, tmp_path, capsys):
    rc, err, output, _ = _run(case, tmp_path, capsys)
    assert rc == 0, err
    out = Path(output).with_name(Path(output).name + ".onnx")
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_every_class_has_cases_and_the_readme_table_matches_them():
    assert {c.klass for c in CASES} == set(CLASSES)
    page = (ROOT / "docs" / "hostile-inputs.md").read_text()
    block = re.search(r"<!-- hostile-table:start.*?-->\n(.*?)\n<!-- hostile-table:end -->", page, re.S)
    assert block, "docs/hostile-inputs.md has the generated bad-input table"
    assert block.group(1).strip() == table().strip(), "regenerate with: python tests/hostile_cases.py"

"""`ptq convert` through the flow with debug_info_save_path on the digits example: reports, page, artifacts."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")
from paths import ROOT


def _debug_config(tmp_path) -> Path:
    text = (ROOT / "examples" / "configs" / "full_quant.cfg").read_text()
    text = text.replace("calibrate_path=input:examples/digits/bin", f"calibrate_path=input:{ROOT / 'examples/digits/bin'}")
    text = text.replace("calibrate_size=64", "calibrate_size=6")
    text = text.replace("[common_quant_param]", f"[common_quant_param]\ndebug_info_save_path={tmp_path / 'dbg'}", 1)
    text += "\n[ptqflow]\nlatency_guard=false\n"  # int8 whatever this machine's timings say: quant_param has rows
    cfg = tmp_path / "full.cfg"
    cfg.write_text(text)
    return cfg


def test_convert_with_debug_writes_every_report_and_publishes_the_ranking(tmp_path, capsys):
    from prefect.artifacts import Artifact

    from ptqflow.cli import main

    cfg = _debug_config(tmp_path)
    rc = main(["convert", "--fmk=ONNX", f"--modelFile={ROOT / 'examples/digits/digits_cnn.onnx'}",
               f"--outputFile={tmp_path / 'out'}", f"--configFile={cfg}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "debug reports (6 round(s)" in out and str(tmp_path / "dbg") in out
    names = {p.name for p in (tmp_path / "dbg").iterdir()}
    assert {f"report_{r}.csv" for r in range(6)} | {"output_summary.csv", "quant_param.csv", "report.parquet",
                                                      "debug_report.html"} <= names
    summary = (tmp_path / "dbg" / "output_summary.csv").read_text().splitlines()
    assert len(summary) == 7 and all(line.split(",")[1] == "logits" for line in summary[1:])
    ranking = Artifact.get("debug-ranking")
    assert ranking is not None and "conv" in str(ranking.data)
    page = Artifact.get("debug-summary")
    assert page is not None and "Debug report" in str(page.data)


def test_debug_reports_reuse_the_runs_calibration_rounds_without_rehashing_the_data(tmp_path, monkeypatch):
    """The calibration set is hashed once per run (the cache key), not again for the debug step."""
    from ptqflow.flows import quantize as flow_module
    from ptqflow.tasks import full

    calls = []
    original = full.data_digest
    monkeypatch.setattr(full, "data_digest", lambda *a: calls.append(1) or original(*a))
    summary = flow_module.quantize(str(ROOT / "examples/digits/digits_cnn.onnx"), str(_debug_config(tmp_path)),
                                   str(tmp_path / "out"))
    assert summary.debug and (tmp_path / "dbg" / "report_5.csv").exists()
    assert len(calls) == 1

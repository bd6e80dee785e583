"""Debug reports (debug_info_save_path): converter_lite's files and columns, statistics, Parquet twins, ranking."""

from __future__ import annotations

import re
from pathlib import Path

import debug_models as dm
import numpy as np
import onnx
import pytest
from modelgen import mlp_model, save, write_config

from ptq_core.debug import stats
from ptq_core.debug.rank import (
    iter_report_rounds,
    propose_skip_line,
    rank_nodes,
    rank_rows,
)
from ptq_core.debug.writer import fmt

ROUNDS = 5
REPORT_HEADER = (",NodeName,NodeType,TensorName,InOutFlag,DataTypeFlag,TensorTypeFlag,Min,Q1,Median,Q3,MAX,Mean,Var,"
                 "Sparsity,Clip,CosineSimilarity,")
SUMMARY_HEADER = "Round,TensorName,CosineSimilarity,"
PARAM_HEADER = "NodeName,NodeType,TensorName,ElementsNum,Dims,Scale,ZeroPoint,Bits,CorrectionVar,CorrectionMean,"


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    """The detection head quantized with debug on (serial path): folder, model path, calibration folder."""
    from ptq_core.convert import convert_direct

    tmp = tmp_path_factory.mktemp("det")
    model = tmp / "det.onnx"
    onnx.save(dm.detection_head_model(), str(model))
    bins = dm.write_bins(tmp / "bins", (1, 3, 16, 16), ROUNDS)
    debug = tmp / "debug" / "nested"  # created if missing
    cfg = dm.full_quant_config(tmp / "det.cfg", "x", bins, ROUNDS, debug)
    summary = convert_direct(model, cfg, tmp / "out")
    return {"dir": debug, "model": model, "bins": bins, "cfg": cfg, "summary": summary, "tmp": tmp}


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_files_are_named_as_the_seed(det):
    names = {p.name for p in det["dir"].iterdir()}
    assert {f"report_{r}.csv" for r in range(ROUNDS)} <= names
    assert {"output_summary.csv", "quant_param.csv", "report.parquet", "output_summary.parquet",
            "quant_param.parquet", "debug_report.html"} <= names
    assert sorted(p.name for p in (det["dir"] / "report.parquet").iterdir()) == sorted(f"Round={r}" for r in range(ROUNDS))
    assert det["summary"].debug["folder"] == str(det["dir"].resolve())


def test_csv_headers_and_row_layout_match_converter_lite(det):
    report = _lines(det["dir"] / "report_0.csv")
    assert report[0] == REPORT_HEADER
    for i, line in enumerate(report[1:]):
        cells = line.split(",")
        assert line.endswith(",") and len(cells) == 18 and cells[0] == str(i)
        assert cells[4] in ("Input", "Output") and cells[5] in ("Origin", "Dequant") and cells[6] in ("Weight", "Activation")
    assert _lines(det["dir"] / "output_summary.csv")[0] == SUMMARY_HEADER
    params = _lines(det["dir"] / "quant_param.csv")
    assert params[0] == PARAM_HEADER
    assert all(re.fullmatch(r"[^,]+,[^,]+,[^,]+,-?\d+,(-?\d+ )+,[^,]+,-?\d+,(8|16|32),[^,]+,[^,]+,", p) for p in params[1:])


def test_output_summary_lists_each_model_output_per_round(det):
    rows = [line.split(",") for line in _lines(det["dir"] / "output_summary.csv")[1:]]
    assert [(int(r[0]), r[1]) for r in rows] == [(k, t) for k in range(ROUNDS) for t in ("det0", "det1")]
    assert all(0.99 < float(r[2]) <= 1.0 for r in rows)


def test_origin_input_row_equals_numpy_statistics_of_the_sample(det):
    """Row 0 of round 2 is the FP32 model input: the calibration sample read back with NumPy."""
    x = np.fromfile(sorted(det["bins"].iterdir())[2], np.float32)
    cells = _lines(det["dir"] / "report_2.csv")[1].split(",")
    assert cells[1:7] == ["stem", "Conv", "x", "Input", "Origin", "Activation"]
    s = np.sort(x[1:])
    n = x.size
    ref = [x.min(), s[n // 4 - 1], s[n // 2 - 1], s[3 * n // 4 - 1], x.max(), np.float32(x.astype(np.float64).sum()) / n,
           np.std(x.astype(np.float64)), np.mean(x == 0), 0.0, 1.0]
    assert cells[7:17] == [fmt(np.float32(v)) for v in ref[:9]] + ["1"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 1000])
def test_statistics_match_a_numpy_reference(n):
    rng = np.random.default_rng(n)
    x = rng.normal(0, 3, n).astype(np.float32)
    x[rng.random(n) < 0.2] = 0
    got = stats.tensor_stats(x)
    rest = np.sort(x[1:])
    q = [rest[k - 1] if k > 0 else x[0] for k in (n // 4, n // 2, 3 * n // 4)]
    f = x.astype(np.float64)
    assert got["Min"] == x.min() and got["MAX"] == x.max()
    assert [got["Q1"], got["Median"], got["Q3"]] == q
    assert got["Mean"] == pytest.approx(f.mean(), rel=1e-6, abs=1e-7)
    assert got["Var"] == pytest.approx(f.std(), rel=1e-5, abs=1e-7)  # population std, as converter_lite
    assert got["Sparsity"] == pytest.approx(np.mean(x == 0))
    assert all(v.dtype == np.float32 for v in got.values())


def test_clip_is_the_share_of_origin_values_outside_the_dequantized_range():
    origin = np.array([-5, -1, 0, 1, 2, 9], np.float32)
    dequant = np.array([-1, 0, 0, 1, 2, 2], np.float32)
    assert stats.clip_rate(origin, dequant) == np.float32(2 / 6)


def test_cosine_edge_cases_follow_converter_lite():
    a = np.array([1.0, 2.0, 3.0])
    assert stats.cosine(a, 2 * a) == pytest.approx(1.0)
    assert stats.cosine(np.zeros(3), np.zeros(3)) == 1.0  # both norms ~0
    assert stats.cosine(a, np.zeros(3)) == 0.0  # one norm ~0
    assert stats.cosine(a, np.array([1.0, np.nan, 3.0])) == 0.0
    assert stats.cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 0.0


def test_parquet_twins_equal_the_csvs(det):
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(det["dir"] / "report.parquet"), format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.schema.field("Min").type == "float" and table.schema.field("CosineSimilarity").type == "double"
    for r in range(ROUNDS):
        part = table.filter(ds.field("Round") == r).sort_by("Index").to_pylist()
        csv = [line.split(",")[:-1] for line in _lines(det["dir"] / f"report_{r}.csv")[1:]]
        assert len(part) == len(csv)
        for row, cells in zip(part, csv):
            assert [str(row["Index"]), row["NodeName"], row["NodeType"], row["TensorName"], row["InOutFlag"],
                    row["DataTypeFlag"], row["TensorTypeFlag"]] == cells[:7]
            stat = [row[c] for c in ("Min", "Q1", "Median", "Q3", "MAX", "Mean", "Var", "Sparsity", "Clip",
                                     "CosineSimilarity")]
            assert [fmt(v) for v in stat] == cells[7:]
    frame = pd.read_parquet(det["dir"] / "report.parquet")
    assert len(frame) == table.num_rows
    glob = str(det["dir"] / "report.parquet" / "*" / "*.parquet")
    count, rounds = duckdb.sql(f"SELECT count(*), count(DISTINCT Round) FROM read_parquet('{glob}', "
                               "hive_partitioning=true)").fetchall()[0]
    assert (count, rounds) == (table.num_rows, ROUNDS)
    summary = pd.read_parquet(det["dir"] / "output_summary.parquet")
    csv = [line.split(",") for line in _lines(det["dir"] / "output_summary.csv")[1:]]
    assert [fmt(v) for v in summary["CosineSimilarity"]] == [c[2] for c in csv]
    params = pd.read_parquet(det["dir"] / "quant_param.parquet")
    assert len(params) == len(_lines(det["dir"] / "quant_param.csv")) - 1


def test_ranking_names_the_planted_concats_first(det):
    ranked = rank_nodes(det["dir"])
    assert {d.node for d in ranked[:2]} == {"concat_0", "concat_1"}
    assert all(d.range_bits > 10 for d in ranked[:2]) and ranked[2].score < 0.1
    assert propose_skip_line(ranked) in ("skip_quant_node=concat_0,concat_1", "skip_quant_node=concat_1,concat_0")


def test_a_planted_cosine_drop_ranks_first():
    """Without merge ops: the node whose output cosine falls below its input's is named, not those after it."""
    def round_rows(drop_node_cos):
        rows = {k: [] for k in ("Index", "NodeName", "NodeType", "TensorName", "InOutFlag", "DataTypeFlag",
                                "TensorTypeFlag", "Min", "MAX", "Clip", "CosineSimilarity")}
        chain = [("a", 0.9999, 0.9999), ("bad", 0.9999, drop_node_cos), ("c", drop_node_cos, drop_node_cos - 0.001)]
        for i, (node, cin, cout) in enumerate(chain):
            for inout, cos in (("Input", cin), ("Output", cout)):
                for flag, c in (("Origin", 1.0), ("Dequant", cos)):
                    for key, v in zip(rows, (i, node, "Conv", f"{node}_{inout}", inout, flag, "Activation", -1.0,
                                             1.0, 0.0, c)):
                        rows[key].append(v)
        return rows
    ranked = rank_rows(iter([round_rows(0.90), round_rows(0.92)]))
    assert ranked[0].node == "bad" and ranked[0].cosine_drop == pytest.approx(0.9999 - 0.91)
    assert ranked[1].node == "c"


def test_rounds_are_read_back_one_partition_at_a_time(det):
    sizes = [len(r["NodeName"]) for r in iter_report_rounds(det["dir"])]
    assert sizes == [len(_lines(det["dir"] / f"report_{r}.csv")) - 1 for r in range(ROUNDS)]


def test_a_round_hands_back_only_small_results(det, tmp_path):
    """Each round writes its own files; what it returns holds no tensors and no rows (memory stays flat)."""
    from ptq_core.debug import driver

    origin, quant = driver.debug_models(_cfg(det), det["model"], det["summary"].output)
    job = driver.prepare_debug(origin, quant, tmp_path / "work")
    rnd = driver.debug_rounds(_cfg(det), origin, _inputs(), tmp_path)[0]
    outcome = driver.run_round(job, rnd, str(tmp_path / "out"))
    assert (tmp_path / "out" / "report_0.csv").exists() and outcome.rows > 0
    assert outcome.outputs == [(0, "det0", pytest.approx(outcome.outputs[0][2])), (0, "det1", pytest.approx(outcome.outputs[1][2]))]
    assert all(len(h["origin"]["counts"]) == stats.HIST_BINS for h in outcome.worst)
    assert not any(isinstance(v, np.ndarray) for h in outcome.worst for v in h.values())


def _cfg(det):
    from ptq_core.config import load_config

    return load_config(det["cfg"])


def _inputs():
    from ptq_core.onnxgraph.session import InputOptions

    return InputOptions()


def test_rerun_into_the_same_folder_works_and_drops_stale_rounds(det, tmp_path):
    from ptq_core.convert import convert_direct

    cfg = dm.full_quant_config(tmp_path / "c.cfg", "x", det["bins"], 2, tmp_path / "dbg")
    convert_direct(det["model"], cfg, tmp_path / "a")
    (tmp_path / "dbg" / "report_7.csv").write_text("stale")
    convert_direct(det["model"], cfg, tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "dbg").glob("report_*.csv")) == ["report_0.csv", "report_1.csv"]
    assert (tmp_path / "dbg" / "report_0.csv").stat().st_mode & 0o200  # left writable, unlike converter_lite


def test_weight_quant_without_data_writes_one_random_round(tmp_path):
    from ptq_core.convert import convert_direct

    model = save(mlp_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=4\n"
                       f"min_quant_weight_size=0\ndebug_info_save_path={tmp_path / 'dbg'}\n")
    convert_direct(model, cfg, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "dbg").glob("report_*.csv")) == ["report_0.csv"]
    rows = [line.split(",") for line in _lines(tmp_path / "dbg" / "report_0.csv")[1:]]
    weight = [r for r in rows if r[3] == "w1" and r[5] == "Dequant"]
    assert len(weight) == 1 and weight[0][6] == "Weight" and float(weight[0][-2]) < 1.0  # 4-bit w1 differs from FP32
    params = [line.split(",") for line in _lines(tmp_path / "dbg" / "quant_param.csv")[1:]]
    assert {(p[0], p[2], p[7]) for p in params} == {("fc1", "w1", "4"), ("fc2", "w2", "4")}
    assert sum(1 for p in params if p[0] == "fc1") == 256  # one row per channel (MatMul B: N axis)


def test_dynamic_quant_reports_the_replaced_matmuls(tmp_path):
    from ptq_core.convert import convert_direct

    model = save(mlp_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "d.cfg", "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"
                       f"debug_info_save_path={tmp_path / 'dbg'}\n")
    convert_direct(model, cfg, tmp_path / "out")
    rows = [line.split(",") for line in _lines(tmp_path / "dbg" / "report_0.csv")[1:]]
    assert {r[1] for r in rows} == {"fc1", "act", "fc2"}
    out = [r for r in rows if r[1] == "fc2" and r[4] == "Output" and r[5] == "Dequant"]
    assert 0.99 < float(out[0][-2]) < 1.0


def test_ptq_report_prints_the_ranking_and_skip_line(det, capsys):
    from ptqflow.cli import main

    assert main(["report", str(det["dir"]), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "concat_" in out and re.search(r"^skip_quant_node=concat_\d,concat_\d$", out, re.M)


def test_ptq_report_on_a_folder_without_reports_is_a_one_line_error(tmp_path, capsys):
    from ptqflow.cli import main

    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptq: error:") and "report.parquet" in err and "\n" not in err


def test_a_debug_path_that_is_a_file_fails_before_any_work(tmp_path):
    from ptq_core.convert import convert_direct
    from ptq_core.errors import ConfigError

    (tmp_path / "taken").write_text("x")
    model = save(mlp_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n"
                       f"debug_info_save_path={tmp_path / 'taken'}\n")
    with pytest.raises(ConfigError, match=r"w\.cfg: \[common_quant_param\] debug_info_save_path=.*taken"):
        convert_direct(model, cfg, tmp_path / "out")
    assert not (tmp_path / "out.onnx").exists()


def test_same_inputs_give_byte_identical_reports(det, tmp_path):
    from ptq_core.convert import convert_direct

    text = det["cfg"].read_text().replace(str(det["dir"]), str(tmp_path / "again"))
    cfg = tmp_path / "det.cfg"  # same file name: the page title names the config
    cfg.write_text(text)
    convert_direct(det["model"], cfg, tmp_path / "out")
    first = {p.relative_to(det["dir"]): p.read_bytes() for p in det["dir"].rglob("*") if p.is_file()}
    second = {p.relative_to(tmp_path / "again"): p.read_bytes() for p in (tmp_path / "again").rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert [str(k) for k in sorted(first) if first[k] != second[k]] == []  # names the file that differs


def test_exposed_fp32_model_follows_the_tensor_set_not_the_model_alone(tmp_path):
    """The FP32 model's exposed tensors depend on the quantized model it is paired with: one work folder,
    one FP32 model, two tensor sets must give two files, each exposing its own set."""
    from onnx import TensorProto, helper

    from ptq_core.debug import driver

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="r"), helper.make_node("Neg", ["a"], ["b"], name="n"),
         helper.make_node("Abs", ["b"], ["y"], name="s")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    first = driver._exposed(model, ("a",), tmp_path, "origin")
    second = driver._exposed(model, ("a", "b"), tmp_path, "origin")
    assert first != second
    assert [o.name for o in onnx.load(second).graph.output] == ["y", "a", "b"]


def test_the_page_title_names_the_model_the_mode_and_the_config(det):
    page = (det["dir"] / "debug_report.html").read_text()
    title = page.split("<title>", 1)[1].split("</title>", 1)[0]
    assert "det.onnx" in title and "FULL_QUANT" in title and "det.cfg" in title
    assert "UTC" not in title  # no clock time: the same inputs give the same bytes


@pytest.fixture(scope="module")
def det_vnni(tmp_path_factory):
    """The detection head with full-range int8 weights (int8_form=vnni): on a CPU without VNNI onnxruntime's
    kernels saturate, so the model as run differs from its exact math (output cosine 0.993 against 0.9998
    on the AVX2 test machine); on a VNNI CPU the two agree."""
    from ptq_core.convert import convert_direct

    tmp = tmp_path_factory.mktemp("det_vnni")
    model = tmp / "det.onnx"
    onnx.save(dm.detection_head_model(), str(model))
    bins = dm.write_bins(tmp / "bins", (1, 3, 16, 16), 2)
    cfg = dm.full_quant_config(tmp / "det.cfg", "x", bins, 2, tmp / "debug")
    cfg.write_text(cfg.read_text() + "int8_form=vnni\n")
    return {"dir": tmp / "debug", "model": model, "bins": bins, "summary": convert_direct(model, cfg, tmp / "out")}


@pytest.mark.parametrize("case", ["det", "det_vnni"])
def test_output_summary_reports_the_written_model_as_onnxruntime_runs_it(case, request):
    """Its cosines are those of the model users run (onnxruntime's default optimizations, integer kernels),
    not of the exact-math graph the per-tensor rows compare."""
    import onnxruntime as ort

    from ptq_core.quant import cosine

    run = request.getfixturevalue(case)
    x = np.fromfile(run["bins"] / "sample_0000.bin", np.float32).reshape(1, 3, 16, 16)
    fp32 = ort.InferenceSession(str(run["model"]), providers=["CPUExecutionProvider"])
    written = ort.InferenceSession(str(run["summary"].output), providers=["CPUExecutionProvider"])
    names = [o.name for o in fp32.get_outputs()]
    expected = {n: cosine(a, b) for n, a, b in zip(names, fp32.run(names, {"x": x}), written.run(names, {"x": x}))}
    rows = [line.split(",") for line in _lines(run["dir"] / "output_summary.csv")[1:]]
    got = {name: float(cos) for rnd, name, cos, *_ in rows if rnd == "0"}
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name

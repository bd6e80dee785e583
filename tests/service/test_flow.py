"""The ``quantize`` flow under Prefect's test harness: same result as the core, cached by content."""

from pathlib import Path

import pytest
from modelgen import mlp_model, save, write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _task_states(flow_state, expected=("resolve_config", "analyse_model", "quantize_weights", "emit_model",
                                        "summarize")) -> dict[str, str]:
    """Final state name of each task run; task runs reach the API through events, so poll briefly."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id
    states: dict[str, str] = {}
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            states = {r.name.rsplit("-", 1)[0]: r.state.name for r in runs if r.state is not None and r.state.is_final()}
            if all(name in states for name in expected):
                break
            time.sleep(0.2)
    return states


def _config(path: Path, init_scale: float) -> Path:
    return write_config(path, "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n"
                              f"[mixed_bit_weight_quant_param]\ninit_scale={init_scale}\n")


def test_flow_end_to_end_then_served_from_cache(tmp_path):
    from prefect.artifacts import Artifact
    from ptqflow.flows.quantize import quantize

    model = save(mlp_model(hidden=128, inp=96), tmp_path / "m.onnx")
    cfg = _config(tmp_path / "w.cfg", 0.02)
    first = quantize(str(model), str(cfg), str(tmp_path / "out1"), return_state=True)
    summary = first.result()
    assert Path(summary.output).read_bytes()
    assert summary.output_cosine > 0.99
    states = _task_states(first)
    assert states["quantize_weights"] == "Completed"

    second = quantize(str(model), str(cfg), str(tmp_path / "out2"), return_state=True)
    states = _task_states(second)
    assert states["resolve_config"] == "Cached"
    assert states["analyse_model"] == "Cached"
    assert states["quantize_weights"] == "Cached"
    assert (tmp_path / "out1.onnx").read_bytes() == (tmp_path / "out2.onnx").read_bytes()

    table = Artifact.get("quantize-layers")
    assert table is not None and "fc1" in str(table.data)


def test_changed_init_scale_reruns_only_what_depends_on_it(tmp_path):
    from ptqflow.flows.quantize import quantize

    model = save(mlp_model(hidden=128, inp=80), tmp_path / "m.onnx")
    quantize(str(model), str(_config(tmp_path / "a.cfg", 0.02)), str(tmp_path / "a"))
    state = quantize(str(model), str(_config(tmp_path / "b.cfg", 0.05)), str(tmp_path / "b"), return_state=True)
    states = _task_states(state)
    assert states["analyse_model"] == "Cached"
    assert states["quantize_weights"] == "Completed"
    assert (tmp_path / "b.onnx").stat().st_size < (tmp_path / "a.onnx").stat().st_size


def test_flow_and_direct_call_write_the_same_model(tmp_path):
    from ptqflow.api import convert

    model = save(mlp_model(hidden=64, inp=48), tmp_path / "m.onnx")
    cfg = _config(tmp_path / "w.cfg", 0.01)
    via_flow = convert(model, cfg, tmp_path / "f", use_flow=True)
    direct = convert(model, cfg, tmp_path / "d", use_flow=False)
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()


def test_deleted_plan_file_is_recomputed(tmp_path):
    import shutil

    from ptqflow.flows.quantize import quantize

    from ptqflow._env import cache_dir

    model = save(mlp_model(hidden=64, inp=40), tmp_path / "m.onnx")
    cfg = _config(tmp_path / "w.cfg", 0.02)
    quantize(str(model), str(cfg), str(tmp_path / "a"))
    shutil.rmtree(cache_dir("plans"))
    summary = quantize(str(model), str(cfg), str(tmp_path / "b"))
    assert (tmp_path / "a.onnx").read_bytes() == Path(summary.output).read_bytes()


def test_full_quant_flow_on_dask_equals_the_serial_direct_path(tmp_path):

    from test_full_quant import calib_folder, cnn_model

    from ptqflow.api import convert

    model = save(cnn_model(), tmp_path / "m.onnx")
    folder = calib_folder(tmp_path, n=8)
    cfg = write_config(tmp_path / "f.cfg", "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                       f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size=8\ninput_type=BIN\n"
                       "[full_quant_param]\nactivation_quant_method=KL\n[ptqflow]\nlatency_guard=false\n")
    via_flow = convert(model, cfg, tmp_path / "flow", use_flow=True)
    direct = convert(model, cfg, tmp_path / "direct", use_flow=False)
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()
    assert via_flow.output_cosine > 0.99 and via_flow.quant_type == "FULL_QUANT"


def test_dynamic_quant_flow_equals_direct_path(tmp_path):
    from ptqflow.api import convert

    model = save(mlp_model(hidden=96, inp=64), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "d.cfg", "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"
                       "[dynamic_quant_param]\nquant_strategy=ALWC\n")
    via_flow = convert(model, cfg, tmp_path / "flow", use_flow=True)
    direct = convert(model, cfg, tmp_path / "direct", use_flow=False)
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()
    assert via_flow.quant_type == "DYNAMIC_QUANT" and via_flow.output_cosine > 0.99


def test_new_weights_in_the_external_data_file_are_not_served_from_cache(tmp_path):
    """Re-exporting the same architecture with new weights rewrites only the external data file: the .onnx
    (names, offsets, lengths) stays byte-identical. The analysis key must cover the data file too, or every
    cached step downstream would serve the old weights' result."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from ptqflow.flows.quantize import quantize

    folder = tmp_path / "export"
    folder.mkdir()
    model_path = folder / "m.onnx"

    def export(scale: float) -> bytes:
        model = mlp_model(hidden=64, inp=40)
        for init in model.graph.initializer:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(scale), init.name))
        (folder / "m.data").unlink(missing_ok=True)  # onnx appends to an existing data file; exporters replace it
        onnx.save_model(model, model_path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="m.data", size_threshold=0)
        return model_path.read_bytes()

    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n")
    graph_before = export(1.0)
    first = Path(quantize(str(model_path), str(cfg), str(tmp_path / "a")).output).read_bytes()
    assert export(-3.0) == graph_before  # only m.data changed
    second = Path(quantize(str(model_path), str(cfg), str(tmp_path / "b")).output).read_bytes()
    assert second != first
    from ptqflow.api import convert

    direct = convert(model_path, cfg, tmp_path / "direct", use_flow=False)
    assert direct.output_path.read_bytes() == second


def test_a_run_is_named_after_model_mode_and_settings_and_tagged(tmp_path):
    from prefect.client.orchestration import get_client
    from ptqflow.flows.quantize import quantize, run_tags

    model = save(mlp_model(hidden=64, inp=32, seed=5), tmp_path / "mlp_small.onnx")
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=4\n")
    with run_tags(model, cfg):
        state = quantize(str(model), str(cfg), str(tmp_path / "out"), return_state=True)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == "mlp_small WEIGHT_QUANT 4 bit pc"
    assert {"mode:WEIGHT_QUANT", "model:mlp_small"} <= set(run.tags)


def test_a_tagged_runs_tasks_carry_no_tags_so_no_task_waits_for_tag_concurrency_slots(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from ptqflow.flows.quantize import quantize, run_tags

    model = save(mlp_model(hidden=64, inp=32, seed=6), tmp_path / "mlp_tags.onnx")
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=6\n")
    with run_tags(model, cfg):
        state = quantize(str(model), str(cfg), str(tmp_path / "out"), return_state=True)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        run = client.read_flow_run(run_id)
    assert "mode:WEIGHT_QUANT" in run.tags
    assert len(tasks) >= 3 and all(not t.tags for t in tasks)


def test_the_summary_artifact_leads_with_the_verdict_in_human_units_and_the_log_says_it_too(tmp_path, caplog):
    import logging

    from prefect.artifacts import Artifact
    from ptqflow.flows.quantize import quantize

    model = save(mlp_model(hidden=64, inp=32, seed=6), tmp_path / "mlp_v.onnx")
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n")
    with caplog.at_level(logging.INFO):
        quantize(str(model), str(cfg), str(tmp_path / "out"))
    text = str(Artifact.get("quantize-summary").data)
    assert text.startswith("**mlp_v.onnx -> out.onnx: WEIGHT_QUANT,") and "x smaller" in text and "KiB" in text
    assert "size_before_bytes" not in text and "| None |" not in text
    assert any("x smaller" in r.getMessage() and r.name.startswith("prefect.flow_runs") for r in caplog.records)


def test_the_layer_table_says_fp32_for_float_layers_and_drops_empty_columns():
    from ptqflow.flows.quantize import layer_table

    rows = [{"node": "a", "status": "quantized", "bits": 8, "step": None, "weight_cosine": None},
            {"node": "b", "status": "skipped", "bits": 32, "step": None, "weight_cosine": 0.99}]
    assert layer_table(rows) == [{"node": "a", "status": "quantized", "bits": 8, "weight_cosine": None},
                                 {"node": "b", "status": "skipped", "bits": "fp32", "weight_cosine": 0.99}]


def test_the_dashboard_tables_put_the_columns_a_user_scans_first_and_long_text_last():
    from ptqflow.flows.quantize import layer_table
    from ptqflow.report import lead_columns

    row = {"tensor": "w", "detail": "int8 per-channel", "shape": "2x2", "encoding": "int8", "effective_bits": 8.0,
           "node": "a", "op": "Conv", "status": "quantized", "bits": 8, "weight_cosine": 0.99, "bytes_fp32": 16,
           "bytes_stored": 4}
    keys = list(layer_table([row])[0])
    assert keys[:7] == ["node", "op", "status", "bits", "weight_cosine", "bytes_fp32", "bytes_stored"]
    assert keys[-1] == "detail"
    swept = lead_columns([{"size_bytes": 1, "point": 0, "best": True, "x.y": "4", "cosine": 0.9}], ("point", "x.y",
                                                                                                  "cosine", "pareto",
                                                                                                  "best"))
    assert list(swept[0]) == ["point", "x.y", "cosine", "best", "size_bytes"]


def test_progress_cards_are_keyed_per_stage_model_and_settings():
    from ptqflow.tasks.caching import progress_key

    from ptq_core.config import parse_config

    a = parse_config("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n")
    b = parse_config("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=4\n")
    key = progress_key("weights", "/m/My Model.v2.onnx", a)
    assert key.startswith("progress-weights-my-model-v2-") and key == key.lower()
    assert key != progress_key("weights", "/m/My Model.v2.onnx", b)

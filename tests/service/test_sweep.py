"""Sweeps: grid checking, per-point configs, the Pareto pick, and the flow's reuse of cached upstream work."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from modelgen import mlp_model, save, write_config

from ptq_core.config import parse_config
from ptq_core.errors import ConfigError
from ptq_core.sweep import (
    Measured,
    expand,
    load_grid,
    override_ini,
    pareto_front,
    pareto_svg,
    pick_best,
)

WEIGHT_CFG = ("# mixed bit base\n[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n"
              "[mixed_bit_weight_quant_param]\ninit_scale=0.02\n")


@pytest.mark.parametrize("grid, expected", [
    ({"mixed_bit_weight_quant_param.init_scal": [0.01]}, "has no key 'init_scal' (did you mean 'init_scale'?)"),
    ({"mixed_bit_weight_quant.init_scale": [0.01]}, "unknown section [mixed_bit_weight_quant] (did you mean"),
    ({"init_scale": [0.01]}, "must be section.key (did you mean 'mixed_bit_weight_quant_param.init_scale'?)"),
    ({"mixed_bit_weight_quant_param.init_scale": [0.01, 1.5]},
     "[mixed_bit_weight_quant_param] init_scale=1.5: must be a number in (0, 1), ends excluded"),
    ({"full_quant_param.activation_quant_method": ["KL", "kl"]}, "must be one of MAX_MIN, KL, REMOVAL_OUTLIER"),
    ({"full_quant_param.per_channel": [True, "yes"]}, "per_channel=yes: must be true or false"),
    ({"mixed_bit_weight_quant_param.init_scale": 0.01}, "must map to a non-empty list of values"),
])
def test_bad_grid_is_a_one_line_error_naming_the_grid_file_and_key(tmp_path, grid, expected):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid, indent=1))
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}:") and expected in message


def test_toml_tables_and_dotted_json_keys_give_the_same_grid(tmp_path):
    toml = tmp_path / "g.toml"
    toml.write_text('[full_quant_param]\nactivation_quant_method = ["MAX_MIN", "KL"]\nper_channel = [true, false]\n')
    from_json = load_grid('{"full_quant_param.activation_quant_method": ["MAX_MIN", "KL"], '
                          '"full_quant_param.per_channel": [true, false]}')
    assert load_grid(toml).points() == from_json.points()
    assert len(from_json.points()) == 4


def test_point_configs_keep_the_users_text_and_read_back_as_the_changed_config():
    text = WEIGHT_CFG + "[weight_quant_param]\nper_channel=true\n"
    changed = override_ini(text, {"mixed_bit_weight_quant_param.init_scale": "0.05",
                                  "weight_quant_param.per_channel": "false",
                                  "mixed_bit_weight_quant_param.auto_tune": "true"})
    assert changed.startswith("# mixed bit base\n")
    expected = parse_config(text).replace(mixed_bit_weight_quant_param={"init_scale": 0.05, "auto_tune": True},
                                          weight_quant_param={"per_channel": False})
    assert parse_config(changed).fingerprint() == expected.fingerprint()


def test_a_point_breaking_a_cross_key_rule_fails_before_anything_runs():
    grid = load_grid('{"common_quant_param.bit_num": [4, 8]}')
    with pytest.raises(ConfigError, match="enable_encode=false: only allowed with bit_num 8 or 16"):
        expand(WEIGHT_CFG.replace("bit_num=0", "bit_num=8\nenable_encode=false"), "w.cfg", grid)


def test_pareto_front_and_pick_follow_the_documented_rule():
    pts = [Measured(0, 1000, 1.0, 0.9990), Measured(1, 800, 1.0, 0.9985), Measured(2, 600, 1.0, 0.9900),
           Measured(3, 900, 1.2, 0.9980)]  # 3 is dominated by 1
    assert pareto_front(pts) == {0, 1, 2}
    assert pick_best(pts, tolerance=0.002, rule="size").index == 1
    assert pick_best(pts, tolerance=0.0, rule="size").index == 0
    assert pick_best(pts, rule="cosine").index == 0
    with pytest.raises(ConfigError, match="did you mean 'latency'"):
        pick_best(pts, rule="latncy")


def test_svg_plot_is_well_formed_and_rings_the_pick():
    pts = [Measured(0, 1000, 1.0, 0.999), Measured(1, 800, 1.1, 0.998)]
    svg = pareto_svg(pts, {0: "a", 1: "b"}, best=1, title="t <x>")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert svg.count('stroke="#d62728"') == 1 and "point 1: b" in svg


@pytest.mark.usefixtures("prefect_harness")
def test_weight_sweep_writes_outputs_and_analyses_the_model_once(tmp_path):
    import pyarrow.parquet as pq
    from prefect_runs import state_counts, task_states
    from ptqflow.flows.sweep import sweep

    model = save(mlp_model(hidden=96, inp=64, seed=5), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", WEIGHT_CFG)
    grid = tmp_path / "g.json"
    grid.write_text('{"mixed_bit_weight_quant_param.init_scale": [0.01, 0.03, 0.08]}')
    out = tmp_path / "out"
    from prefect.client.orchestration import get_client
    from ptqflow.flows.sweep import sweep_tags

    with sweep_tags(model, cfg, str(grid)):
        state = sweep(str(model), str(cfg), str(grid), str(out), return_state=True)
    result = state.result()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == "m sweep init_scale (3 points)"
    assert {"sweep", "mode:WEIGHT_QUANT", "model:m"} <= set(run.tags)
    counts = state_counts(task_states(state.state_details.flow_run_id, expect=1 + 1 + 3 * 6 + 3))
    assert counts["sweep_point"] == {"Completed": 3}
    assert counts["analyse_model"].get("Completed", 0) == 1  # the flow's own call; every point's is Cached
    assert counts["analyse_model"]["Cached"] == 3
    table = pq.read_table(out / "sweep.parquet").to_pylist()
    assert [r["mixed_bit_weight_quant_param.init_scale"] for r in table] == ["0.01", "0.03", "0.08"]
    assert table[0]["size_bytes"] > table[2]["size_bytes"] and table[0]["cosine"] > table[2]["cosine"]
    assert sum(r["best"] for r in table) == 1 and any(r["pareto"] for r in table)
    best = next(r for r in table if r["best"])
    assert parse_config((out / "best.cfg").read_text(), "best.cfg").mixed.init_scale == \
        float(best["mixed_bit_weight_quant_param.init_scale"])
    assert all((out / f"point_{k}.onnx").stat().st_size == table[k]["size_bytes"] for k in range(3))
    assert result["best"] == best["point"]

    again = sweep(str(model), str(cfg), str(grid), str(tmp_path / "out2"), return_state=True)
    counts = state_counts(task_states(again.state_details.flow_run_id, expect=2 + 3 + 3))
    assert counts["sweep_point"] == {"Cached": 3}
    assert counts["measure_latency"] == {"Cached": 3}
    assert (tmp_path / "out2" / "best.cfg").read_text() == (out / "best.cfg").read_text()


@pytest.mark.usefixtures("prefect_harness")
def test_full_sweep_preprocesses_once_and_collects_statistics_once_per_method(tmp_path):
    from prefect_runs import state_counts, task_states
    from ptqflow.flows.sweep import sweep
    from test_full_quant import calib_folder, cnn_model

    from ptq_core.convert import convert_direct

    model = save(cnn_model(seed=3), tmp_path / "cnn.onnx")
    folder = calib_folder(tmp_path, n=6)
    cfg = write_config(tmp_path / "f.cfg", "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                                           f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size=6\n"
                                           "input_type=BIN\n[ptqflow]\nlatency_guard=false\n")
    grid = tmp_path / "g.toml"
    grid.write_text('[full_quant_param]\nactivation_quant_method = ["MAX_MIN", "REMOVAL_OUTLIER"]\n'
                    'per_channel = [true, false]\n')
    out = tmp_path / "out"
    state = sweep(str(model), str(cfg), str(grid), str(out), return_state=True)
    state.result()
    counts = state_counts(task_states(state.state_details.flow_run_id, expect=2 + 4 * 9))
    assert counts["preprocess_calibration"] == {"Completed": 1, "Cached": 3}
    assert counts["collect_statistics"] == {"Completed": 2, "Cached": 2}
    assert counts["quantize_full"] == {"Completed": 4}
    # shared statistics change nothing: each point equals a direct, serial run of its own config
    direct = convert_direct(model, out / "point_3.cfg", tmp_path / "direct3")
    assert Path(direct.output).read_bytes() == (out / "point_3.onnx").read_bytes()


def test_cli_sweep_rejects_a_bad_grid_in_one_line_before_running(tmp_path, capsys):
    from ptqflow.cli import main

    model = save(mlp_model(hidden=32, inp=16), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", WEIGHT_CFG)
    grid = tmp_path / "g.json"
    grid.write_text('{"mixed_bit_weight_quant_param.init_scale": [0.01, 0]}')
    code = main(["sweep", "--fmk=ONNX", f"--modelFile={model}", f"--configFile={cfg}", "--grid", str(grid),
                 "--outputDir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"{grid}:1: [mixed_bit_weight_quant_param] init_scale=0" in err
    assert not (tmp_path / "out").exists()


def test_parallel_points_saving_the_speed_table_keep_each_others_entries(tmp_path):
    import threading

    from ptq_core.modes.full.latency_guard import SpeedTable

    path = str(tmp_path / "speed-table.json")
    tables = [SpeedTable(path) for _ in range(8)]  # all loaded before anyone saves, as parallel points do

    def work(i: int) -> None:
        tables[i].put(f"op{i}", 1.0, 0.5)
        tables[i].decisions[f"model|{i}"] = {"demoted": {}}
        tables[i].save()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = SpeedTable(path)
    assert set(merged.data) == {f"op{i}" for i in range(8)}
    assert set(merged.decisions) == {f"model|{i}" for i in range(8)}


def test_a_point_that_quantized_no_layer_says_why():
    from ptqflow.flows.sweep import point_layers

    from ptq_core.modes.weight.plan import LayerDecision
    from ptq_core.summary import Summary

    kept = [LayerDecision("c1", "Conv", "w1", (8, 3, 3, 3), False, "int8 kernel not faster here (16 µs vs FP32 11 µs)"),
            LayerDecision("c2", "Conv", "w2", (8, 8, 3, 3), False, "int8 kernel not faster here (9 µs vs FP32 8 µs)")]
    summary = Summary("m.onnx", "o.onnx", "FULL_QUANT", 8, kept, 100, 30, 0.99, "calibration sample 0")
    assert point_layers(summary) == {"layers_quantized": 0, "layers_kept_float": 2,
                                     "note": "no layer quantized: int8 kernel not faster here"}


@pytest.mark.usefixtures("prefect_harness")
def test_gptq_sweep_over_bits_and_group_size_collects_the_hessians_once(tmp_path):
    import pyarrow.parquet as pq
    from prefect_runs import state_counts, task_states
    from ptqflow.flows.sweep import sweep
    from test_gptq import calibration, gptq_cfg, mlp

    # data of its own: the Hessians another test collected from the default data would be served from the cache
    model, folder = save(mlp(), tmp_path / "mlp.onnx"), calibration(tmp_path, seed=9)
    cfg = gptq_cfg(tmp_path, folder, 4)
    grid = tmp_path / "g.json"
    grid.write_text('{"common_quant_param.bit_num": [3, 4], "ptqflow.group_size": [0, 16]}')
    out = tmp_path / "out"
    state = sweep(str(model), str(cfg), str(grid), str(out), return_state=True)
    counts = state_counts(task_states(state.state_details.flow_run_id))
    assert counts["sweep_point"] == {"Completed": 4}
    assert counts["gptq_hessians"].get("Completed", 0) == 1  # the bit width and group size are not in its key
    assert counts["gptq_hessians"]["Cached"] == 3
    table = pq.read_table(out / "sweep.parquet").to_pylist()
    by_point = {(r["common_quant_param.bit_num"], r["ptqflow.group_size"]): r for r in table}
    assert by_point["3", "16"]["cosine"] > by_point["3", "0"]["cosine"]  # groups keep 3 bits closer to FP32
    assert by_point["3", "0"]["size_bytes"] < by_point["4", "0"]["size_bytes"]
    assert any(r["pareto"] for r in table)

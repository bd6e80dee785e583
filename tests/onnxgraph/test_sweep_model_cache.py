"""A sweep parses the FP32 model once: later points reuse the first point's loaded model, and the cache
notices a changed file."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from modelgen import mlp_model, save, write_config

from ptq_core.onnxgraph import cache as model_cache

WEIGHT_CFG = ("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n"
              "[mixed_bit_weight_quant_param]\ninit_scale=0.02\n")
DYNAMIC_CFG = "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"

# _sweep warms the analysis by calling its task outside a flow; Prefect then warns that the task's logs
# have no flow run to go to, which is expected here
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs:UserWarning")


class LoadCounter:
    """Counts parses of one model file: protobuf loads (onnx.load) and onnxruntime sessions built on it."""

    def __init__(self, monkeypatch, path: Path):
        import onnxruntime

        self.path = str(path)
        self.parses = 0
        self.sessions = 0
        real_load, real_session = onnx.load, onnxruntime.InferenceSession

        def load(f, *args, **kwargs):
            self.parses += str(f) == self.path
            return real_load(f, *args, **kwargs)

        def session(source, *args, **kwargs):
            self.sessions += isinstance(source, str) and source == self.path
            return real_session(source, *args, **kwargs)

        monkeypatch.setattr(onnx, "load", load)
        monkeypatch.setattr(onnxruntime, "InferenceSession", session)


def _sweep(tmp_path, model, cfg_text, grid_text, name):
    """The counting tests warm the flow's cached analysis themselves before they start counting, so that
    only the sweep's own loads are counted."""
    from ptqflow.flows.sweep import sweep

    cfg = write_config(tmp_path / f"{name}.cfg", cfg_text)
    grid = tmp_path / f"{name}.json"
    grid.write_text(grid_text)
    return sweep(str(model), str(cfg), str(grid), str(tmp_path / name))


@pytest.mark.usefixtures("prefect_harness")
def test_weight_sweep_of_three_points_parses_the_fp32_model_once(tmp_path, monkeypatch):
    model = save(mlp_model(hidden=80, inp=40, seed=11), tmp_path / "m.onnx")
    from ptqflow.tasks import weight

    weight.analyse(str(model))
    counter = LoadCounter(monkeypatch, model)
    result = _sweep(tmp_path, model, WEIGHT_CFG, '{"mixed_bit_weight_quant_param.init_scale": [0.01, 0.03, 0.08]}',
                    "w")
    assert len(result["rows"]) == 3
    assert counter.parses == 1  # before: 3 per point (plan, emit, size on disk)
    assert counter.sessions == 1  # before: one FP32 reference session per point


@pytest.mark.usefixtures("prefect_harness")
def test_dynamic_sweep_of_four_points_parses_the_fp32_model_once(tmp_path, monkeypatch):
    model = save(mlp_model(hidden=72, inp=40, seed=12), tmp_path / "m.onnx")
    from ptqflow.tasks import weight

    weight.analyse(str(model))
    counter = LoadCounter(monkeypatch, model)
    grid = '{"dynamic_quant_param.quant_strategy": ["ALWC", "ACWL"], "common_quant_param.skip_quant_node": ["fc1", "fc2"]}'
    result = _sweep(tmp_path, model, DYNAMIC_CFG, grid, "d")
    assert len(result["rows"]) == 4
    assert counter.parses == 1 and counter.sessions == 1


@pytest.mark.usefixtures("prefect_harness")
def test_full_sweep_of_two_points_parses_and_optimizes_the_fp32_model_once(tmp_path, monkeypatch):
    from test_full_quant import calib_folder, cnn_model

    model = save(cnn_model(seed=21), tmp_path / "cnn.onnx")
    folder = calib_folder(tmp_path, n=4)
    cfg = ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n[data_preprocess_param]\n"
           f"calibrate_path=x:{folder}\ncalibrate_size=4\ninput_type=BIN\n[ptqflow]\nlatency_guard=false\n")
    from ptqflow.tasks import weight

    weight.analyse(str(model))
    counter = LoadCounter(monkeypatch, model)
    model_cache.loads.clear()
    result = _sweep(tmp_path, model, cfg, '{"full_quant_param.per_channel": [true, false]}', "f")
    assert len(result["rows"]) == 2
    assert counter.parses == 1 and counter.sessions == 1
    assert model_cache.loads["full"] == 1  # the onnxruntime BASIC optimization, once for both points


@pytest.mark.usefixtures("prefect_harness")
def test_shared_outputs_match_a_sweep_without_sharing_byte_for_byte(tmp_path, monkeypatch):
    model = save(mlp_model(hidden=64, inp=32, seed=13), tmp_path / "m.onnx")
    grid = '{"mixed_bit_weight_quant_param.init_scale": [0.01, 0.05, 0.09]}'
    shared = _sweep(tmp_path, model, WEIGHT_CFG, grid, "shared")

    from contextlib import contextmanager

    @contextmanager
    def off():
        yield

    monkeypatch.setattr(model_cache, "sharing", off)
    monkeypatch.setenv("PTQFLOW_HOME", str(tmp_path / "fresh-home"))  # no cached points: every step reruns
    plain = _sweep(tmp_path, model, WEIGHT_CFG, grid, "plain")
    for a, b in zip(shared["rows"], plain["rows"]):
        assert Path(a["model"]).read_bytes() == Path(b["model"]).read_bytes()
        assert a["cosine"] == b["cosine"] and a["size_bytes"] == b["size_bytes"]


def test_a_rewritten_model_file_is_loaded_again(tmp_path):
    path = save(mlp_model(hidden=16, inp=8, seed=1), tmp_path / "m.onnx")
    with model_cache.sharing():
        first = model_cache.prepared_model(path, load_data=False)
        assert model_cache.prepared_model(path, load_data=False) is first
        save(mlp_model(hidden=24, inp=8, seed=2), path)  # same path, new bytes
        second = model_cache.prepared_model(path, load_data=False)
    assert second is not first
    assert onnx.numpy_helper.to_array(second.graph.initializer[0]).shape != \
        onnx.numpy_helper.to_array(first.graph.initializer[0]).shape


def test_same_size_rewrite_with_the_old_mtime_is_still_noticed(tmp_path):
    path = save(mlp_model(hidden=16, inp=8, seed=1), tmp_path / "m.onnx")
    st = os.stat(path)
    with model_cache.sharing():
        first = model_cache.prepared_model(path, load_data=False)
        save(mlp_model(hidden=16, inp=8, seed=2), path)  # same shapes, so the same size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(path).st_size == st.st_size
        second = model_cache.prepared_model(path, load_data=False)  # ctime still moved
    assert not np.array_equal(onnx.numpy_helper.to_array(first.graph.initializer[0]),
                              onnx.numpy_helper.to_array(second.graph.initializer[0]))


def test_changed_external_data_is_loaded_again(tmp_path):
    model = mlp_model(hidden=64, inp=32, seed=1)
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="ext.bin", size_threshold=0)
    with model_cache.sharing():
        before = model_cache.prepared_model(path, load_data=True)
        data = tmp_path / "ext.bin"
        raw = bytearray(data.read_bytes())
        raw[:4] = np.float32(123.0).tobytes()
        data.write_bytes(bytes(raw))
        after = model_cache.prepared_model(path, load_data=True)
    assert after is not before
    assert not any(np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
                   for a, b in zip(before.graph.initializer[:1], after.graph.initializer[:1]))


def test_nothing_is_kept_outside_a_sweep_and_at_most_two_files_inside(tmp_path):
    paths = [save(mlp_model(hidden=16, inp=8, seed=s), tmp_path / f"m{s}.onnx") for s in range(3)]
    assert model_cache.prepared_model(paths[0], False) is not model_cache.prepared_model(paths[0], False)
    with model_cache.sharing():
        for p in paths:
            model_cache.prepared_model(p, False)
        assert len(model_cache._files) == model_cache.MAX_FILES
        assert str(paths[0].resolve()) not in model_cache._files  # least recently used went first
    assert not model_cache._files


def test_parallel_points_wait_for_one_load_instead_of_parsing_twice(tmp_path, monkeypatch):
    import threading

    from ptq_core.onnxgraph import load as graph

    path = save(mlp_model(hidden=32, inp=16, seed=3), tmp_path / "m.onnx")
    calls = []
    real = graph.prepare_model

    def slow(p, load_data=True):
        calls.append(p)
        threading.Event().wait(0.2)
        return real(p, load_data)

    monkeypatch.setattr(graph, "prepare_model", slow)
    got = []
    with model_cache.sharing():
        threads = [threading.Thread(target=lambda: got.append(model_cache.prepared_model(path, False)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(calls) == 1 and all(m is got[0] for m in got)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("cfg_text, grid", [
    (WEIGHT_CFG, '{"mixed_bit_weight_quant_param.init_scale": [0.02, 0.06]}'),
    (DYNAMIC_CFG, '{"dynamic_quant_param.quant_strategy": ["ALWC", "ACWL"]}'),
])
def test_a_sweep_leaves_the_shared_model_as_loaded(tmp_path, cfg_text, grid):
    from ptq_core.onnxgraph.load import prepare_model

    model = save(mlp_model(hidden=48, inp=24, seed=14), tmp_path / "m.onnx")
    with model_cache.sharing():  # an outer block keeps the entries after the sweep's own block ends
        _sweep(tmp_path, model, cfg_text, grid, "s")
        entry = model_cache._files[str(model.resolve())]
        shared = {k: v for k, v in entry.values.items() if isinstance(v, onnx.ModelProto)}
    assert shared
    for variant, proto in shared.items():
        assert proto.SerializeToString() == prepare_model(model, variant == "loaded").SerializeToString()

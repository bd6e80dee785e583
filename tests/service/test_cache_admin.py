"""``ptq cache``: sizes, and pruning that never leaves a cache hit pointing at a deleted file."""

import os
import time
from pathlib import Path

import pytest
from modelgen import save, write_config

from ptq_core.errors import PtqError
from ptqflow import cache_admin
from ptqflow.cache_admin import Entry, Record, parse_age, parse_size, plan_prune
from ptqflow.cli import main

DAY = 86400.0


@pytest.mark.parametrize("text,expected", [("0", 0), ("500MB", 500 * 2**20), ("2GB", 2 * 2**30), ("1.5k", 1536),
                                           ("3 GiB", 3 * 2**30)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text,expected", [("30d", 30 * DAY), ("12h", 12 * 3600), ("45m", 2700), ("2", 2 * DAY)])
def test_ages(text, expected):
    assert parse_age(text) == expected


@pytest.mark.parametrize("bad", ["2XB", "-1GB", "lots"])
def test_bad_size_is_one_line(bad):
    with pytest.raises(PtqError, match="--max-size"):
        parse_size(bad)


def entries(tmp_path, ages_days, size=100):
    now = 1_000 * DAY
    out = []
    for i, age in enumerate(ages_days):
        path = tmp_path / f"f{i}.onnx"
        path.write_bytes(b"x" * size)
        out.append(Entry(path, "models", size, now - age * DAY))
    return out, now


def test_size_cap_removes_oldest_first(tmp_path):
    files, now = entries(tmp_path, [5, 1, 3, 2])
    plan = plan_prune(files, [], max_size=200, older_than=None, now=now, grace=0)
    assert [e.path.name for e in plan.files] == ["f0.onnx", "f2.onnx"]


def test_age_limit_and_grace(tmp_path):
    files, now = entries(tmp_path, [40, 10, 0.001])
    assert [e.path.name for e in plan_prune(files, [], None, 7 * DAY, now=now).files] == ["f0.onnx", "f1.onnx"]
    # zero size cap: everything except what was touched in the grace window
    assert [e.path.name for e in plan_prune(files, [], 0, None, now=now, grace=600).files] == ["f0.onnx", "f1.onnx"]


def test_records_go_with_the_files_they_mention_and_with_missing_ones(tmp_path):
    files, now = entries(tmp_path, [5, 1])
    keep = Record(tmp_path / "r-keep", 10, {str(files[1].path)})
    pruned = Record(tmp_path / "r-pruned", 10, {str(files[0].path), str(files[1].path)})
    dangling = Record(tmp_path / "r-dangling", 10, {str(tmp_path / "gone.onnx")})
    plan = plan_prune(files, [keep, pruned, dangling], max_size=100, older_than=None, now=now, grace=0)
    assert [e.path.name for e in plan.files] == ["f0.onnx"]
    assert {r.path.name for r in plan.records} == {"r-pruned", "r-dangling"}


@pytest.mark.usefixtures("prefect_harness")
def test_prune_everything_then_the_same_conversion_reruns_and_gives_the_same_bytes(tmp_path):
    """A cached task's record holds paths into the cache (models, plans, calibration shards). Pruning deletes the
    records that mention a deleted file, so no stale record is left to be served (the flow also re-checks the
    paths of a cache hit), and the same conversion afterwards reruns and writes the same bytes."""
    from ptqflow.flows.quantize import quantize
    from test_full_quant import calib_folder, cnn_model

    model = save(cnn_model(), tmp_path / "m.onnx")
    folder = calib_folder(tmp_path, n=4)
    cfg = write_config(tmp_path / "f.cfg", "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                       f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size=4\ninput_type=BIN\n"
                       "[ptqflow]\nlatency_guard=false\n")
    first = Path(quantize(str(model), str(cfg), str(tmp_path / "a")).output).read_bytes()
    cache = cache_admin.cache_root()
    cached = cache_admin.scan_cache(cache)
    mentioned = {m for r in cache_admin.scan_records(cache_admin.results_root(), cache) for m in r.mentions}
    assert {"models", "shards"} <= {e.kind for e in cached} and {str(e.path) for e in cached} & mentioned
    past = time.time() - 2 * DAY
    for e in cached:
        os.utime(e.path, (past, past))
    # no capsys here: Prefect's console handler, set up during the flow, would keep pytest's capture stream
    # and fail on it in later tests
    assert main(["cache", "--prune", "--max-size", "0"]) == 0
    left = [e for e in cache_admin.scan_cache(cache) if e.mtime <= past + 1]
    assert left == []
    assert (cache / "speed-table.json").exists() or not any(cache.glob("speed-table.json"))
    records = cache_admin.scan_records(cache_admin.results_root(), cache)
    assert records and all(os.path.exists(m) for r in records for m in r.mentions)
    second = Path(quantize(str(model), str(cfg), str(tmp_path / "b")).output).read_bytes()
    assert second == first


def test_speed_table_is_never_pruned(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    (root / "speed-table.json").write_text("{}")
    (root / "models" / "x.onnx").write_bytes(b"1")
    assert [e.path.name for e in cache_admin.scan_cache(root)] == ["x.onnx"]

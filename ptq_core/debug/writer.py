"""converter_lite's debug CSVs, byte for byte in its layout, and their typed Parquet twins.

CSV layout (§12): report rows start with an unnamed running index column, every line (header
included) ends with ``,``; numbers print as C++ ``ostream`` does by default (``%g``, 6 significant
digits; ``inf``/``-inf``/``nan``). converter_lite names the per-round file ``round_<r>.csv`` in its
code and ``report_*.csv`` in its user guide; we follow the guide (``report_<r>.csv``).

Every file is written to a temporary name and renamed, and files are left writable (converter_lite
makes them read-only, which breaks a rerun into the same folder); a rerun with fewer rounds removes
the rounds it did not rewrite.

Parquet: ``report.parquet/Round=<r>/part-0.parquet`` (one hive-partitioned dataset; statistics
float32 as converter_lite computes them, CosineSimilarity float64, strings for the flags),
``output_summary.parquet`` and ``quant_param.parquet``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from ptq_core.debug.stats import STAT_COLUMNS
from ptq_core.files import write_atomic

REPORT_COLUMNS = ("NodeName", "NodeType", "TensorName", "InOutFlag", "DataTypeFlag", "TensorTypeFlag",
                  *STAT_COLUMNS, "Clip", "CosineSimilarity")
OUTPUT_COLUMNS = ("Round", "TensorName", "CosineSimilarity")
QUANT_PARAM_COLUMNS = ("NodeName", "NodeType", "TensorName", "ElementsNum", "Dims", "Scale", "ZeroPoint", "Bits",
                       "CorrectionVar", "CorrectionMean")
REPORT_DIR = "report.parquet"
_STRINGS = ("NodeName", "NodeType", "TensorName", "InOutFlag", "DataTypeFlag", "TensorTypeFlag")


def fmt(x) -> str:
    """C++ ``ostream << value`` with default flags: %g, 6 significant digits."""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    v = float(x)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, ".6g")


def report_name(index: int) -> str:
    return f"report_{index}.csv"


def _atomic_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def _atomic_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: pq.write_table(table, str(tmp)))


def report_csv(rows: list[dict]) -> str:
    lines = ["," + ",".join(REPORT_COLUMNS) + ",\n"]
    for r in rows:
        lines.append(",".join([str(r["Index"])] + [r[c] if c in _STRINGS else fmt(r[c]) for c in REPORT_COLUMNS]) + ",\n")
    return "".join(lines)


def report_table(rows: list[dict]):
    import pyarrow as pa

    fields = [pa.field("Index", pa.int64())] + [pa.field(c, pa.string()) for c in REPORT_COLUMNS[:6]]
    fields += [pa.field(c, pa.float32()) for c in (*STAT_COLUMNS, "Clip")] + [pa.field("CosineSimilarity", pa.float64())]
    schema = pa.schema(fields)
    data = {f.name: [r[f.name] for r in rows] for f in fields}
    for c in (*STAT_COLUMNS, "Clip"):
        data[c] = np.asarray(data[c], np.float32)
    return pa.table(data, schema=schema)


def write_round(folder: Path, index: int, rows: list[dict]) -> None:
    """One round: ``report_<r>.csv`` and its partition ``report.parquet/Round=<r>/part-0.parquet``."""
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_text(folder / report_name(index), report_csv(rows))
    _atomic_parquet(report_table(rows), folder / REPORT_DIR / f"Round={index}" / "part-0.parquet")


def remove_stale_rounds(folder: Path, rounds: int) -> list[str]:
    """Delete rounds >= ``rounds`` left by an earlier run into the same folder."""
    removed = []
    for path in folder.glob("report_*.csv"):
        m = re.fullmatch(r"report_(\d+)\.csv", path.name)
        if m and int(m.group(1)) >= rounds:
            path.unlink()
            removed.append(path.name)
    part_root = folder / REPORT_DIR
    if part_root.is_dir():
        for path in part_root.iterdir():
            m = re.fullmatch(r"Round=(\d+)", path.name)
            if m and int(m.group(1)) >= rounds:
                shutil.rmtree(path)
                removed.append(f"{REPORT_DIR}/{path.name}")
    return removed


def write_output_summary(folder: Path, rows: list[tuple[int, str, float]]) -> None:
    import pyarrow as pa

    text = "Round,TensorName,CosineSimilarity,\n" + "".join(f"{r},{t},{fmt(c)},\n" for r, t, c in rows)
    _atomic_text(folder / "output_summary.csv", text)
    table = pa.table({"Round": pa.array([r for r, _, _ in rows], pa.int32()),
                      "TensorName": pa.array([t for _, t, _ in rows], pa.string()),
                      "CosineSimilarity": pa.array([c for _, _, c in rows], pa.float64())})
    _atomic_parquet(table, folder / "output_summary.parquet")


def write_quant_param(folder: Path, rows: list[dict]) -> None:
    """``quant_param.csv`` (no index column; Dims space-separated with a trailing space) and its twin."""
    import pyarrow as pa

    lines = [",".join(QUANT_PARAM_COLUMNS) + ",\n"]
    for r in rows:
        dims = "".join(f"{d} " for d in r["Dims"])
        lines.append(",".join([r["NodeName"], r["NodeType"], r["TensorName"], str(r["ElementsNum"]), dims,
                               fmt(np.float64(r["Scale"])), str(int(r["ZeroPoint"])), str(int(r["Bits"])),
                               fmt(np.float32(r["CorrectionVar"])), fmt(np.float32(r["CorrectionMean"]))]) + ",\n")
    _atomic_text(folder / "quant_param.csv", "".join(lines))
    table = pa.table({
        "NodeName": pa.array([r["NodeName"] for r in rows], pa.string()),
        "NodeType": pa.array([r["NodeType"] for r in rows], pa.string()),
        "TensorName": pa.array([r["TensorName"] for r in rows], pa.string()),
        "ElementsNum": pa.array([int(r["ElementsNum"]) for r in rows], pa.int64()),
        "Dims": pa.array([[int(d) for d in r["Dims"]] for r in rows], pa.list_(pa.int64())),
        "Scale": pa.array([float(r["Scale"]) for r in rows], pa.float64()),
        "ZeroPoint": pa.array([int(r["ZeroPoint"]) for r in rows], pa.int32()),
        "Bits": pa.array([int(r["Bits"]) for r in rows], pa.int32()),
        "CorrectionVar": pa.array([float(r["CorrectionVar"]) for r in rows], pa.float32()),
        "CorrectionMean": pa.array([float(r["CorrectionMean"]) for r in rows], pa.float32()),
    })
    _atomic_parquet(table, folder / "quant_param.parquet")

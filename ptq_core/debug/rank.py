"""Which nodes did quantization hurt? A ranking read back from the debug reports.

The seed's recommendations, turned into numbers per node (averaged over the rounds):
- **output cosine**: the lowest CosineSimilarity of the node's dequantized outputs;
- **cosine drop**: the node's worst activation-input cosine minus its worst output cosine. A low
  output cosine alone blames every node downstream of the damage; the drop points at the node where
  the damage happened (its weights, its output range, its kernel);
- **clip**: the highest Clip of its quantized activations, those quant_param lists for the node (FP32
  values outside the quantized range; weight rows are left out: MAX_MIN weights never clip, a bias
  only "clips" because bias correction moved it; a float output's extremes merely move);
- **range disagreement** (Add, Concat, Sum): log2 of the ratio between the largest and smallest
  input magnitude max(|Min|, |MAX|) of the FP32 inputs -- the bits of the int8 range the smaller
  input loses when the node's output shares one scale.

score = drop + clip / 10 + min(1, max(0, range_bits - 2) / 6). Cosine drop is the direct measure of
damage; clip counts a tenth (a few percent of saturated values is normal for MAX_MIN calibrated on a
few samples and already shows in the drop when it hurts); a merge whose smaller input falls under
one int8 level scores 1, since its own output cosine hides the loss (the larger input dominates it).
Only the FP32 (Origin) and dequantized (Dequant) rows of the reports are read, fragment by fragment
(one round at a time), so ranking does not hold the reports in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ptq_core.errors import DataError

MERGE_OPS = ("Add", "Concat", "Sum")
RANGE_FREE_BITS = 2.0  # a 4x magnitude ratio costs 2 of 8 bits: normal, not flagged
RANGE_FULL_BITS = 8.0  # 256x: the smaller input is below one int8 level
CLIP_WEIGHT = 0.1
REPORT_DIR = "report.parquet"
QUANT_PARAM_FILE = "quant_param.parquet"
_COLUMNS = ["Index", "NodeName", "NodeType", "TensorName", "InOutFlag", "DataTypeFlag", "TensorTypeFlag",
            "Min", "MAX", "Clip", "CosineSimilarity"]


@dataclass
class NodeDamage:
    """One node's damage figures, averaged over the debug rounds."""

    node: str
    op_type: str
    order: int  # first report row of the node: execution order
    rounds: int
    output_cosine: float  # mean over rounds of the worst output cosine
    min_output_cosine: float  # worst round
    input_cosine: float  # mean over rounds of the worst activation-input cosine (1 without inputs)
    cosine_drop: float  # max(0, input_cosine - output_cosine)
    clip: float  # mean over rounds of the highest Clip of its dequantized activations
    range_bits: float  # Add/Concat/Sum: mean log2(largest/smallest input magnitude); 0 otherwise
    quantized: bool  # has quantization parameters (quant_param) -- skipping it changes something
    score: float = 0.0
    reason: str = ""

    def as_row(self) -> dict:
        return {"node": self.node, "op": self.op_type, "score": round(self.score, 6),
                "output_cosine": round(self.output_cosine, 6), "min_output_cosine": round(self.min_output_cosine, 6),
                "input_cosine": round(self.input_cosine, 6), "cosine_drop": round(self.cosine_drop, 6),
                "clip": round(self.clip, 6), "range_bits": round(self.range_bits, 3),
                "quantized": self.quantized, "reason": self.reason}


def range_term(bits: float) -> float:
    return min(1.0, max(0.0, bits - RANGE_FREE_BITS) / (RANGE_FULL_BITS - RANGE_FREE_BITS))


@dataclass
class _Acc:
    op_type: str
    order: int
    rounds: int = 0
    out_sum: float = 0.0
    out_min: float = 1.0
    in_sum: float = 0.0
    clip_sum: float = 0.0
    bits_sum: float = 0.0
    quantized: bool = False


@dataclass
class _RoundNode:
    out: float = 1.0
    inp: float = 1.0
    clip: float = 0.0
    mags: list = field(default_factory=list)


def _fold_round(rows: dict, accs: dict[str, _Acc], clipped: set[tuple[str, str]] | None = None) -> None:
    """Fold one round's rows (column -> list) into the per-node accumulators.

    ``clipped``: the (node, tensor) pairs that carry quantization parameters; only their Clip counts
    (a float output's extremes just move a little, which is no clipping). None: every activation.
    """
    per: dict[str, _RoundNode] = {}
    for i in range(len(rows["NodeName"])):
        node = rows["NodeName"][i]
        if node not in accs:
            accs[node] = _Acc(rows["NodeType"][i], int(rows["Index"][i]))
        r = per.setdefault(node, _RoundNode())
        inout, kind = rows["InOutFlag"][i], rows["TensorTypeFlag"][i]
        if rows["DataTypeFlag"][i] == "Origin":
            if inout == "Input" and accs[node].op_type in MERGE_OPS:
                lo, hi = rows["Min"][i], rows["MAX"][i]
                if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                    r.mags.append(max(abs(lo), abs(hi)))
            continue
        cos = rows["CosineSimilarity"][i]
        cos = 0.0 if cos is None or not math.isfinite(cos) else float(cos)
        if inout == "Output":
            r.out = min(r.out, cos)
        elif kind == "Activation":
            r.inp = min(r.inp, cos)
        clip = rows["Clip"][i]
        counts = clipped is None or (node, rows["TensorName"][i]) in clipped
        if kind == "Activation" and counts and clip is not None and math.isfinite(clip):
            r.clip = max(r.clip, float(clip))
    for node, r in per.items():
        a = accs[node]
        a.rounds += 1
        a.out_sum += r.out
        a.out_min = min(a.out_min, r.out)
        a.in_sum += r.inp
        a.clip_sum += r.clip
        mags = [m for m in r.mags if m > 0]
        if len(mags) >= 2:
            a.bits_sum += math.log2(max(mags) / min(mags))


def _finish(accs: dict[str, _Acc], quantized: set[str] | None) -> list[NodeDamage]:
    ranked = []
    for node, a in accs.items():
        n = max(1, a.rounds)
        out, inp = a.out_sum / n, a.in_sum / n
        drop = max(0.0, inp - out)
        clip = a.clip_sum / n
        bits = a.bits_sum / n
        is_quant = True if quantized is None else node in quantized
        # a merge op left in FP32 adds its inputs in float: the disagreement costs nothing there
        rterm = range_term(bits) if is_quant else 0.0
        # clip and range only matter where values were quantized: a float node's extremes just move a little
        score = drop + (CLIP_WEIGHT * clip if is_quant else 0.0) + rterm
        reasons = []
        if drop >= 1e-4:
            reasons.append(f"cosine falls {inp:.4f} -> {out:.4f} across the node")
        if clip >= 1e-4 and is_quant:
            reasons.append(f"{100 * clip:.2f}% of FP32 values clipped")
        if rterm > 0:
            reasons.append(f"inputs differ by 2^{bits:.1f} in magnitude (one output scale)")
        if not reasons:
            reasons.append("no loss measured here" if out >= 0.9999 else "inherits loss from its inputs")
        ranked.append(NodeDamage(node, a.op_type, a.order, a.rounds, out, a.out_min, inp, drop, clip, bits,
                                 is_quant, score, "; ".join(reasons)))
    ranked.sort(key=lambda d: (-d.score, d.output_cosine, d.order))
    return ranked


def rank_rows(rounds, quantized: set[str] | None = None,
              clipped: set[tuple[str, str]] | None = None) -> list[NodeDamage]:
    """Rank from an iterable of rounds, each a dict of report columns -> lists (one round at a time).

    ``quantized``: the nodes that carry quantization parameters (None: treat every node as quantized);
    ``clipped``: the (node, tensor) pairs with parameters, whose Clip counts (None: every activation).
    """
    accs: dict[str, _Acc] = {}
    for rows in rounds:
        _fold_round(rows, accs, clipped)
    return _finish(accs, quantized)


def _check_dir(debug_dir: Path) -> Path:
    if not debug_dir.is_dir():
        raise DataError(f"{debug_dir}: no such debug folder; pass the debug_info_save_path of a conversion")
    if not (debug_dir / REPORT_DIR).is_dir():
        raise DataError(f"{debug_dir}: no {REPORT_DIR}/ here; is this the debug_info_save_path of a finished "
                        "conversion with debug on?")
    return debug_dir


def quantized_tensors(debug_dir: str | Path) -> set[tuple[str, str]]:
    """(node, tensor) pairs listed in quant_param.parquet (empty when no tensor was quantized)."""
    import pyarrow.parquet as pq

    path = Path(debug_dir) / QUANT_PARAM_FILE
    if not path.exists():
        return set()
    t = pq.read_table(path, columns=["NodeName", "TensorName"]).to_pydict()
    return set(zip(t["NodeName"], t["TensorName"]))


def iter_report_rounds(debug_dir: str | Path, columns: list[str] | None = None):
    """The report dataset one round (one Parquet partition) at a time, in round order."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(Path(debug_dir) / REPORT_DIR), format="parquet", partitioning="hive")
    fragments = []
    for frag in dataset.get_fragments():
        expr = ds.get_partition_keys(frag.partition_expression)
        fragments.append((int(expr.get("Round", 0)), frag))
    for _, frag in sorted(fragments, key=lambda t: t[0]):
        yield frag.to_table(columns=columns or _COLUMNS).to_pydict()


def rank_nodes(debug_dir: str | Path) -> list[NodeDamage]:
    """The nodes of a debug folder ranked by damage, worst first."""
    folder = _check_dir(Path(debug_dir))
    pairs = quantized_tensors(folder)
    return rank_rows(iter_report_rounds(folder), {n for n, _ in pairs}, pairs)


def propose_skip_line(ranked: list[NodeDamage], min_score: float = 0.01, limit: int = 5) -> str:
    """``skip_quant_node=a,b`` for the worst quantized nodes scoring at least ``min_score`` ("" if none).

    Only quantized nodes are proposed: skipping a node that already runs in FP32 changes nothing.
    """
    picked = [d.node for d in ranked if d.quantized and d.score >= min_score][:limit]
    return "skip_quant_node=" + ",".join(picked) if picked else ""

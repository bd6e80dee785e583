"""``--max-drop``: keep the nodes that hurt most in FP32 until the output cosine is within a bound.

The bound is on the calibration set: ``1 - mean output cosine <= max_drop``, where the mean runs
over every calibration round (and over the float outputs of a round, as ``runtime.output_cosine``
does). The loop works on FULL_QUANT plans and never recollects statistics: activation ranges do
not depend on which nodes are skipped, so each step only re-places Q/DQ, rebuilds the plan (bias
correction included) and re-evaluates.

1. **Damage, once.** The all-int8 model and the FP32 model run side by side on the first
   ``DAMAGE_ROUNDS`` calibration rounds with every tensor a region node writes (and its inputs)
   exposed; per node, the cosine of what its readers see (the DequantizeLinear output) against
   FP32, averaged over those rounds. A Concat is scored by its worst part (each input's slice of
   the output): one scale shared by parts of very different ranges is the classic failure, and
   the large part would hide it from a whole-tensor cosine. A node's *own* damage is its
   ``1 - cosine`` minus the worst of its inputs', so error a node only inherits does not rank it.
2. **Keep, worst first.** Nodes are ranked by own damage (ties in graph order), and the first k
   are kept FP32 for k = 1, 2, 4, ... until the model is within the bound, then the smallest k in
   the last doubling interval that is within it is found by bisection: about 2·log2(n) model
   builds for n candidates.
3. **Report.** Kept nodes carry the reason ``max_drop: ...`` in the layer table; the result
   records output cosine before and after, the ranking, every step tried, the share of
   quantizable weight parameters still int8, and size and latency against the model without
   the loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import onnx

from ptq_core.debug.stats import cosine
from ptq_core.modes.full.targets import REMOVABLE_ACTIVATIONS
from ptq_core.onnxgraph.walk import producers

DAMAGE_ROUNDS = 8  # rounds used for the per-node damage pass (the first ones, in calibration order)
FP32_CACHE_BYTES = 256 << 20  # FP32 reference outputs are kept in memory up to this size, else recomputed
TOLERANCE = 1e-9  # cosines of identical outputs can miss 1.0 by rounding; a bound of 0 is met by FP32
SLOWER_THAN_FP32 = 1.05  # the loop's model is said to be slower than FP32 beyond this ratio (timing noise)


@dataclass(frozen=True)
class NodeDamage:
    node: str
    op_type: str
    cosine: float  # mean over the damage rounds of the node output's cosine (worst part for Concat)
    own: float  # 1 - cosine minus the worst 1 - cosine of its inputs (>= 0)


@dataclass(frozen=True)
class Step:
    action: str  # "all int8", "keep first k", "give back <node>"
    kept: int
    cosine: float
    drop: float
    within: bool


@dataclass
class Build:
    """One candidate model: the placement, plan, bias diffs and emitted QDQ model for a skip list."""

    place: object
    plan: object
    diffs: dict
    quantized: onnx.ModelProto


@dataclass(frozen=True)
class MaxDropResult:
    """What ``--max-drop`` kept FP32 and what it cost: the summary's record, built once when the loop ends."""

    bound: float
    reached: bool
    candidates: int
    kept: tuple[str, ...]
    cosine_before: float
    cosine_after: float
    damage_rounds: tuple[int, ...]
    eval_rounds: int
    ranking: tuple[NodeDamage, ...]
    steps: tuple[Step, ...]
    weights_int8_before: int  # parameters of the quantizable weights int8 without the loop
    weights_int8_after: int
    size_before: int  # serialized bytes of the model without / with the loop
    size_after: int
    ms_before: float  # batch-1 median latency without / with the loop
    ms_after: float
    notes: tuple[str, ...] = ()
    ms_fp32: float = 0.0  # the FP32 model, timed as the two above

    @property
    def int8_weight_fraction(self) -> float:
        return self.weights_int8_after / self.weights_int8_before if self.weights_int8_before else 1.0

    @property
    def drop_before(self) -> float:
        return max(0.0, 1.0 - self.cosine_before)

    @property
    def drop_after(self) -> float:
        return max(0.0, 1.0 - self.cosine_after)

    def to_dict(self) -> dict:
        """JSON-safe, for benchmark tables (the ranking cut to its first 20 nodes)."""
        d = asdict(self)
        d.update(drop_before=self.drop_before, drop_after=self.drop_after, int8_weight_fraction=self.int8_weight_fraction)
        d["ranking"] = d["ranking"][:20]
        return d


def weight_params_by_node(plan) -> dict[str, int]:
    """Parameters of each node's int8 weights (a shared tensor counts for every node that reads it)."""
    out: dict[str, int] = {}
    for w in plan.weights:
        out[w.node] = out.get(w.node, 0) + int(np.asarray(w.q).size)
    return out


def weight_params(plan) -> int:
    """Parameters of the weights a plan stores as int8 (shared tensors counted once)."""
    seen: dict[str, int] = {}
    for w in plan.weights:
        seen[w.tensor] = int(np.asarray(w.q).size)
    return sum(seen.values())


def border_tensors(model: onnx.ModelProto, target, place, skip: tuple[str, ...]) -> tuple[str, ...]:
    """Every tensor whose statistics the loop may need, so they are collected in the one statistics pass.

    Keeping a node FP32 can put a Q/DQ pair on a tensor that was inside the int8 region (the output
    of a Conv whose Relu is kept FP32). The union over "each candidate alone kept FP32" covers that;
    a tensor only a combination exposes is collected when first needed, once.
    """
    from ptq_core.modes.full.placement import place_qdq
    from ptq_core.modes.full.prepare import observed_tensors

    wanted = set(observed_tensors(place))
    for node in place.nodes:
        wanted.update(observed_tensors(place_qdq(model, target, skip=skip + (node,))))
    return tuple(sorted(wanted))


class FinalizeOnce:
    """An observer that remembers what ``finalize`` returned: the loop rebuilds plans from the same
    statistics many times, and KL's threshold search is most of a rebuild's time."""

    def __init__(self, observer):
        self._observer = observer
        self._ranges: dict = {}

    def finalize(self, qmin: int, qmax: int, symmetric: bool = True):
        key = (qmin, qmax, symmetric)
        if key not in self._ranges:
            self._ranges[key] = self._observer.finalize(qmin, qmax, symmetric)
        return self._ranges[key]

    def __getattr__(self, name: str):
        return getattr(self._observer, name)


# ---------------------------------------------------------------------------------------------
# damage pass


def visible_names(quantized: onnx.ModelProto) -> dict[str, str]:
    """Tensor of the FP32 graph -> the name its readers use in the QDQ graph (the DQ output when quantized)."""
    graph = quantized.graph
    producer = producers(graph.node)
    out: dict[str, str] = {o: o for o in producer}
    out.update({i.name: i.name for i in graph.input})
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        q = producer.get(node.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # weight and bias DQs read initializers
        src = q.input[0]
        out[src] = node.output[0]
        out[node.output[0]] = node.output[0]  # a graph output keeps its name as the DQ output
    return out


def _node_tensor(model: onnx.ModelProto, node: onnx.NodeProto, visible: dict[str, str]) -> str | None:
    """The tensor that carries the node's result in both graphs; a Relu/Clip folded into its producer's Q
    writes the clamp's output instead."""
    out = node.output[0] if node.output else ""
    if out in visible:
        return out
    for other in model.graph.node:
        if other.op_type in REMOVABLE_ACTIVATIONS and other.input and other.input[0] == out and other.output[0] in visible:
            return other.output[0]
    return None


def _concat_parts(node: onnx.NodeProto, inputs: list[np.ndarray]) -> tuple[int, list[int]] | None:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if not inputs:
        return None
    rank = inputs[0].ndim
    axis = axis + rank if axis < 0 else axis
    return axis, [x.shape[axis] for x in inputs]


def _part_cosine(ref: np.ndarray, cand: np.ndarray, parts: tuple[int, list[int]] | None) -> float:
    if parts is None or ref.shape != cand.shape:
        return cosine(ref, cand)
    axis, sizes = parts
    bounds = np.cumsum([0] + sizes)
    return min(cosine(np.take(ref, range(a, b), axis=axis), np.take(cand, range(a, b), axis=axis))
               for a, b in zip(bounds[:-1], bounds[1:]) if b > a)


def node_damage(fp32: onnx.ModelProto, quantized: onnx.ModelProto, candidates: Sequence[str],
                rounds: Sequence, n_rounds: int = DAMAGE_ROUNDS) -> list[NodeDamage]:
    """Per candidate node, cosine of its output (int8 model vs FP32) and its own share of the damage."""
    from ptq_core.onnxgraph.session import make_session
    from ptq_core.stats.collect import expose_tensors

    visible = visible_names(quantized)
    by_name = {n.name: n for n in fp32.graph.node}
    inits = {t.name for t in fp32.graph.initializer}
    node_tensor: dict[str, str] = {}
    node_inputs: dict[str, list[str]] = {}
    folded: set[str] = set()  # a Relu/Clip the emitter folded into its producer's Q: the producer owns the error
    for name in candidates:
        node = by_name[name]
        t = _node_tensor(fp32, node, visible)
        if t is None:
            continue
        node_tensor[name] = t
        node_inputs[name] = [i for i in node.input if i and i not in inits and i in visible]
        if node.op_type in REMOVABLE_ACTIVATIONS and node.input and node.input[0] not in visible:
            folded.add(name)
    wanted = sorted(set(node_tensor.values()) | {i for ins in node_inputs.values() for i in ins})
    if not wanted:
        return []
    ref_session = make_session(expose_tensors(fp32, wanted))
    q_names = [visible[t] for t in wanted]
    q_session = make_session(expose_tensors(quantized, q_names))
    sums = dict.fromkeys(wanted, 0.0)
    concat_sums = {name: 0.0 for name in node_tensor if by_name[name].op_type == "Concat"}
    used = list(rounds)[:max(1, n_rounds)]
    for rnd in used:
        feeds = rnd.feeds()
        ref = dict(zip(wanted, ref_session.run(wanted, feeds)))
        cand = dict(zip(wanted, q_session.run(q_names, feeds)))
        for t in wanted:
            sums[t] += cosine(ref[t], cand[t])
        for name in concat_sums:
            node = by_name[name]
            ins = [ref[i] for i in node.input if i in ref]
            parts = _concat_parts(node, ins) if len(ins) == len([i for i in node.input if i]) else None
            t = node_tensor[name]
            concat_sums[name] += _part_cosine(ref[t], cand[t], parts)
    n = len(used)
    mean = {t: s / n for t, s in sums.items()}
    damage = []
    for name, t in node_tensor.items():
        cos = concat_sums[name] / n if name in concat_sums else mean[t]
        inherited = max((1.0 - mean[i] for i in node_inputs[name]), default=0.0)
        own = 0.0 if name in folded else max(0.0, (1.0 - cos) - inherited)
        damage.append(NodeDamage(name, by_name[name].op_type, cos, own))
    return damage


def rank_nodes(damage: list[NodeDamage], order: Sequence[str]) -> list[NodeDamage]:
    """Worst own damage first; ties (and nodes the pass could not see) in graph order."""
    position = {n: k for k, n in enumerate(order)}
    return sorted(damage, key=lambda d: (-round(d.own, 12), position.get(d.node, len(position))))


# ---------------------------------------------------------------------------------------------
# evaluation and the keep loop


class Evaluator:
    """Mean output cosine of a candidate model against FP32 over the calibration rounds (streamed)."""

    def __init__(self, fp32: onnx.ModelProto, rounds: Sequence):
        from ptq_core.onnxgraph.session import make_session

        self.rounds = list(rounds)
        self._ref = make_session(fp32)
        self._cache: dict[int, list[np.ndarray]] | None = {}
        self._cached_bytes = 0

    def _reference(self, k: int, feeds: dict) -> list[np.ndarray]:
        if self._cache is not None and k in self._cache:
            return self._cache[k]
        out = self._ref.run(None, feeds)
        if self._cache is not None:
            self._cached_bytes += sum(np.asarray(o).nbytes for o in out)
            if self._cached_bytes > FP32_CACHE_BYTES:
                self._cache = None  # too large to keep: recompute from here on
            else:
                self._cache[k] = out
        return out

    def cosine(self, model: onnx.ModelProto) -> float:
        """Mean output cosine over the rounds; an output of a few values (a speech probability) is scored
        over its values from every round together (``session.PooledOutputCosine``)."""
        from ptq_core.onnxgraph.session import PooledOutputCosine, make_session

        session = make_session(model)
        pooled = PooledOutputCosine()
        for k, rnd in enumerate(self.rounds):
            feeds = rnd.feeds()
            pooled.add(self._reference(k, feeds), session.run(None, feeds))
        return pooled.value()


def keep_until_within(fp32: onnx.ModelProto, base: Build, rounds: Sequence, bound: float,
                      rebuild: Callable[[tuple[str, ...], dict[str, str]], Build],
                      latency: Callable[[onnx.ModelProto], float] | None = None,
                      stored: Sequence[str] = ()) -> tuple[MaxDropResult, Build]:
    """Keep the worst nodes of ``base`` in FP32 until ``1 - cosine <= bound``; returns the report and the build.

    ``rebuild(extra_skip, reasons)`` re-places Q/DQ with ``extra_skip`` kept FP32 (reasons for the
    layer table) and returns the new build without recollecting statistics. After the smallest
    worst-first prefix is found, each kept node that has weights is tried back in int8, largest
    first, and stays int8 when the bound still holds (the ranking is greedy; this keeps more
    weights in int8 for a few more builds).

    ``stored``: nodes that compute in FP32 (the latency guard's) but whose weights ``base`` stores as
    8-bit codes. Their weight error is part of the model's drop, so they are candidates too; keeping
    one means keeping its float weights.
    """
    evaluator = Evaluator(fp32, rounds)
    candidates = list(base.place.nodes) + [n for n in stored if n not in base.place.nodes]
    trials = _Trials(evaluator, rebuild, bound, base)
    trials.stored = set(stored) - set(base.place.nodes)
    damage_rounds = [r.index for r in list(rounds)[:DAMAGE_ROUNDS]]
    ranking: list[NodeDamage] = []
    kept: tuple[str, ...] = ()
    if not trials.steps[0].within:
        ranking = rank_nodes(node_damage(fp32, base.quantized, candidates, rounds), [n.name for n in fp32.graph.node])
        seen = {d.node for d in ranking}
        trials.rank([d.node for d in ranking] + [n for n in candidates if n not in seen], ranking)
        kept = trials.smallest_prefix()
        if trials.within(kept):
            kept = trials.give_back(kept, weight_params_by_node(base.plan))
    final = trials.builds[kept]
    cos_after = trials.cosines[kept]
    reached = trials.within(kept)
    if kept and reached and not final.place.nodes:
        trials.notes.append(f"max_drop={bound:g} is met only with no node left in int8: the {len(kept)} kept nodes "
                            "took the whole int8 region with them (the model is FP32)")
    w_before, w_after = weight_params(base.plan), weight_params(final.plan)
    ms_before = latency(base.quantized) if latency else 0.0
    ms_after = latency(final.quantized) if latency and kept else ms_before
    ms_fp32 = latency(fp32) if latency and kept else 0.0
    if kept and ms_after > SLOWER_THAN_FP32 * ms_fp32 > 0:
        trials.notes.append(f"with the kept nodes the model is slower than FP32 on this CPU ({ms_after:.3f} vs "
                            f"{ms_fp32:.3f} ms at batch 1): int8 regions cut into pieces pay for their Q/DQ "
                            "edges; where size is the aim, WEIGHT_QUANT keeps FP32 speed")
    result = MaxDropResult(
        bound=bound, reached=reached, candidates=len(candidates), kept=tuple(kept),
        cosine_before=trials.cosines[()], cosine_after=cos_after,
        damage_rounds=tuple(damage_rounds) if ranking else (), eval_rounds=len(evaluator.rounds),
        ranking=tuple(ranking), steps=tuple(trials.steps),
        weights_int8_before=w_before, weights_int8_after=w_after,
        size_before=base.quantized.ByteSize(), size_after=final.quantized.ByteSize(),
        ms_before=ms_before, ms_after=ms_after, notes=tuple(trials.notes), ms_fp32=ms_fp32,
    )
    return result, final


class _Trials:
    """The keep loop's state: every kept set tried, its build and cosine, the step log and notes."""

    def __init__(self, evaluator: Evaluator, rebuild: Callable, bound: float, base: Build):
        self.evaluator, self.rebuild, self.bound = evaluator, rebuild, bound
        cos0 = evaluator.cosine(base.quantized)
        self.builds: dict[tuple[str, ...], Build] = {(): base}
        self.cosines: dict[tuple[str, ...], float] = {(): cos0}
        self.steps = [Step("all int8", 0, cos0, max(0.0, 1.0 - cos0), self._ok(cos0))]
        self.notes: list[str] = []
        self.order: list[str] = []
        self.rank_of: dict[str, int] = {}
        self.damage: dict[str, NodeDamage] = {}
        self.stored: set[str] = set()  # FP32-compute nodes with 8-bit stored weights: kept = float weights

    def _ok(self, cos: float) -> bool:
        return 1.0 - cos <= self.bound + TOLERANCE

    def within(self, nodes: tuple[str, ...]) -> bool:
        return self._ok(self.cosines[nodes])

    def rank(self, order: list[str], ranking: list[NodeDamage]) -> None:
        """The order nodes are kept in (worst first), for the trials and the layer table's reasons."""
        self.order = order
        self.rank_of = {n: k for k, n in enumerate(order, start=1)}
        self.damage = {d.node: d for d in ranking}

    def reasons(self, nodes: tuple[str, ...]) -> dict[str, str]:
        out = {}
        drop0 = max(0.0, 1 - self.cosines[()])
        for node in nodes:
            d = self.damage.get(node)
            part = "worst part's " if d and d.op_type == "Concat" else ""
            what = f"{part}output cosine {d.cosine:.4f} in the int8 model" if d else "not measured"
            kept = "kept FP32 ("
            if node in self.stored:  # the guard keeps it FP32 for speed; the loop keeps its float weights
                kept, what = "float weights kept (FP32 for speed; ", what.replace("in the int8 model",
                                                                                   "with 8-bit stored weights")
            out[node] = (f"max_drop: {kept}rank {self.rank_of[node]}, {what}; int8 model's drop "
                         f"{drop0:.4g} > {self.bound:g})")
        return out

    def trial(self, nodes: tuple[str, ...], action: str) -> bool:
        self.builds[nodes] = self.rebuild(nodes, self.reasons(nodes))
        cos = self.cosines[nodes] = self.evaluator.cosine(self.builds[nodes].quantized)
        self.steps.append(Step(action, len(nodes), cos, max(0.0, 1.0 - cos), self._ok(cos)))
        return self.steps[-1].within

    def smallest_prefix(self) -> tuple[str, ...]:
        """k = 1, 2, 4, ... until within (or everything is kept), then bisection for the smallest k."""
        order = self.order
        lo, hi, k = 0, None, 1
        while hi is None:
            k = min(k, len(order))
            if self.trial(tuple(order[:k]), f"keep first {k}"):
                hi = k
            elif k == len(order):
                hi = k
                self.notes.append(f"max_drop={self.bound:g} is not reached even with all {k} candidate nodes in FP32 "
                                  f"(drop {self.steps[-1].drop:.4g}); everything that can be kept FP32 was kept")
            else:
                lo, k = k, 2 * k
        if self.steps[-1].within:  # the smallest k in (lo, hi] within the bound
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self.trial(tuple(order[:mid]), f"keep first {mid}"):
                    hi = mid
                else:
                    lo = mid
        return tuple(order[:hi])

    def give_back(self, kept: tuple[str, ...], params: dict[str, int]) -> tuple[str, ...]:
        """Try each kept node with weights back in int8, largest first; keep the ones the bound allows."""
        for node in sorted((n for n in kept if params.get(n)), key=lambda n: (-params[n], self.rank_of[n])):
            trial_nodes = tuple(n for n in kept if n != node)
            if trial_nodes and self.trial(trial_nodes, f"give back {node}"):
                kept = trial_nodes
        return kept

"""What onnxruntime's CPU integer kernels compute, and the int8 weight forms exact on every CPU.

onnxruntime's x86 GEMM and convolution kernels multiply uint8 activations by int8 weights
(U8S8). With AVX512-VNNI or AVX-VNNI they use ``VPDPBUSD``: four u8 x s8 products summed
straight into int32, exact. Without VNNI (AVX2, AVX-512 without VNNI) the same kernels use
``VPMADDUBSW``, which adds each *adjacent pair* of products into a **saturating int16** before
widening: ``x0*w0 + x1*w1`` is clamped to [-32768, 32767]. With activations up to 255 and weights
that use the whole int8 range, ``255 * (127 + 127) = 64770`` overflows and the result is silently
wrong (docs/int8-portability.md has the measurements). Arm64 kernels (UDOT/SDOT, UMMLA) are exact.

Which two products share a pair depends on how MLAS packs the weight (rows of a MatMul's B,
input channels of a convolution in its NHWC kernels, the flattened C*kh*kw axis in im2col), and
that packing is an implementation detail that differs between kernels and versions. So the only
form that is exact on every kernel is one where *any* two codes of one output channel cannot
overflow: ``|q| <= 64`` (``255 * (64 + 64) = 32640``). That is the ``portable`` form, the default.
It is onnxruntime's own ``reduce_range`` grid for int8 weights ([-64, 64]).

Alternatives we measured and did not take as the default (same document): uint8 weights (U8U8)
are exact but lose MLAS's symmetric convolution kernels (1.6x slower QLinearConv on AVX2) and
VNNI's fast path; int8 activations (S8S8) are 6x slower on x86 without AVX-VNNI-INT8.

``vnni`` keeps the full symmetric range [-127, 127] (and [-128, 127] per layer): one bit more on
every weight, correct on x86 with VNNI and on Arm64 only. It is an explicit opt-in
(``[ptqflow] int8_form = vnni``) and the model says so in its ``metadata_props``.

This module also holds an exact NumPy model of the non-VNNI arithmetic
(:func:`saturating_u8s8_matmul`), so tests can check every weight we emit on any machine,
VNNI or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
U8_MAX = 255
# The largest |code| for which any two products u8 * s8 fit a signed int16: 255 * 2 * 64 = 32640.
PAIR_SAFE_LIMIT = INT16_MAX // (2 * U8_MAX)  # 64

METADATA_FORM = "ptqflow.int8_form"
METADATA_REQUIRES = "ptqflow.requires_cpu"


@dataclass(frozen=True)
class Int8Form:
    """How int8 weights read by onnxruntime's u8 x s8 kernels are coded."""

    name: str
    weight_limit: int | None  # largest |code| of such a weight; None = the target's own range
    requires: str  # "" = every CPU onnxruntime runs on; else what the model needs, in words
    doc: str

    def clamp(self, qmin: int, qmax: int) -> tuple[int, int]:
        """The target's weight range narrowed to this form's limit."""
        if self.weight_limit is None:
            return qmin, qmax
        return max(qmin, -self.weight_limit), min(qmax, self.weight_limit)

    def metadata(self) -> dict[str, str]:
        """What a model in this form records about itself (``metadata_props``)."""
        out = {METADATA_FORM: self.name}
        if self.requires:
            out[METADATA_REQUIRES] = self.requires
        return out

    def summary_line(self) -> str | None:
        """One line for the conversion summary, or None when nothing needs saying."""
        if not self.requires:
            return None
        return (f"int8 form '{self.name}': this model is correct only on {self.requires}; on x86 CPUs "
                f"without VNNI its int8 kernels saturate and give wrong results (metadata {METADATA_REQUIRES})")


INT8_FORMS: dict[str, Int8Form] = {
    "portable": Int8Form(
        name="portable", weight_limit=PAIR_SAFE_LIMIT, requires="",
        doc="int8 weights in [-64, 64]: exact on every CPU (x86 with or without VNNI, Arm64)"),
    "vnni": Int8Form(
        name="vnni", weight_limit=None, requires="x86-64 CPUs with AVX512-VNNI or AVX-VNNI, or Arm64",
        doc="full-range int8 weights: one bit more, but wrong on x86 CPUs without VNNI"),
}
DEFAULT_FORM = "portable"


def get_form(name: str | None) -> Int8Form:
    return INT8_FORMS[(name or DEFAULT_FORM).strip().lower()]


# ---------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "asimddp", "i8mm")


def machine_isa() -> str:
    """CPU model, architecture and the ISA flags that pick onnxruntime's int8 kernels, in one line.

    E.g. ``AMD EPYC (x86_64: avx2)``. Every timing we keep or report names this: a decision measured
    on one kind of CPU says nothing about another.
    """
    import platform

    flags, model = set(), ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key in ("model name", "Model", "CPU part") and not model:
                    model = value.strip()
    except OSError:
        pass
    have = [f for f in ISA_FLAGS if f in flags]
    return f"{model or platform.processor() or 'unknown CPU'} ({platform.machine()}: {' '.join(have) or 'no listed flags'})"


def has_exact_u8s8() -> bool:
    """Whether this machine's onnxruntime u8 x s8 kernels are exact for full-range weights (VNNI or Arm64)."""
    import platform

    isa = machine_isa()
    return platform.machine().lower() in ("aarch64", "arm64") or "vnni" in isa


# ---------------------------------------------------------------------------------------------
# the non-VNNI kernel's arithmetic
# ---------------------------------------------------------------------------------------------

def saturating_u8s8_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` as onnxruntime's x86 U8S8 kernels compute it without VNNI.

    ``x`` uint8 (M, K), ``w`` int8 (K, N). Products of rows 2i and 2i+1 of ``w`` are added into a
    saturating int16 (``VPMADDUBSW``), then the pairs are summed in int32 (``VPMADDWD`` by ones and
    ``VPADDD``); an odd K is padded with a zero row, as MLAS pads its packed buffers. Exact integer
    math is ``x.astype(int64) @ w.astype(int64)``; the two agree iff no pair saturates.
    """
    x = np.asarray(x)
    w = np.asarray(w)
    if x.dtype != np.uint8 or w.dtype != np.int8:
        raise TypeError(f"u8 x s8 expected, got {x.dtype} x {w.dtype}")
    k = w.shape[0]
    if k % 2:
        x = np.concatenate([x, np.zeros((x.shape[0], 1), np.uint8)], axis=1)
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int8)], axis=0)
    xe = x[:, 0::2].astype(np.int64)
    xo = x[:, 1::2].astype(np.int64)
    we = w[0::2].astype(np.int64)
    wo = w[1::2].astype(np.int64)
    # pair sums for every (m, pair, n): (M, K/2, 1) * (1, K/2, N)
    pairs = xe[:, :, None] * we[None] + xo[:, :, None] * wo[None]
    pairs = np.clip(pairs, INT16_MIN, INT16_MAX)
    return pairs.sum(axis=1).astype(np.int32)


def worst_case_activations(w: np.ndarray) -> np.ndarray:
    """Two uint8 rows per output column that drive every pair of ``w`` (K, N) to its extreme.

    Row 2n is 255 where column n's weight is positive (the largest positive sums), row 2n+1 is 255
    where it is negative. Any saturation ``w`` can suffer shows up in one of them.
    """
    w = np.asarray(w)
    k, n = w.shape
    x = np.zeros((2 * n, k), np.uint8)
    x[0::2] = np.where(w.T > 0, U8_MAX, 0)
    x[1::2] = np.where(w.T < 0, U8_MAX, 0)
    return x


def saturating_columns(w: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Indices of the columns of ``w`` (K, N) int8 whose worst-case result the non-VNNI kernel gets wrong.

    Each column is run through :func:`saturating_u8s8_matmul` with its own two worst-case activation
    rows (:func:`worst_case_activations`), ``chunk`` columns at a time so memory stays bounded.
    """
    w = np.asarray(w, np.int8)
    wrong = []
    for start in range(0, w.shape[1], chunk):
        part = w[:, start:start + chunk]
        x = worst_case_activations(part)
        exact = x.astype(np.int64) @ part.astype(np.int64)
        got = saturating_u8s8_matmul(x, part)
        cols = np.arange(part.shape[1])
        bad = (got[0::2][cols, cols] != exact[0::2][cols, cols]) | (got[1::2][cols, cols] != exact[1::2][cols, cols])
        wrong.append(start + np.flatnonzero(bad))
    return np.concatenate(wrong) if wrong else np.zeros(0, np.int64)


def reduction_layouts(codes: np.ndarray, op_type: str, input_index: int = 1, trans_b: bool = False) -> list[np.ndarray]:
    """The (K, N) matrices a weight can be packed as by onnxruntime's kernels, one per plausible K order.

    MatMul B (.., K, N): each batch matrix. Gemm B: (K, N) (transposed when ``trans_b``). Conv W
    (M, C/g, kh, kw): K in channels-last order kh*kw*C (what onnxruntime 1.32's QLinearConv pairs on
    AVX2, measured: docs/int8-portability.md) and in ONNX order C*kh*kw (an im2col kernel's). The
    portable form does not rely on any of these orders: with every |code| <= :data:`PAIR_SAFE_LIMIT`
    no two codes of a channel can overflow, whichever the kernel pairs.
    """
    codes = np.asarray(codes)
    if op_type == "Conv" and codes.ndim >= 3:
        m = codes.shape[0]
        onnx_order = codes.reshape(m, -1).T
        channels_last = np.moveaxis(codes, 1, -1).reshape(m, -1).T
        return [np.ascontiguousarray(onnx_order), np.ascontiguousarray(channels_last)]
    if op_type == "Gemm":
        b = codes.T if trans_b else codes
        return [np.ascontiguousarray(b)]
    if codes.ndim == 2:
        return [codes]
    return [np.ascontiguousarray(m) for m in codes.reshape((-1,) + codes.shape[-2:])]


# ---------------------------------------------------------------------------------------------
# auditing a written model
# ---------------------------------------------------------------------------------------------

INTEGER_WEIGHT_READERS = ("Conv", "MatMul", "Gemm")  # through a DequantizeLinear that onnxruntime fuses


def integer_weights(model) -> list[tuple[str, str, np.ndarray, bool]]:
    """(node, op type, int8 codes, transB) of every int8 weight one of onnxruntime's u8 x s8 kernels reads.

    QDQ models: an int8 initializer behind a DequantizeLinear that feeds input 1 of a Conv, MatMul
    or Gemm (the fused QLinearConv/QLinearMatMul/QGemm read the codes). Dynamic models: input 1 of
    MatMulInteger.
    """
    from onnx import numpy_helper

    from ptq_core.onnxgraph.walk import readers

    inits = {t.name: t for t in model.graph.initializer}

    def codes(name):
        t = inits.get(name)
        return None if t is None or t.data_type != 3 else numpy_helper.to_array(t)  # 3 = INT8

    reading = readers(model.graph.node)
    out = []
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and (q := codes(n.input[0])) is not None:
            for user, idx in reading.get(n.output[0], []):
                if user.op_type in INTEGER_WEIGHT_READERS and idx == 1:
                    trans_b = any(a.name == "transB" and a.i for a in user.attribute)
                    out.append((user.name, user.op_type, q, trans_b))
        elif n.op_type == "MatMulInteger" and len(n.input) > 1 and (q := codes(n.input[1])) is not None:
            out.append((n.name, "MatMul", q, False))
    return out


def saturating_weights(model) -> list[str]:
    """One line per int8 weight of ``model`` that onnxruntime's non-VNNI x86 kernels can get wrong
    (worst-case activations, every K order of :func:`reduction_layouts`); empty = correct everywhere."""
    bad = []
    for node, op_type, codes, trans_b in integer_weights(model):
        for k_by_n in reduction_layouts(codes, op_type, trans_b=trans_b):
            cols = saturating_columns(k_by_n)
            if cols.size:
                bad.append(f"{node} ({op_type}): {cols.size} of {k_by_n.shape[1]} output channels, e.g. channel {int(cols[0])}")
                break
    return bad

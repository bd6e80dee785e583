"""How an entropy group's codes are dealt onto lanes, and how many steps and window chunks decode them.

Each choice trades stored bytes (segment lengths) against the decode chain's graph bytes and the
copying onnxruntime does while folding it; the lane layout itself is described in ``entropy_group``.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ptq_core.storage.bitstream import bit_length

__all__ = ["choose_chunk", "choose_steps", "lane_grid", "lane_layout", "segment_lengths", "window_bytes", "window_fits"]

_MAX_STEPS = 1024  # bounds the node count (8 per step)


def lane_layout(n: int, steps: int) -> tuple[int, int]:
    """(lanes, steps) for about ``steps`` steps: lanes even, steps = ceil(n / lanes)."""
    lanes = -(-n // max(1, steps))
    lanes += lanes % 2
    return lanes, -(-n // lanes)


def lane_grid(lens: np.ndarray, lanes: int, steps: int) -> np.ndarray:
    """Code lengths as a [steps, lanes] grid (symbol i at [i // lanes, i % lanes]), 0-padded."""
    grid = np.zeros(lanes * steps, dtype=np.int32)
    grid[: lens.size] = lens
    return grid.reshape(steps, lanes)


def segment_lengths(grid: np.ndarray) -> np.ndarray:
    """Bit length of every segment (forward lane m + backward lane segments + m)."""
    per_lane = grid.sum(axis=0, dtype=np.int64)
    half = per_lane.size // 2
    return per_lane[:half] + per_lane[half:]


_STEP_OPS = ("Div", "Mod", "Gather", "Gather", "Div", "Mod", "Gather", "Add")
# per chunk: the window nodes and the carry to the next chunk, less the first step's Div and Mod
_CHUNK_OPS = ("Reshape", "Add", "Gather", "Cast", "MatMul", "Reshape", "Add", "Sub", "Div", "Add", "Mod")
_CHUNK_SAVED = ("Div", "Mod")


def _ops_graph_bytes(ops: tuple[str, ...], prefix_len: int) -> int:
    """Serialized bytes of these nodes with two inputs and names of this prefix length."""
    name = "x" * (prefix_len + 2)
    return sum(helper.make_node(op, [name, name], [name]).ByteSize() + 3 for op in ops)


def _lane_sums(lens: np.ndarray, lanes: int, steps: int) -> np.ndarray:
    """Bits of every lane: the sum of lens[j], lens[j + lanes], ... (no padded copy of lens)."""
    full = (steps - 1) * lanes
    sums = lens[:full].reshape(steps - 1, lanes).sum(axis=0, dtype=np.int64)
    tail = lens[full:]
    sums[: tail.size] += tail
    return sums


def choose_steps(lens: np.ndarray, prefix_len: int) -> int:
    """Steps minimizing stored segment lengths + per-step graph bytes.

    About (n / 2T) segments of ~8 bits against T steps of ``step_bytes`` puts the optimum near
    sqrt(n / (2 step_bytes)); the candidates around it are measured exactly.
    """
    n = lens.size
    chunk_bytes = _ops_graph_bytes(_CHUNK_OPS, prefix_len) - _ops_graph_bytes(_CHUNK_SAVED, prefix_len)
    step_bytes = _ops_graph_bytes(_STEP_OPS, prefix_len) + chunk_bytes / 12
    guess = np.sqrt(n / (2 * step_bytes))
    best_steps, best_cost = 1, None
    for target in sorted({int(np.clip(round(guess * 2 ** (k / 4)), 1, _MAX_STEPS)) for k in range(-8, 9)}):
        lanes, steps = lane_layout(n, target)
        per_lane = _lane_sums(lens, lanes, steps)
        seg = per_lane[: lanes // 2] + per_lane[lanes // 2 :]
        width = bit_length(int(seg.max() - seg.min()))
        cost = (lanes // 2) * width / 8 + steps * step_bytes
        if best_cost is None or cost < best_cost:
            best_steps, best_cost = steps, cost
    return best_steps


def window_bytes(rows: np.ndarray, chunk: int) -> int:
    """Bytes each lane's window needs so that every read of every chunk of ``chunk`` steps fits.

    ``rows`` holds every lane's bit position before each step; a chunk's window starts at the
    byte of its first position and must reach 2 bytes past the byte of its last one.
    """
    steps = rows.shape[0]
    first = rows[0:steps:chunk] >> 3
    last = rows[np.minimum(np.arange(chunk - 1, steps + chunk - 1, chunk), steps - 1)] >> 3
    return int((last - first).max()) + 3


def choose_chunk(rows: np.ndarray, nbytes: int, max_len: int, prefix_len: int) -> tuple[int, int]:
    """(steps per chunk, window bytes) minimizing chunk graph bytes + folding copy volume.

    onnxruntime copies every input of a node it folds, so what the folding costs is about the
    bytes the folded nodes read: each chunk gathers its windows from the whole stream (twice
    nbytes), each step reads its chunk's words (lanes * (window - 2) int32).  One graph byte is
    weighed against 32 KB copied (about 20 us).
    """
    steps, lanes = rows.shape
    chunk_bytes = _ops_graph_bytes(_CHUNK_OPS, prefix_len) - _ops_graph_bytes(_CHUNK_SAVED, prefix_len)
    best: tuple[float, int, int] | None = None
    for chunk in sorted({steps, *(k for k in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k < steps)}):
        window = window_bytes(rows, chunk)
        if not window_fits(lanes, window):
            continue
        chunks = -(-steps // chunk)
        copied = chunks * (2 * (nbytes + window) + 9 * lanes * window)
        copied += steps * (4 * lanes * (window - 2) + (4 << max_len))
        cost = chunks * chunk_bytes + copied / 32768
        if best is None or cost < best[0]:
            best = (cost, chunk, window)
    if best is None:
        raise ValueError(f"{lanes} lanes are too many for int32 window addresses; use more steps")
    return best[1], best[2]


def window_fits(lanes: int, window: int) -> bool:
    """Local bit addresses (8 * lanes * window) stay int32 and the window words below 1 GiB."""
    return 8 * lanes * window < 2**31 and 4 * lanes * window < 2**30

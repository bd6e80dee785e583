"""Whether coding tensors as one entropy group beats coding each alone with ``encode_split``.

Measures both ways in stored and graph bytes, so a caller can see what a group saves or costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptq_core.storage.decode_ops import decode_nodes
from ptq_core.storage.entropy_decode_ops import graph_nbytes, group_nodes
from ptq_core.storage.entropy_encode import encode_group
from ptq_core.storage.split_coding import encode_split

__all__ = ["GroupSizes", "compare_sizes", "worth_it"]


@dataclass(frozen=True)
class GroupSizes:
    """Bytes of a group coded together versus each tensor coded alone with ``encode_split``."""

    group_stored: int
    group_graph: int
    split_stored: int
    split_graph: int
    codes: int

    @property
    def group_total(self) -> int:
        return self.group_stored + self.group_graph

    @property
    def split_total(self) -> int:
        return self.split_stored + self.split_graph


def compare_sizes(codes: list[np.ndarray], opset: int = 17, prefix: str = "q0_") -> GroupSizes:
    """Encode both ways and measure stored and graph bytes (same name prefix length)."""
    group = encode_group(codes, prefix_len=len(prefix))
    nodes, inits, _ = group_nodes(group, prefix, opset)
    split_stored = split_graph = 0
    for q in codes:
        enc = encode_split(np.asarray(q))
        s_nodes, s_inits, _ = decode_nodes(enc, prefix, opset)
        split_stored += enc.nbytes
        split_graph += graph_nbytes(s_nodes, s_inits, enc.nbytes)
    return GroupSizes(group.nbytes, graph_nbytes(nodes, inits, group.nbytes), split_stored, split_graph, group.size)


def worth_it(codes: list[np.ndarray]) -> bool:
    """True when group coding (stored + graph bytes) beats per-tensor split coding."""
    sizes = compare_sizes(codes)
    return sizes.group_total < sizes.split_total

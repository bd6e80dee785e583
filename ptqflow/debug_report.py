"""Terminal output of the debug reports: ``ptq report DIR`` and the line after a debug conversion."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from ptq_core.debug.rank import NodeDamage, propose_skip_line, rank_nodes


def print_ranking(ranked: list[NodeDamage], skip_line: str, folder: str, top: int = 15) -> None:
    # piped or redirected output gets a wide table rather than rich's 80 columns, where "why" wrapped word by word
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"Nodes ranked by quantization damage ({folder}); bits: Add/Concat input range disagreement")
    for col, justify in (("#", "right"), ("node", "left"), ("op", "left"), ("score", "right"), ("out cos", "right"),
                         ("drop", "right"), ("clip", "right"), ("bits", "right")):
        table.add_column(col, justify=justify, no_wrap=col != "node", overflow="fold")
    table.add_column("why", justify="left", overflow="fold", ratio=1, min_width=24)
    for i, d in enumerate(ranked[:top], start=1):
        op = d.op_type if d.quantized else f"{d.op_type} [yellow](fp32)[/]"
        table.add_row(str(i), d.node, op, f"{d.score:.4f}", f"{d.output_cosine:.6f}", f"{d.cosine_drop:.6f}",
                      f"{100 * d.clip:.2f}%", f"{d.range_bits:.1f}", d.reason)
    console.print(table)
    if skip_line:
        console.print("Proposed for [common_quant_param]:", markup=False)  # the section name, not rich markup
        print(skip_line)
    else:
        console.print("No quantized node stands out; nothing to skip.")


def report_command(folder: str, top: int) -> int:
    ranked = rank_nodes(folder)
    print_ranking(ranked, propose_skip_line(ranked), folder, top)
    return 0


def print_debug_location(debug: dict | None) -> None:
    """After ``ptq convert`` with debug_info_save_path: where the reports went and what to skip."""
    if not debug:
        return
    print(f"debug reports ({debug['rounds']} round(s), {debug['seconds']:.1f} s): {debug['folder']} "
          f"-- page {debug['page']}; ranking: ptq report {debug['folder']}")
    if debug.get("skip_line"):
        print(f"proposed: {debug['skip_line']}")

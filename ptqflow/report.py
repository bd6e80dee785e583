"""Terminal output: notices, the layer progress bar and the end-of-run summary table."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ptq_core.summary import Summary

console: Console
err_console: Console


def reset_consoles() -> None:
    """(Re)make the consoles for the current stdout/stderr: at import, and in a warm runner's child once
    the caller's terminal is in place (a console fixes its width and colours when it is made)."""
    global console, err_console
    console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 150)
    err_console = Console(stderr=True, highlight=False)


reset_consoles()


def notice(text: str) -> None:
    err_console.print(f"ptq: notice: {text}", markup=False, soft_wrap=True)  # one line, whatever the width


@contextmanager
def layer_progress() -> Iterator:
    """A progress bar over weight tensors, shown only on a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[node]}"), console=err_console, transient=True) as bar:
        task = bar.add_task("quantizing weights", total=None, node="")

        def update(done: int, total: int, node: str) -> None:
            bar.update(task, completed=done, total=total, node=node)

        yield update


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f}"


def print_summary(summary: Summary) -> None:
    table = Table(title=f"{summary.quant_type} bit_num={summary.bits}: per-layer decisions", show_lines=False)
    for col, justify in (("node", "left"), ("op", "left"), ("shape", "left"), ("bits", "right"),
                         ("encoding", "left"), ("eff. bits", "right"), ("step", "right"), ("weight cos", "right"),
                         ("KiB fp32", "right"), ("KiB stored", "right"), ("detail", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for row in summary.rows():
        quant = row["status"] == "quantized"
        table.add_row(
            row["node"], row["op"], row["shape"],
            (str(row["bits"]) if row["bits"] else "mixed") if quant else "[yellow]fp32[/]",
            row["encoding"] or "-",
            f"{row['effective_bits']:.2f}" if quant else "-",
            f"{row['step']:.3g}" if row["step"] is not None else "-",
            f"{row['weight_cosine']:.5f}" if row["weight_cosine"] is not None else "-",
            _kb(row["bytes_fp32"]), _kb(row["bytes_stored"]),
            row["detail"] if quant else f"[yellow]skipped:[/] {row['detail']}",
        )
    console.print(table)
    totals = Table(show_header=False, box=None)
    totals.add_column(style="bold")
    totals.add_column()
    from rich.markup import escape

    for label, text in summary_lines(summary):
        totals.add_row(label, escape(text))  # "[ptqflow] ..." is text, not a style
    console.print(totals)


def summary_lines(summary: Summary) -> list[tuple[str, str]]:
    """The totals under the layer table as (label, text) rows of plain text: the terminal, the run log and
    the dashboard's summary artifact all print these."""
    t = summary.totals()
    stored = (f" ({t['layers_int8_storage']} of them FP32 compute on 8-bit stored weights)"
              if t.get("layers_int8_storage") else "")
    rows = [("layers", f"{t['layers_quantized']} quantized, {t['layers_skipped']} skipped{stored}"),
            ("size", f"{_kb(t['size_before_bytes'])} KiB -> {_kb(t['size_after_bytes'])} KiB "
                     f"({t['compression_ratio']:.2f}x smaller)"),
            ("output cosine vs FP32", f"{t['output_cosine']:.6f} on {t['cosine_inputs']}"
             if t["output_cosine"] is not None else t["cosine_inputs"])]
    rows += list(summary.facts)
    if summary.init_scale is not None:
        rows.append(("init_scale", f"{summary.init_scale:g}"))
    if summary.auto_tune:
        steps = ", ".join(f"{s['init_scale']:.4g}->{s['cosine']:.4f}" for s in summary.auto_tune["steps"])
        rows.append(("auto_tune", f"picked {summary.auto_tune['init_scale']:.4g} (cosine "
                                  f"{summary.auto_tune['cosine']:.4f}); tried {steps}"))
    if summary.speed:
        guard, timed_on = summary.speed, summary.speed.timed_on
        rows.append(("latency guard", f"{len(guard.demoted)} node(s) kept FP32 where int8 is not faster here; "
                                      f"batch-1 latency FP32 {guard.fp32_ms:.3f} ms, int8 {guard.int8_ms:.3f} ms"
                                      + (f"; timed on {timed_on} (another CPU may decide otherwise)" if timed_on else "")))
    form_line = summary.int8_form_line()
    if form_line:
        rows.append(("int8 form", form_line))
    if summary.max_drop:
        rows += max_drop_lines(summary.max_drop)
    if summary.timings:
        rows.append(("phases", ", ".join(f"{k[:-2].replace('_', ' ')} {v:.2f} s" for k, v in summary.timings.items())))
    rows.append(("wall time", f"{t['wall_time_s']:.2f} s"))
    if summary.time_split:
        rows.append(("time split", ", ".join(f"{k} {v:.2f} s" for k, v in summary.time_split.items())))
    return rows


def lead_columns(rows: list[dict], lead) -> list[dict]:
    """``rows`` with the ``lead`` columns first (those present, in that order), the rest after as they were:
    the dashboard's table view shows about eight columns at 1400 px and cuts the rest."""
    first = [k for k in lead if rows and k in rows[0]]
    return [{**{k: r[k] for k in first}, **{k: v for k, v in r.items() if k not in first}} for r in rows]


def verdict(summary: Summary) -> str:
    """One line first: how much smaller, how close to FP32, how many layers int8."""
    t = summary.totals()
    cos = f"output cosine {t['output_cosine']:.6f}" if t["output_cosine"] is not None else "output cosine not measured"
    return (f"{Path(summary.model).name} -> {Path(summary.output).name}: {summary.quant_type}, "
            f"{t['compression_ratio']:.2f}x smaller ({_kb(t['size_before_bytes'])} -> {_kb(t['size_after_bytes'])} KiB), "
            f"{cos}, {t['layers_quantized']} layer(s) quantized, {t['layers_skipped']} kept float")


def max_drop_lines(md) -> list[tuple[str, str]]:
    """``--max-drop``: what was kept FP32 and what it cost, as (label, text) rows."""
    kept = md.kept
    names = ", ".join(kept[:8]) + (f" and {len(kept) - 8} more" if len(kept) > 8 else "")
    state = "within" if md.reached else "NOT within"
    rows = [
        ("max_drop", f"bound {md.bound:g}: output drop {md.drop_before:.4g} -> {md.drop_after:.4g} "
                     f"(cosine {md.cosine_before:.6f} -> {md.cosine_after:.6f} over {md.eval_rounds} "
                     f"calibration rounds), {state} the bound"),
        ("max_drop kept FP32", f"{len(kept)} of {md.candidates} candidate nodes" + (f": {names}" if kept else "")),
        ("max_drop cost", f"{100 * md.int8_weight_fraction:.1f} % of quantizable weight parameters still int8; "
                          f"model {md.size_before / 1024:,.1f} -> {md.size_after / 1024:,.1f} KiB, "
                          f"batch-1 latency {md.ms_before:.3f} -> {md.ms_after:.3f} ms"),
    ]
    rows += [("max_drop notice", note) for note in md.notes]
    return rows


def print_sweep(result: dict) -> None:
    """The sweep's points with their three objectives; Pareto points and the pick marked."""
    rows = result["rows"]
    fixed = {"point", "size_bytes", "latency_ms", "cosine", "compression_ratio", "model", "config", "pareto", "best"}
    axes = [k for k in rows[0] if k not in fixed] if rows else []
    table = Table(title="sweep: * = Pareto-optimal, > = picked")
    for col in ["", "point", *axes, "KiB", "ratio", "latency ms", "cosine"]:
        table.add_column(col, justify="left" if col in axes or col == "" else "right")
    for row in rows:
        mark = (">" if row["best"] else " ") + ("*" if row["pareto"] else " ")
        table.add_row(mark, str(row["point"]), *[str(row[a]) for a in axes], _kb(row["size_bytes"]),
                      f"{row['compression_ratio']:.2f}", f"{row['latency_ms']:.3f}", f"{row['cosine']:.6f}")
    console.print(table)
    console.print(f"best point {result['best']}: wrote {result['best_config']}; wall time {result['wall_time_s']:.1f} s",
                  markup=False)

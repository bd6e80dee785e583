"""A self-contained HTML page for a debug folder: inline SVG charts and tables, no scripts, no network.

Shows the per-layer output cosine (mean over rounds as bars, worst round as a tick) in execution
order, the ranked table with the proposed ``skip_quant_node`` line, the output summary, and
FP32-vs-dequantized histograms of the worst activations (small fixed-bin histograms the rounds
handed back, never raw tensors).
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from ptq_core.files import write_atomic

PAGE = "debug_report.html"
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td.l,th.l{text-align:left} code{background:#f3f3f3;padding:2px 4px}
.hist{display:inline-block;margin:0 16px 16px 0;vertical-align:top;font-size:12px}
tr.fp32 td{color:#777;background:#f4f4f4}
"""


_FP32_GREY = "#b0b0b0"  # a layer kept FP32: what it loses comes from its int8 inputs, not from itself


def _color(score: float) -> str:
    if score >= 0.1:
        return "#d62728"
    if score >= 0.01:
        return "#ff7f0e"
    return "#1f77b4"


def cosine_chart(ranked, width: int = 1100, height: int = 340) -> str:
    """Bars of each node's lost cosine, 1 - mean output cosine, on a log axis, in execution order.

    Quantized outputs sit at 1e-6..1e-3; a broken one at 1e-2 and above, so a log axis is the one where
    the two are both visible (a linear cosine axis shows every bar full).
    """
    import math

    nodes = sorted(ranked, key=lambda d: d.order)
    if not nodes:
        return '<svg id="cosine-chart" width="10" height="10"></svg>'
    left, right, top, bottom = 60, 10, 10, 110
    plot_w, plot_h = width - left - right, height - top - bottom
    floor = -7.0
    step = plot_w / len(nodes)

    def y(cos: float) -> float:
        lost = max(10 ** floor, min(1.0, 1.0 - cos)) if math.isfinite(cos) else 1.0
        return top + plot_h * (1.0 - (math.log10(lost) - floor) / -floor)

    parts = [f'<svg id="cosine-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="1 - output cosine per node">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#999"/>']
    for e in range(int(floor), 1):
        yy = top + plot_h * (1.0 - (e - floor) / -floor)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{yy + 4:.1f}" font-size="10" text-anchor="end">1e{e}</text>')
    label_every = max(1, len(nodes) // 60)
    bottom_y = top + plot_h
    for i, d in enumerate(nodes):
        x = left + i * step
        bar_top = y(d.output_cosine)
        kept = "" if d.quantized else " (kept FP32)"
        parts.append(f'<rect class="bar{"" if d.quantized else " fp32"}" x="{x + 0.1 * step:.1f}" y="{bar_top:.1f}" '
                     f'width="{max(1.0, 0.8 * step):.1f}" height="{max(1.0, bottom_y - bar_top):.1f}" '
                     f'fill="{_color(d.score) if d.quantized else _FP32_GREY}"><title>{escape(d.node)} '
                     f'({escape(d.op_type)}){kept}: cosine {d.output_cosine:.6f}, worst {d.min_output_cosine:.6f}, '
                     f'score {d.score:.4f}</title></rect>')
        parts.append(f'<line x1="{x + 0.1 * step:.1f}" x2="{x + 0.9 * step:.1f}" y1="{y(d.min_output_cosine):.1f}" '
                     f'y2="{y(d.min_output_cosine):.1f}" stroke="#000"/>')
        if i % label_every == 0:
            cx = x + step / 2
            parts.append(f'<text x="{cx:.1f}" y="{bottom_y + 8}" font-size="9" text-anchor="end" '
                         f'transform="rotate(-60 {cx:.1f} {bottom_y + 8})">{escape(d.node[:28])}</text>')
    parts.append(f'<text x="14" y="{top + plot_h / 2:.0f}" font-size="11" transform="rotate(-90 14 {top + plot_h / 2:.0f})" '
                 'text-anchor="middle">1 - output cosine</text></svg>')
    return "".join(parts)


def histogram_svg(h: dict, width: int = 320, height: int = 150) -> str:
    """FP32 (blue) and dequantized (orange) histograms of one tensor on the same bins, counts on a log axis:
    a ReLU output's zero bin holds most values, and on a linear axis it flattens every other bin."""
    import math

    o, q = h["origin"]["counts"], h["dequant"]["counts"]
    peak = max(max(o, default=1), max(q, default=1), 1)
    n = max(len(o), 1)
    left = 34
    bw = (width - left - 10) / n
    parts = [f'<svg class="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<rect x="{left}" y="5" width="{width - left - 10}" height="{height - 30}" fill="#fafafa" stroke="#999"/>',
             f'<text x="{left - 3}" y="13" font-size="9" text-anchor="end">{peak:g}</text>'
             f'<text x="{left - 3}" y="{height - 26}" font-size="9" text-anchor="end">1</text>'
             f'<text x="9" y="{(height - 25) / 2 + 5:.0f}" font-size="9" text-anchor="middle" '
             f'transform="rotate(-90 9 {(height - 25) / 2 + 5:.0f})">count (log)</text>']
    scale = math.log10(1 + peak)
    for counts, color, dx in ((o, "#1f77b4", 0.05), (q, "#ff7f0e", 0.5)):
        for i, c in enumerate(counts):
            hh = (height - 32) * math.log10(1 + c) / scale
            parts.append(f'<rect x="{left + (i + dx) * bw:.1f}" y="{height - 25 - hh:.1f}" width="{0.45 * bw:.1f}" '
                         f'height="{hh:.1f}" fill="{color}"><title>{c}</title></rect>')
    lo, hi = h["origin"]["lo"], h["origin"]["hi"]
    parts.append(f'<text x="{left}" y="{height - 10}" font-size="10">{lo:.4g}</text>'
                 f'<text x="{width - 10}" y="{height - 10}" font-size="10" text-anchor="end">{hi:.4g}</text></svg>')
    return "".join(parts)


def summary_markdown(ranked, outputs, skip_line: str, rounds: int, top: int = 10) -> str:
    """The page's summary for Prefect: outputs, the worst nodes, the proposed skip line."""
    lines = [f"**Debug report** over {rounds} round(s)", ""]
    by_tensor: dict[str, list[float]] = {}
    for _, t, c in outputs:
        by_tensor.setdefault(t, []).append(c)
    if by_tensor:
        lines += ["| output | mean cosine | worst |", "|---|---|---|"]
        lines += [f"| {t} | {sum(v) / len(v):.6f} | {min(v):.6f} |" for t, v in by_tensor.items()]
        lines.append("")
    lines += ["| rank | node | op | score | output cosine | reason |", "|---|---|---|---|---|---|"]
    lines += [f"| {i} | {d.node} | {d.op_type} | {d.score:.4f} | {d.output_cosine:.6f} | {d.reason} |"
              for i, d in enumerate(ranked[:top], start=1)]
    lines += ["", f"Proposed: `{skip_line}`" if skip_line else "No quantized node stands out (no skip proposed)."]
    return "\n".join(lines)


def write_page(folder: Path, title: str, ranked, outputs, worst: list[dict], skip_line: str, top: int = 25) -> Path:
    rows = "".join(
        f'<tr{"" if d.quantized else " class=fp32"}><td>{i}</td><td class="l">{escape(d.node)}</td><td class="l">{escape(d.op_type)}</td><td>{d.score:.4f}</td>'
        f"<td>{d.output_cosine:.6f}</td><td>{d.min_output_cosine:.6f}</td><td>{d.cosine_drop:.6f}</td>"
        f"<td>{100 * d.clip:.3f}%</td><td>{d.range_bits:.1f}</td><td>{'yes' if d.quantized else 'no'}</td>"
        f'<td class="l">{escape(d.reason)}</td></tr>'
        for i, d in enumerate(ranked[:top], start=1))
    by_tensor: dict[str, list[float]] = {}
    for _, t, c in outputs:
        by_tensor.setdefault(t, []).append(c)
    out_rows = "".join(f'<tr><td class="l">{escape(t)}</td><td>{sum(v) / len(v):.6f}</td><td>{min(v):.6f}</td></tr>'
                       for t, v in by_tensor.items())
    hists = "".join(f'<div class="hist"><b>{escape(h["node"])}</b> {escape(h["inout"].lower())} '
                    f'<code>{escape(h["tensor"])}</code><br>cosine {h["cosine"]:.6f} (round {h.get("round", 0)})<br>'
                    f"{histogram_svg(h)}</div>" for h in worst)
    skip = f"<p>Proposed config line: <code>{escape(skip_line)}</code></p>" if skip_line else \
        "<p>No quantized node stands out; no <code>skip_quant_node</code> proposed.</p>"
    body = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>"
            "<p>Bars: 1 &minus; mean cosine of each node's dequantized output vs FP32 over all rounds, log scale, "
            "execution order (taller = more lost; black tick: worst round; red: score &ge; 0.1, orange: &ge; 0.01; "
            "grey: a layer kept FP32; "
            "a merge node can lose a small input with a tall score but a short bar: see the ranking).</p>"
            f"<h2>Output cosine lost per layer</h2>{cosine_chart(ranked)}{skip}"
            f"<h2>Model outputs</h2><table><tr><th class=\"l\">tensor</th><th>mean cosine</th><th>worst</th></tr>{out_rows}</table>"
            "<h2>Nodes ranked by damage</h2><table><tr><th>#</th><th class=\"l\">node</th><th class=\"l\">op</th><th>score</th>"
            "<th>output cos</th><th>worst</th><th>drop</th><th>clip</th><th>range bits</th><th>quantized</th>"
            f"<th class=\"l\">reason</th></tr>{rows}</table>"
            "<h2>Worst tensors: FP32 (blue) vs dequantized (orange)</h2>"
            f"{hists or '<p>No activation pairs.</p>'}</body></html>\n")
    return write_atomic(folder / PAGE, body)

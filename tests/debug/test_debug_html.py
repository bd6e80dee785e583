"""The debug page renders offline in headless Chromium, with the per-layer cosine chart visible."""

from __future__ import annotations

import shutil
import subprocess

import debug_models as dm
import numpy as np
import onnx
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from ptq_core.convert import convert_direct

    tmp = tmp_path_factory.mktemp("html")
    onnx.save(dm.detection_head_model(), str(tmp / "det.onnx"))
    bins = dm.write_bins(tmp / "bins", (1, 3, 16, 16), 3)
    cfg = dm.full_quant_config(tmp / "c.cfg", "x", bins, 3, tmp / "debug")
    convert_direct(tmp / "det.onnx", cfg, tmp / "out")
    return tmp / "debug" / "debug_report.html", tmp


def test_page_is_self_contained(page):
    html = page[0].read_text()
    assert '<svg id="cosine-chart"' in html and 'class="histogram"' in html
    assert "concat_0" in html and "skip_quant_node=" in html
    for external in ("http://", "https://", "<script", "<link", "src="):  # xmlns is the only URL, an identifier
        assert external not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")
def test_chromium_renders_the_cosine_chart(page):
    from PIL import Image

    path, tmp = page
    profile = tmp / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert 'id="cosine-chart"' in dom.stdout and dom.stdout.count('class="bar"') >= 8
    shot = tmp / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,900",
                    path.as_uri()], capture_output=True, timeout=120)
    assert shot.exists()
    image = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    chart = image[90:420, 60:1150]  # below the title and caption: where the SVG chart is drawn
    colored = np.abs(chart[..., 0] - chart[..., 2]) > 60  # red/blue bars, not grey text or white
    assert chart.std() > 20 and colored.mean() > 0.01


def _damage(node: str, quantized: bool):
    from ptq_core.debug.rank import NodeDamage

    return NodeDamage(node=node, op_type="Conv", order=0 if quantized else 1, rounds=1, output_cosine=0.999,
                      min_output_cosine=0.998, input_cosine=1.0, cosine_drop=0.001, clip=0.0, range_bits=0.0,
                      score=0.001, quantized=quantized, reason="")


def test_layers_kept_fp32_are_drawn_apart_from_int8_ones():
    from ptq_core.debug.html import cosine_chart

    svg = cosine_chart([_damage("int8_conv", True), _damage("fp32_conv", False)])
    assert svg.count('class="bar fp32"') == 1 and "fp32_conv (Conv) (kept FP32)" in svg


def test_histogram_counts_are_on_a_log_axis_with_a_label():
    import re

    from ptq_core.debug.html import histogram_svg

    h = {"origin": {"counts": [1000, 10, 0], "lo": -1.0, "hi": 1.0}, "dequant": {"counts": [1000, 10, 0]}}
    svg = histogram_svg(h)
    heights = [float(v) for v in re.findall(r'height="([0-9.]+)" fill="#1f77b4"', svg)]
    assert heights[1] / heights[0] > 0.3  # 10 against 1000: a third of the height on a log axis, 1 % on a linear one
    assert "count (log)" in svg and ">1000<" in svg

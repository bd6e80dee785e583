"""Parameter sweeps as data: the grid file, one config text per point, the Pareto front and its plot.

Pure Python (no Prefect): ``flows/sweep.py`` runs the points; this module decides what a point is
and which one is best. A point's config is the user's config text with the grid's keys rewritten
in place, so every point (and ``best.cfg``) is a converter_lite file that our parser validated
exactly like a hand-written one.
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptq_core.config.ini import RawConfig, RawEntry
from ptq_core.config.model import QuantConfig, _convert, parse_config
from ptq_core.config.schema import SECTION_BY_NAME
from ptq_core.errors import ConfigError, did_you_mean

MAX_POINTS = 256
PICK_RULES = ("size", "latency", "cosine")


@dataclass(frozen=True)
class Grid:
    """``section.key`` -> the values to try, in the order given; values are INI strings."""

    source: str
    axes: tuple[tuple[str, str, tuple[str, ...]], ...]  # (section, key, values)

    @property
    def names(self) -> list[str]:
        return [f"{s}.{k}" for s, k, _ in self.axes]

    def points(self) -> list[dict[str, str]]:
        """The Cartesian product, first axis slowest; each point maps ``section.key`` to its INI value."""
        combos = itertools.product(*(values for _, _, values in self.axes))
        return [dict(zip(self.names, combo)) for combo in combos]


def _ini_text(value: Any) -> str:
    """A JSON/TOML value as converter_lite would write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_ini_text(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    return 1


def _flatten(data: dict, source: str) -> dict[str, Any]:
    """Accept ``{"section.key": [...]}`` and TOML tables ``[section] key = [...]`` alike."""
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            for key, inner in value.items():
                flat[f"{name}.{key}"] = inner
        else:
            flat[name] = value
    if not flat:
        raise ConfigError(f"{source}: the grid is empty; map section.key to a list of values, e.g. "
                          '{"mixed_bit_weight_quant_param.init_scale": [0.01, 0.02]}')
    return flat


def read_grid_data(grid: str | Path | dict) -> tuple[dict, str, str]:
    """(data, source name, text) from a dict, inline JSON, or a .json/.toml file."""
    if isinstance(grid, dict):
        return grid, "<grid>", json.dumps(grid, indent=1)
    text_arg = str(grid)
    if text_arg.lstrip().startswith("{"):
        source, text = "<grid>", text_arg
    else:
        path = Path(text_arg)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: grid file not found") from None
        except (IsADirectoryError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable grid file ({type(exc).__name__})") from None
    try:
        if source.endswith(".toml"):
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if source.endswith(".toml") else "JSON"
        raise ConfigError(f"{source}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the grid must be an object mapping section.key to a list of values")
    return data, source, text


def load_grid(grid: str | Path | dict) -> Grid:
    """Read and check a grid: every key a real ``section.key``, every value valid for that key."""
    data, source, text = read_grid_data(grid)
    all_keys = [f"{s}.{k.name}" for s, spec in SECTION_BY_NAME.items() for k in spec.keys]
    axes = []
    for name, values in _flatten(data, source).items():
        line = _line_of(text, name.split(".")[-1])
        where = f"{source}:{line}"
        if name.count(".") != 1:
            bare = name.rsplit(".", 1)[-1]
            owners = [full for full in all_keys if full.endswith(f".{bare}")]
            hint = f" (did you mean {' or '.join(repr(o) for o in owners)}?)" if owners else did_you_mean(name, all_keys)
            raise ConfigError(f"{where}: grid key {name!r} must be section.key{hint}")
        section, key = name.split(".")
        spec = SECTION_BY_NAME.get(section)
        if spec is None:
            raise ConfigError(f"{where}: grid key {name!r}: unknown section [{section}]"
                              f"{did_you_mean(section, SECTION_BY_NAME)}")
        key_spec = spec.key(key)
        if key_spec is None:
            raise ConfigError(f"{where}: grid key {name!r}: [{section}] has no key {key!r}"
                              f"{did_you_mean(key, spec.key_names)}; allowed: {', '.join(spec.key_names)}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid key {name!r} must map to a non-empty list of values, got {values!r}")
        raw = RawConfig(source=source)
        converted = []
        for value in values:
            text_value = _ini_text(value)
            entry_line = _line_of(text, text_value) if text_value in text else line
            _convert(raw, section, key_spec, RawEntry(text_value, entry_line))  # raises the config-file message
            converted.append(text_value)
        if len(set(converted)) != len(converted):
            raise ConfigError(f"{where}: grid key {name!r} lists a value twice: {values!r}")
        axes.append((section, key, tuple(converted)))
    grid_obj = Grid(source, tuple(axes))
    count = math.prod(len(v) for _, _, v in grid_obj.axes)
    if count > MAX_POINTS:
        raise ConfigError(f"{source}: the grid has {count} points; at most {MAX_POINTS} are allowed")
    return grid_obj


def override_ini(text: str, overrides: dict[str, str]) -> str:
    """The config text with ``section.key`` values rewritten where they stand (added when absent).

    Follows the reader's line rules (first-column ``#`` comments, quotes ignored, spaces trimmed), so
    the user's comments and layout survive and converter_lite reads the same values we do.
    """
    lines = text.split("\n")
    wanted: dict[tuple[str, str], str] = {}
    for name, value in overrides.items():
        section, key = name.split(".")
        wanted[(section, key)] = value
    done: set[tuple[str, str]] = set()
    section_end: dict[str, int] = {}
    section = "DEFAULT"
    for i, original in enumerate(lines):
        if original.startswith("#"):
            continue
        line = original.strip(" ").replace("\r", "").replace('"', "").strip(" ")
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            section_end[section] = i
            continue
        section_end[section] = i
        key = line.split("=")[0].strip(" ")
        if (section, key) in wanted:
            lines[i] = f"{key}={wanted[(section, key)]}"
            done.add((section, key))
    inserts: dict[int, list[str]] = {}
    appended: dict[str, list[str]] = {}
    for (section, key), value in wanted.items():
        if (section, key) in done:
            continue
        if section in section_end:
            inserts.setdefault(section_end[section], []).append(f"{key}={value}")
        else:
            appended.setdefault(section, []).append(f"{key}={value}")
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        out.extend(inserts.get(i, []))
    while out and out[-1] == "":
        out.pop()
    for section, entries in appended.items():
        out += ["", f"[{section}]", *entries]
    return "\n".join(out) + "\n"


@dataclass
class Point:
    """One grid point: its overrides, its config text and the parsed config."""

    index: int
    overrides: dict[str, str]
    text: str
    config: QuantConfig

    @property
    def label(self) -> str:
        return ", ".join(f"{name.split('.')[-1]}={value}" for name, value in self.overrides.items())


def expand(base_text: str, base_source: str, grid: Grid) -> list[Point]:
    """Every grid point as a validated config (a point that breaks a cross-key rule fails here, early)."""
    points = []
    for index, overrides in enumerate(grid.points()):
        text = override_ini(base_text, overrides)
        source = f"{grid.source} point {index} ({', '.join(f'{k}={v}' for k, v in overrides.items())}) on {base_source}"
        points.append(Point(index, overrides, text, parse_config(text, source)))
    return points


# ---------------------------------------------------------------------------------------------
# Pareto front and the pick


@dataclass
class Measured:
    """The three objectives of one point: bytes and milliseconds down, cosine up."""

    index: int
    size_bytes: int
    latency_ms: float
    cosine: float
    extra: dict = field(default_factory=dict)


def dominates(a: Measured, b: Measured) -> bool:
    no_worse = a.size_bytes <= b.size_bytes and a.latency_ms <= b.latency_ms and a.cosine >= b.cosine
    better = a.size_bytes < b.size_bytes or a.latency_ms < b.latency_ms or a.cosine > b.cosine
    return no_worse and better


def pareto_front(points: list[Measured]) -> set[int]:
    """Indexes of the points no other point dominates."""
    return {p.index for p in points if not any(dominates(q, p) for q in points if q.index != p.index)}


def check_pick(rule: str) -> None:
    if rule not in PICK_RULES:
        raise ConfigError(f"--pick={rule}: must be one of {', '.join(PICK_RULES)}{did_you_mean(rule, PICK_RULES)}")


def pick_best(points: list[Measured], tolerance: float = 0.002, rule: str = "size") -> Measured:
    """Among Pareto points whose cosine is within ``tolerance`` of the best cosine, the smallest
    (``rule=size``), the fastest (``latency``) or simply the most accurate (``cosine``); ties go to the
    other objectives, then to the lower index, so the pick is deterministic."""
    check_pick(rule)
    if not points:
        raise ValueError("no points")
    front = pareto_front(points)
    candidates = [p for p in points if p.index in front]
    best_cos = max(p.cosine for p in candidates)
    if rule != "cosine":
        candidates = [p for p in candidates if p.cosine >= best_cos - tolerance]
    keys = {
        "size": lambda p: (p.size_bytes, p.latency_ms, -p.cosine, p.index),
        "latency": lambda p: (p.latency_ms, p.size_bytes, -p.cosine, p.index),
        "cosine": lambda p: (-p.cosine, p.size_bytes, p.latency_ms, p.index),
    }
    return min(candidates, key=keys[rule])


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def pareto_svg(points: list[Measured], labels: dict[int, str], best: int, title: str) -> str:
    """Size (x) against output cosine (y); Pareto points filled, the pick ringed; latency in the tooltip.

    Hand-written SVG: no plotting dependency, and the file is deterministic for the same numbers.
    """
    width, height, margin = 640, 420, 60
    left = 96  # room for 5-decimal cosine labels and the rotated axis title
    front = pareto_front(points)
    unit, scale = ("MB", 1e6) if max(p.size_bytes for p in points) >= 1e6 else ("KB", 1e3)
    xs = [p.size_bytes / scale for p in points]
    ys = [p.cosine for p in points]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    x_pad = (x_hi - x_lo) * 0.08 or max(x_hi * 0.05, 1e-3)
    y_pad = (y_hi - y_lo) * 0.08 or 1e-4
    x_lo, x_hi, y_lo, y_hi = x_lo - x_pad, x_hi + x_pad, y_lo - y_pad, y_hi + y_pad

    def sx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (width - left - margin)

    def sy(v: float) -> float:
        return height - margin - (v - y_lo) / (y_hi - y_lo) * (height - 2 * margin)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2:.1f}" y="22" text-anchor="middle" font-size="14">{_esc(title)}</text>',
           f'<line x1="{left}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="black"/>',
           f'<line x1="{left}" y1="{margin}" x2="{left}" y2="{height - margin}" stroke="black"/>',
           f'<text x="{(left + width - margin) / 2:.1f}" y="{height - 18}" text-anchor="middle">model size ({unit})</text>',
           f'<text x="16" y="{height / 2:.1f}" text-anchor="middle" transform="rotate(-90 16 {height / 2:.1f})">'
           'output cosine vs FP32</text>']
    for i in range(5):
        xv = x_lo + (x_hi - x_lo) * i / 4
        yv = y_lo + (y_hi - y_lo) * i / 4
        out.append(f'<text x="{sx(xv):.1f}" y="{height - margin + 16}" text-anchor="middle">{xv:.3g}</text>')
        out.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.5f}</text>')
    for p in points:
        x, y = sx(p.size_bytes / scale), sy(p.cosine)
        fill = "#1f77b4" if p.index in front else "white"
        tip = _esc(f"point {p.index}: {labels.get(p.index, '')}; {p.size_bytes} B, {p.latency_ms:.3f} ms, "
                   f"cosine {p.cosine:.6f}")
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}" stroke="#1f77b4"><title>{tip}</title></circle>')
        out.append(f'<text x="{x + 7:.1f}" y="{y - 7:.1f}">{p.index}</text>')
        if p.index == best:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" stroke="#d62728" stroke-width="2"/>')
    out.append(f'<text x="{width - margin}" y="{margin - 8}" text-anchor="end">filled: Pareto-optimal '
               '(size, latency, cosine); red ring: picked</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"

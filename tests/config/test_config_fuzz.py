"""Property: whatever bytes a config file holds, reading it ends in a valid config or a PtqError.

Hypothesis writes INI texts from the schema's own sections and keys (and unknown ones), with values
that are valid, out of range, huge, non-finite, unicode, empty or quoted, lines without '=' or with
two, duplicate keys, comments in and out of the first column, BOM, CRLF and NUL bytes. Each text
goes through ``resolve_config`` (read from disk, parse, validate, check it can run here): nothing
but our error type may escape.

``PTQ_FUZZ_EXAMPLES`` sets the number of examples (default 2000, derandomized so CI is repeatable);
the recorded 10,000-example run is in BENCHMARKS.md.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptq_core.config.schema import SECTIONS
from ptq_core.convert import resolve_config
from ptq_core.errors import PtqError

EXAMPLES = int(os.environ.get("PTQ_FUZZ_EXAMPLES", "1200"))  # the recorded run: 10000 (BENCHMARKS.md)

_SECTION_NAMES = [s.name for s in SECTIONS]
_KEYS = sorted({k.name for s in SECTIONS for k in s.keys})
_CHOICES = sorted({c for s in SECTIONS for k in s.keys for c in k.choices})

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
_number = st.one_of(
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "-0", "1e309", "-1e309", "nan", "inf", "0x10", "1_000", "8.", ".5", "+8", "９", "٣"]),
)
_value = st.one_of(
    st.sampled_from(_CHOICES),
    st.sampled_from(["true", "false", "TRUE", "yes", "1", ""]),
    _number,
    st.lists(_number, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
    st.lists(st.tuples(_text, st.sampled_from(["/tmp", "/nonexistent", ".", "", "a:b"])), max_size=3)
    .map(lambda items: ",".join(f"{n}:{d}" for n, d in items)),
    _text,
    _text.map(lambda t: f'"{t}"'),
)
_key = st.one_of(st.sampled_from(_KEYS), _text)
_header = st.tuples(st.one_of(st.sampled_from(_SECTION_NAMES), _text), st.sampled_from(["]", "", "] x", "]]"])) \
    .map(lambda t: f"[{t[0]}{t[1]}")
_line = st.one_of(
    _header,
    st.tuples(_key, st.sampled_from(["=", " = ", "==", "=\t", ""]), _value).map(lambda t: "".join(t)),
    st.tuples(st.sampled_from(["#", " #", "\t#"]), _text).map(lambda t: "".join(t)),
    _text,
    st.just(""),
)
def _rarely(strategy):
    """``strategy`` one time in ten, else None: NUL bytes and stray bytes would end most texts early."""
    return st.tuples(st.integers(min_value=0, max_value=9), strategy).map(lambda t: t[1] if t[0] == 7 else None)


_BASES = ["", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8",
          "[common_quant_param]\nquant_type=FULL_QUANT\n[data_preprocess_param]\ncalibrate_path=x:/tmp\n"
          "calibrate_size=1\ninput_type=BIN",
          "[common_quant_param]\nquant_type=DYNAMIC_QUANT"]
_config = st.tuples(
    st.integers(min_value=0, max_value=9).map(lambda n: n == 7),  # BOM
    st.tuples(st.sampled_from(_BASES), st.lists(_line, max_size=16)).map(lambda t: [t[0], *t[1]]),
    st.sampled_from(["\n", "\r\n", "\r"]),
    _rarely(st.integers(min_value=0, max_value=400)),  # where to put a NUL byte
    _rarely(st.binary(min_size=1, max_size=3)),  # raw bytes (maybe not UTF-8) appended
)


def _render(parts) -> bytes:
    bom, lines, eol, nul_at, tail = parts
    text = ("\ufeff" if bom else "") + eol.join(lines)
    if nul_at is not None:
        at = min(nul_at, len(text))
        text = text[:at] + "\x00" + text[at:]
    data = text.encode("utf-8", "surrogatepass")
    return data + (tail or b"")


_FILE = Path(tempfile.mkdtemp(prefix="ptq-fuzz-")) / "fuzz.cfg"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_config)
def test_any_config_file_gives_a_config_or_our_error(parts):
    _FILE.write_bytes(_render(parts))
    try:
        resolve_config(_FILE)
    except PtqError as exc:
        assert "\n" not in str(exc)  # one line


@settings(max_examples=max(200, EXAMPLES // 4), deadline=None, derandomize=True, database=None)
@given(st.sampled_from(["WEIGHT_QUANT", "FULL_QUANT", "DYNAMIC_QUANT"]),
       st.lists(st.tuples(st.sampled_from(SECTIONS), st.data()), min_size=1, max_size=6))
def test_schema_shaped_configs_give_a_config_or_our_error(quant_type, sections):
    """Closer to real configs: known sections with their own keys and a mix of good and bad values."""
    lines = ["[common_quant_param]", f"quant_type={quant_type}"]
    for section, data in sections:
        lines.append(f"[{section.name}]")
        for spec in data.draw(st.lists(st.sampled_from(section.keys), max_size=6)):
            good = st.sampled_from(spec.choices) if spec.choices else _number
            lines.append(f"{spec.name}={data.draw(st.one_of(good, _value))}")
    _FILE.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    try:
        resolve_config(_FILE)
    except PtqError as exc:
        assert "\n" not in str(exc)

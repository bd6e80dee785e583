"""``ptq cache``: what ptqflow's caches hold, and pruning them without breaking a later cache hit.

Two stores grow with every new model, config or calibration set: the content cache under
``$PTQFLOW_HOME/cache`` (quantized models, plans, calibration shards, exposed models) and Prefect's
result records under ``$PREFECT_HOME/storage``, which hold what cached tasks returned, including
paths into the content cache. Deleting a cached file alone would leave a record whose cache hit
hands a missing path to the next step, so pruning removes, with every file it deletes, every result
record that mentions that file (and records that mention a file already gone): the task then simply
runs again. The latency guard's timing table (``speed-table.json``) is never pruned, because its
remembered decisions are what keeps repeated conversions byte-identical on this machine, and
neither is anything touched within ``grace`` seconds (a run may be using it right now).
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ptq_core.errors import PtqError

KEEP = ("speed-table.json",)
GRACE_S = 600.0
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GIB": 1024**3, "T": 1024**4, "TB": 1024**4, "TIB": 1024**4}


def parse_size(text: str) -> int:
    """'2GB', '500M', '0' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise PtqError(f"--max-size={text}: must be a size like 500MB, 2GB or 0")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_age(text: str) -> float:
    """'30d', '12h', '45m', '0' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", text)
    if not match:
        raise PtqError(f"--older-than={text}: must be an age like 30d, 12h or 45m")
    return float(match.group(1)) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 86400}[match.group(2)]


@dataclass
class Entry:
    path: Path
    kind: str
    size: int
    mtime: float


@dataclass
class Record:
    """One Prefect result record and the content-cache files its result mentions."""

    path: Path
    size: int
    mentions: set[str] = field(default_factory=set)


def cache_root() -> Path:
    from ptqflow._env import home

    return home() / "cache"


def results_root() -> Path:
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

    return Path(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value()).expanduser()


def scan_cache(root: Path) -> list[Entry]:
    entries = []
    if not root.is_dir():
        return entries
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name in KEEP or path.parent.name == "locks":
            continue
        stat = path.stat()
        kind = path.relative_to(root).parts[0]
        entries.append(Entry(path, kind, stat.st_size, stat.st_mtime))
    return entries


def _record_text(path: Path) -> str:
    """The record file and its decoded result, as text to search for paths (never unpickled: no code runs)."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", "replace")
    try:
        blob = json.loads(raw).get("result")
        if isinstance(blob, str):
            text += base64.b64decode(blob).decode("utf-8", "replace")
    except (ValueError, AttributeError):
        pass
    return text


def scan_records(root: Path, cache: Path) -> list[Record]:
    records = []
    if not root.is_dir():
        return records
    pattern = re.compile(re.escape(str(cache)) + r"/[^\x00-\x20\x7f\ufffd\"'\\]+")
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        mentions = set()
        for found in pattern.findall(_record_text(path)):
            # in a pickle the string runs into the next opcode byte when that byte is printable: cut at the
            # file suffix
            mentions.add(_trim(found))
        records.append(Record(path, path.stat().st_size, mentions))
    return records


def _trim(found: str) -> str:
    match = re.match(r"(.*?\.(?:onnx|pkl|npy|npz|json|data|bin))(?![A-Za-z0-9_])", found)
    return match.group(1) if match else found


@dataclass
class PrunePlan:
    files: list[Entry]
    records: list[Record]

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.files) + sum(r.size for r in self.records)


def plan_prune(entries: list[Entry], records: list[Record], max_size: int | None, older_than: float | None,
               now: float | None = None, grace: float = GRACE_S) -> PrunePlan:
    """Oldest first: every file older than ``older_than``, then more until the cache is at most ``max_size``.

    Nothing modified within ``grace`` seconds goes. Records go with any file they mention that goes or
    is already missing.
    """
    now = time.time() if now is None else now
    candidates = sorted((e for e in entries if now - e.mtime >= grace), key=lambda e: (e.mtime, str(e.path)))
    victims: list[Entry] = []
    if older_than is not None:
        victims = [e for e in candidates if now - e.mtime >= older_than]
    if max_size is not None:
        total = sum(e.size for e in entries) - sum(e.size for e in victims)
        chosen = {id(e) for e in victims}
        for e in candidates:
            if total <= max_size:
                break
            if id(e) not in chosen:
                victims.append(e)
                total -= e.size
    gone = {str(e.path) for e in victims}
    stale = [r for r in records if any(m in gone or not os.path.exists(m) for m in r.mentions)]
    return PrunePlan(victims, stale)


def apply(plan: PrunePlan) -> None:
    """Records first: a crash in between leaves files without records (harmless), never records without files."""
    for record in plan.records:
        record.path.unlink(missing_ok=True)
    for entry in plan.files:
        entry.path.unlink(missing_ok=True)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def cache_command(prune: bool, max_size: str | None, older_than: str | None, grace: float = GRACE_S) -> int:
    from rich.console import Console
    from rich.table import Table

    size_cap = parse_size(max_size) if max_size is not None else None
    age = parse_age(older_than) if older_than is not None else None
    if prune and size_cap is None and age is None:
        raise PtqError("ptq cache --prune needs --max-size and/or --older-than (e.g. --max-size 2GB)")
    cache = cache_root()
    entries = scan_cache(cache)
    records = scan_records(results_root(), cache)
    console = Console(width=max(100, Console().width))
    table = Table(title=f"ptqflow cache: {cache}")
    for column in ("what", "files", "size", "oldest"):
        table.add_column(column, justify="right" if column in ("files", "size") else "left")
    now = time.time()
    by_kind: dict[str, list[Entry]] = {}
    for e in entries:
        by_kind.setdefault(e.kind, []).append(e)
    for kind, items in sorted(by_kind.items()):
        oldest = (now - min(e.mtime for e in items)) / 86400
        table.add_row(kind, str(len(items)), _human(sum(e.size for e in items)), f"{oldest:.1f} days")
    table.add_row("Prefect results", str(len(records)), _human(sum(r.size for r in records)), "")
    prefect_home = os.environ.get("PREFECT_HOME")
    database = sorted(Path(prefect_home).glob("prefect.db*")) if prefect_home else []
    if database:
        table.add_row("Prefect database (not pruned)", str(len(database)),
                      _human(sum(p.stat().st_size for p in database)), "")
    console.print(table)
    if not prune:
        return 0
    plan = plan_prune(entries, records, size_cap, age, now, grace)
    apply(plan)
    console.print(f"pruned {len(plan.files)} files and {len(plan.records)} result records, {_human(plan.freed)} "
                  f"freed; {_human(sum(e.size for e in entries) - sum(e.size for e in plan.files))} of cache left")
    return 0

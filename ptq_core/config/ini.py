"""converter_lite's INI dialect, read line by line exactly as MindSpore Lite reads it.

The dialect is stricter and odder than ``configparser``: only a ``#`` in the first column starts a
comment, double quotes vanish anywhere in a line, spaces (not tabs) are trimmed, ``a=b=c`` and
``key=`` are errors, and a repeated key silently overwrites. A config written for converter_lite
must mean the same thing here, so this reader follows those rules and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ptq_core.errors import ConfigError

MAX_LINES = 9999


@dataclass
class RawEntry:
    """One ``key=value`` as written, with its line number for error messages."""

    value: str
    line: int


@dataclass
class RawConfig:
    """Sections in file order; each maps key -> RawEntry (last one wins, as in converter_lite)."""

    source: str
    sections: dict[str, dict[str, RawEntry]] = field(default_factory=dict)
    section_lines: dict[str, int] = field(default_factory=dict)
    duplicates: list[tuple[str, str, int]] = field(default_factory=list)


def _strip_spaces(text: str) -> str:
    return text.strip(" ")


def parse_ini(text: str, source: str = "<config>") -> RawConfig:
    """Split converter_lite INI text into sections of raw string entries.

    Types and allowed values are checked later, against the schema; this layer only enforces the
    line syntax, so its messages can point at the offending line.
    """
    raw = RawConfig(source=source)
    section = "DEFAULT"
    counted = 0
    for lineno, original in enumerate(text.split("\n"), start=1):
        if original.startswith("#"):
            continue
        line = _strip_spaces(original).replace("\r", "").replace('"', "")
        line = _strip_spaces(line)
        if not line:
            continue
        counted += 1
        if counted > MAX_LINES:
            raise ConfigError(f"{source}:{lineno}: more than {MAX_LINES} non-comment lines; converter_lite reads at most {MAX_LINES}")
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(
                    f"{source}:{lineno}: section header {line!r} does not end with ']'; write it as [section_name]"
                )
            section = line[1:-1]
            raw.sections.setdefault(section, {})
            raw.section_lines.setdefault(section, lineno)
            continue
        pieces = line.split("=")
        if len(pieces) == 1:
            if line.lstrip(" \t").startswith("#"):
                raise ConfigError(
                    f"{source}:{lineno}: [{section}] {line!r}: a comment must start in the first column "
                    "(converter_lite treats an indented '#' line as a key=value line)"
                )
            raise ConfigError(f"{source}:{lineno}: [{section}] {line!r} is not key=value")
        if len(pieces) > 2:
            raise ConfigError(
                f"{source}:{lineno}: [{section}] {line!r} has more than one '='; "
                "converter_lite allows exactly one '=' per line"
            )
        key, value = _strip_spaces(pieces[0]), _strip_spaces(pieces[1])
        if not key:
            raise ConfigError(f"{source}:{lineno}: [{section}] {line!r} has no key before '='")
        if not value:
            raise ConfigError(f"{source}:{lineno}: [{section}] {key}= has an empty value; give a value or delete the line")
        entries = raw.sections.setdefault(section, {})
        if key in entries:
            raw.duplicates.append((section, key, lineno))
        entries[key] = RawEntry(value=value, line=lineno)
    return raw

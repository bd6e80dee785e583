"""Writing a file so that nobody ever reads half of it (no heavy imports: the resident server's state
uses it on every start)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable


def write_atomic(path: str | Path, content: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``content`` (bytes, UTF-8 text, or a function that writes the file it is given) to a temporary
    name beside ``path``, then rename it into place: readers see the old file or the whole new one, and a
    failure leaves no partial file. The one temp-then-rename of the tool, for reports, caches and state."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if callable(content):
            content(tmp)
        elif isinstance(content, str):
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(content)
        else:
            tmp.write_bytes(content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

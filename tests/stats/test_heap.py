"""The C heap: the ptq process caps glibc's arenas, so statistics workers do not each keep their own free pages."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

COUNT_ARENAS = """
import ctypes, ctypes.util, sys, tempfile, threading
from ptq_core.heap import limit_heap_arenas
if sys.argv[1] == "limit":
    assert limit_heap_arenas(2)
barrier = threading.Barrier(6)
def work():
    keep = [bytearray(4096) for _ in range(64)]  # this thread's first allocations pick its arena
    barrier.wait()  # all six alive at once: none can take over an arena another left
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(5)]
[t.start() for t in threads]
barrier.wait()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(fp))
libc.fclose(ctypes.c_void_p(fp))
barrier.wait()
[t.join() for t in threads]
print(open(path).read().count("<heap nr="))
"""


def _arenas(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", COUNT_ARENAS, mode], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0].startswith("glibc"),
                    reason="glibc's arenas")
def test_threads_share_at_most_two_heap_arenas_once_limited():
    assert _arenas("default") > 2  # what the limit is for: glibc's default gives threads arenas of their own
    assert _arenas("limit") <= 2

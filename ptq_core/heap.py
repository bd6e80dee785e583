"""The C heap between phases: fewer arenas, and free pages handed back.

Tiny on purpose (no NumPy or onnx import): the ``ptq`` process calls it before anything else. Both calls
are glibc's; elsewhere (musl, macOS) they do nothing.
"""

from __future__ import annotations

import ctypes

HEAP_ARENAS = 2  # the local Dask cluster's worker threads (ptqflow.tasks.dask_stats.local_cluster)
_M_ARENA_MAX = -8


def _libc():
    """The C library's symbols as this process has them loaded (no ``find_library``, which runs
    ``ldconfig`` in a subprocess on every call)."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def limit_heap_arenas(arenas: int = HEAP_ARENAS) -> bool:
    """Let the C heap keep at most ``arenas`` arenas (glibc's ``M_ARENA_MAX``); False where it cannot.

    glibc gives each new thread its own arena, up to eight per core, and each keeps its own free pages:
    with onnxruntime and NumPy freeing into them from the statistics workers and Prefect's and Dask's own
    threads, a KL run of the PP-OCR recognizer peaked 50-70 MB higher (336 MB instead of 263-281 MB,
    BENCHMARKS.md, session 9), at no gain in speed. Called by the ``ptq`` process and the warm runner
    before their threads start; a thread that already has an arena keeps it.
    """
    libc = _libc()
    try:
        return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, int(arenas)))
    except AttributeError:
        return False


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``) between phases.

    onnxruntime and NumPy free their buffers into glibc's per-thread arenas, which keep them: the pages
    of one phase's sessions and tensors would otherwise stay resident under the next phase's peak.
    """
    libc = _libc()
    try:
        if libc is not None:
            libc.malloc_trim(0)
    except AttributeError:
        pass

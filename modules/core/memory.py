"""Host memory between ops: keep freed activation memory for the next op, give it back between jobs.

PyTorch's CPU tensors come straight from ``malloc``. With glibc's defaults every buffer over the
dynamic mmap threshold (at most 32 MiB; a 512x512 UNet step has many such activations) is a fresh
``mmap`` that is returned to the OS when freed, so each denoising step page-faults and zeroes the
same few GB again: measured here 13-15 million page faults and 41-45 s of kernel time in one 512x512
img2img run (20 steps at 0.75), against 0.1-0.5 million and 2.5 s with this setting: the run takes
7 % less time (BENCHMARKS.md). A1111 preloads tcmalloc for the same reason.

``retain_freed_memory`` tells glibc to serve every block from its heap (no per-block mmap), to keep
freed memory, and to use one arena (the job worker thread would otherwise get a private arena whose
heaps are unmapped when empty). ``release_freed_memory`` hands the free heap pages back to the OS:
a generation calls it between its stages (the UNet's freed blocks do not fit the VAE decoder's
bigger ones, so keeping them across stages would only add to the peak) and the worker after every
job, so an idle server's resident memory does not stay at the peak.

Only glibc Linux is affected; elsewhere both calls do nothing and say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_GLIBC_DEFAULT_MMAP_MAX = 65536
_GLIBC_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_KEEP = 2**31 - 1  # largest int mallopt takes: freed heap top kept up to 2 GiB

_libc: ctypes.CDLL | None = None
_retaining = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = None
    return _libc


def retain_freed_memory() -> bool:
    """Keep freed memory in the heap during jobs (call at start-up, before the worker thread starts)."""
    global _retaining
    libc = _glibc()
    if libc is None:
        log.info("Allocator tuning skipped (not glibc Linux)")
        return False
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _KEEP))
    )
    _retaining = ok
    log.info("Allocator: freed memory kept for reuse during a job%s", "" if ok else " (mallopt refused)")
    return ok


def default_allocator() -> None:
    """Back to glibc's per-block mmap and 128 KiB trim threshold (benchmarks compare both)."""
    global _retaining
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_MAX, _GLIBC_DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, _GLIBC_DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
    _retaining = False


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (cheap; a no-op off glibc or when not retaining)."""
    if _retaining and _libc is not None:
        _libc.malloc_trim(0)


def _proc_kib(path: str, field: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _psutil_memory():
    try:
        import psutil  # a gradio dependency
    except ImportError:
        return None
    return psutil.virtual_memory()


def spare_bytes() -> int | None:
    """RAM this process could still take for optional caches, in bytes; None where it cannot be told.

    On Linux: the kernel's ``MemAvailable`` less this process's file-backed resident pages. The
    weights of a checkpoint are memory-mapped from its file, and ``MemAvailable`` counts such pages as
    reclaimable page cache, but they are the model in use: reclaiming them would mean reading the
    file again at every step. Elsewhere: psutil's available memory."""
    available = _proc_kib("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available - (_proc_kib("/proc/self/status", "RssFile") or 0)
    vm = _psutil_memory()
    return None if vm is None else int(vm.available)


def total_bytes() -> int | None:
    """The machine's RAM in bytes; None where it cannot be told."""
    total = _proc_kib("/proc/meminfo", "MemTotal")
    if total is not None:
        return total
    vm = _psutil_memory()
    return None if vm is None else int(vm.total)

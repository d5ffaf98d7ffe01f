"""Memory that steps freed, given back to the system between steps.

glibc's allocator serves requests above its *mmap threshold* with mappings
of their own, unmapped on free, and smaller ones from heaps that keep freed
memory for reuse. By default the threshold moves: each time a mapped block
is freed it rises to that block's size (up to 32 MiB), so that after the
first image-sized arrays are freed, most of a step's arrays come from the
heaps. That reuse is what keeps a step fast on machines where fresh pages
are slow to obtain (fixing the threshold low instead made four full-size
detectors' run 1.2-1.7 times slower, with its two threads taking turns:
every mapping and unmapping takes a lock the other thread's page faults
need). But a step leaves its freed
memory in the heaps for the next one: 150-300 MiB on four full-size
detectors, added to every later step's peak.

`give_back_freed_memory` hands that memory back (``malloc_trim``) when a
step ends. Only glibc has it; elsewhere it does nothing.
"""

import ctypes
import functools
import platform

__all__ = ["give_back_freed_memory"]


@functools.cache
def _malloc_trim():
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return trim


def give_back_freed_memory():
    """Return the allocator's free memory to the system (see the module docstring).

    Returns
    -------
    bool
        Whether anything was given back (False also where the C library is
        not glibc).
    """
    trim = _malloc_trim()
    return bool(trim is not None and trim(0))

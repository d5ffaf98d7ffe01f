"""This process's peak resident memory, and resetting it to measure one stage.

Linux keeps a high-water mark of each process's resident set (``VmHWM`` in
``/proc/self/status``) and lets a process reset it to the current size
(writing ``5`` to ``/proc/self/clear_refs``), so the peak of one pipeline
step can be told from the peaks of the steps before it.
"""

import sys

__all__ = ["peak_resident_bytes", "reset_peak_resident"]


def peak_resident_bytes():
    """This process's peak resident memory in bytes (None if unknown).

    ``VmHWM`` is the high-water mark of this process's own address space.
    ``ru_maxrss`` is only a fallback where /proc is absent: Linux carries it
    over from the parent across ``exec``.
    """
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_resident():
    """Lower the peak to the present resident size; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
    except OSError:
        return False
    return True

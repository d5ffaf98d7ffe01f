"""Using more than one core: forked worker processes and shared arrays.

The drizzle C kernel holds Python's global interpreter lock, so threads
cannot drizzle two images at once; processes can. romosaic forks its
workers (Linux and macOS) so that they start with the parent's state (the
open model library, the grid, the pixel maps being planned) without any of
it being pickled, and they return results through arrays in shared memory
(`shared_zeros`) or files, never through large pickles.

Work is always split into the same pieces, however many workers there are,
and each piece is computed by the same code: a run with two workers gives
results identical, to the bit, to a run with one.

`resolve_workers` turns the ``workers`` parameter of the steps into a count:
0 means one per core this process may use.
"""

import concurrent.futures
import logging
import mmap
import multiprocessing
import os
import signal

import numpy as np

__all__ = ["resolve_workers", "run_in_workers", "shared_zeros", "usable_cores"]

log = logging.getLogger(__name__)

#: Environment variable that caps the workers of every step (e.g. a survey
#: task that already shares its machine with other tasks sets it to 1).
WORKERS_VARIABLE = "ROMOSAIC_WORKERS"

# Signals held while the pool forks. One arriving during os.fork would run
# its Python handler inside the at-fork callbacks (logging's lock release),
# which print and drop exceptions: a Ctrl-C or a SIGTERM would be lost and
# the run would go on to the end.
_HELD_DURING_FORK = {signal.SIGINT, signal.SIGTERM}

# The function the forked workers call: set just before the pool forks, so
# that it needs no pickling (it may be a closure over the caller's state).
_TASK_FUNCTION = None


def usable_cores():
    """Number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers):
    """The number of worker processes to use.

    Parameters
    ----------
    workers : int
        A step's ``workers`` parameter: 0 for one per usable core, else the
        count itself. ``ROMOSAIC_WORKERS``, when set, caps the result.

    Returns
    -------
    int
        At least 1; 1 when forking is not available.
    """
    count = usable_cores() if int(workers) <= 0 else int(workers)
    cap = os.environ.get(WORKERS_VARIABLE, "").strip()
    if cap:
        try:
            count = min(count, max(1, int(cap)))
        except ValueError:
            log.warning("%s=%r is not a whole number; ignored", WORKERS_VARIABLE, cap)
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, count)


def shared_zeros(shape, dtype=np.float32):
    """An array of zeros in memory shared with forked workers.

    Writes by a worker forked after the call are seen by the parent (an
    ordinary array would be copied on write). The pages are taken from the
    system only when first written, like those of `numpy.zeros`.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype, optional

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> frame = shared_zeros((2, 3))
    >>> frame[1, 2] = 5
    >>> float(frame.sum())
    5.0
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return np.frombuffer(buffer, dtype=dtype, count=int(np.prod(shape, dtype=np.int64))
                         ).reshape(shape)


def run_in_workers(function, pieces, *, workers):
    """``[function(piece) for piece in pieces]``, spread over forked processes.

    Parameters
    ----------
    function : callable
        Called with one piece; may be a closure. Its return value is pickled
        back, so it should be small: large results go into `shared_zeros`
        arrays or files made before the call.
    pieces : sequence
        The work, one item per call.
    workers : int
        Processes to use (see `resolve_workers`); with 1, or a single piece,
        everything runs in this process.

    Returns
    -------
    list
        The results, in the order of ``pieces``.

    Raises
    ------
    Exception
        The first exception a piece raised (after the others stopped), or
        `RuntimeError` naming the piece whose worker died (e.g. killed for
        lack of memory).
    """
    global _TASK_FUNCTION
    pieces = list(pieces)
    workers = min(int(workers), len(pieces))
    if workers <= 1:
        return [function(piece) for piece in pieces]
    if _TASK_FUNCTION is not None:
        # Nested use (a worker asking for workers): stay in this process.
        return [function(piece) for piece in pieces]
    _TASK_FUNCTION = function
    context = multiprocessing.get_context("fork")
    try:
        with concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=context,
                initializer=_reset_signals) as pool:
            # With the fork start method, the first submit forks every worker.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_DURING_FORK)
            try:
                futures = [pool.submit(_call_task, 0, pieces[0])]
            finally:
                # A signal that came meanwhile is delivered (raised) here.
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            futures += [pool.submit(_call_task, index, piece)
                        for index, piece in enumerate(pieces) if index > 0]
            try:
                return [future.result() for future in futures]
            except concurrent.futures.process.BrokenProcessPool:
                raise RuntimeError(
                    "a worker process died (killed, perhaps for lack of memory); "
                    "run with workers=1 to use one process") from None
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        _TASK_FUNCTION = None


def _reset_signals():
    # A worker must not run the parent's SIGTERM clean-up (which removes the
    # run's temporary files); it just ends, and the parent cleans up.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The mask held while forking was inherited; a signal sent to a worker
    # now takes effect.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_DURING_FORK)


def _call_task(index, piece):
    return _TASK_FUNCTION(piece)

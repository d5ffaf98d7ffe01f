"""Using more than one core: threads.

romosaic's compiled drizzle kernels, numpy's array arithmetic, and the
reading and decompression of ASDF blocks release Python's interpreter lock,
so the steps spread their work over threads of one process: no forked
copies of the process, no shared-memory arrays, nothing pickled. Work is
always split into the same pieces, however many threads there are, and
each piece is computed by the same code, so a run with two threads gives
results identical, to the bit, to a run with one.

`resolve_workers` turns the ``workers`` parameter of the steps into a count
of threads: 0 means one per core this process may use. `prefetch` reads the
next item of a stream (e.g. the next input image) while the current one is
being worked on.
"""

import logging
import os
import queue
import threading

__all__ = ["WORKERS_VARIABLE", "prefetch", "resolve_workers", "usable_cores"]

log = logging.getLogger(__name__)

#: Environment variable that caps the threads of every step (e.g. a survey
#: task that already shares its machine with other tasks sets it to 1).
WORKERS_VARIABLE = "ROMOSAIC_WORKERS"


def usable_cores():
    """Number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers):
    """The number of threads a step uses.

    Parameters
    ----------
    workers : int
        A step's ``workers`` parameter: 0 for one per usable core, else the
        count itself. ``ROMOSAIC_WORKERS``, when set, caps the result.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> resolve_workers(3)  # doctest: +SKIP
    3
    """
    count = usable_cores() if int(workers) <= 0 else int(workers)
    cap = os.environ.get(WORKERS_VARIABLE, "").strip()
    if cap:
        try:
            count = min(count, max(1, int(cap)))
        except ValueError:
            log.warning("%s=%r is not a whole number; ignored", WORKERS_VARIABLE, cap)
    return max(1, count)


_DONE = object()


def prefetch(items, *, enabled=True):
    """Iterate over ``items``, producing the next one in a background thread.

    While the caller works on item ``i``, item ``i + 1`` is made (e.g. a
    model read from its file and prepared for drizzling). At most one item
    is made ahead, so memory holds two at a time. An exception raised while
    making an item is raised by the iteration, at that item.

    Parameters
    ----------
    items : iterable
        Consumed in the background thread (so a generator over a model
        library must not be used by the caller at the same time).
    enabled : bool, optional
        False iterates in the caller's thread (one core, or nothing to
        overlap).

    Yields
    ------
    object
        The items, in order.

    Examples
    --------
    >>> list(prefetch(x * x for x in range(4)))
    [0, 1, 4, 9]
    """
    if not enabled:
        yield from items
        return
    handoff = queue.Queue()
    stop = threading.Event()
    # One item may be made ahead: the producer starts on item i + 1 only
    # once the caller has taken item i (and so let go of item i - 1).
    ahead = threading.Semaphore(1)

    def produce():
        iterator = iter(items)
        try:
            while True:
                while not ahead.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                try:
                    item = next(iterator)
                except StopIteration:
                    handoff.put((_DONE, None))
                    return
                handoff.put((item, None))
                del item
        except BaseException as error:  # handed to the consumer
            handoff.put((_DONE, error))
        finally:
            close = getattr(items, "close", None)
            if stop.is_set() and close is not None:
                close()

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = handoff.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            ahead.release()
            yield item
            del item
    finally:
        stop.set()
        ahead.release()
        worker.join()

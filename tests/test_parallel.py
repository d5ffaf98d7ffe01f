"""Threads: the worker count, and a stream read ahead in the background."""

import os
import time

import pytest

from romosaic.parallel import WORKERS_VARIABLE, prefetch, resolve_workers


def test_worker_count_and_its_cap(monkeypatch):
    monkeypatch.delenv(WORKERS_VARIABLE, raising=False)
    assert resolve_workers(3) == 3
    assert resolve_workers(0) == len(os.sched_getaffinity(0))
    monkeypatch.setenv(WORKERS_VARIABLE, "1")
    assert resolve_workers(0) == 1
    assert resolve_workers(4) == 1
    monkeypatch.setenv(WORKERS_VARIABLE, "lots")
    assert resolve_workers(2) == 2


def test_prefetch_makes_the_next_item_while_the_current_one_is_used():
    made = []

    def produce():
        for k in range(3):
            made.append(k)
            yield k

    stream = prefetch(produce())
    assert next(stream) == 0
    # While item 0 is in use (the next one not asked for), item 1 is made.
    deadline = time.monotonic() + 10
    while 1 not in made and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made == [0, 1]
    assert list(stream) == [1, 2]
    assert list(prefetch(iter([]))) == []


def test_prefetch_in_the_callers_thread_when_disabled():
    with pytest.raises(ZeroDivisionError):
        list(prefetch((1 / (2 - k) for k in range(4)), enabled=False))


def test_prefetch_makes_at_most_one_item_ahead():
    alive = set()
    most = []

    class Item:
        def __init__(self, k):
            self.k = k
            alive.add(k)

        def __del__(self):
            alive.discard(self.k)

    def produce():
        for k in range(6):
            yield Item(k)
            most.append(len(alive))

    for item in prefetch(produce()):
        time.sleep(0.05)
        most.append(len(alive))
        del item
    # The item in use and the next one, never more.
    assert max(most) <= 2

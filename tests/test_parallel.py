"""Worker processes: shared results, errors, the worker count."""

import os
import subprocess
import sys

import numpy as np
import pytest

from romosaic.parallel import WORKERS_VARIABLE, resolve_workers, run_in_workers, shared_zeros


def test_workers_write_into_shared_arrays_and_results_keep_their_order():
    frame = shared_zeros((4, 3))
    parent = os.getpid()

    def fill(row):
        frame[row] = row + 1
        return row * 10, os.getpid() != parent

    results = run_in_workers(fill, range(4), workers=2)
    assert [value for value, _ in results] == [0, 10, 20, 30]
    assert all(in_worker for _, in_worker in results)
    np.testing.assert_array_equal(frame[:, 0], [1, 2, 3, 4])


def test_one_worker_runs_in_this_process():
    parent = os.getpid()
    assert run_in_workers(lambda _: os.getpid(), range(3), workers=1) == [parent] * 3


def test_an_error_in_a_worker_reaches_the_caller():
    def fail_on_two(piece):
        if piece == 2:
            raise ValueError(f"piece {piece} is bad")
        return piece

    with pytest.raises(ValueError, match="piece 2 is bad"):
        run_in_workers(fail_on_two, range(4), workers=2)


def test_a_dead_worker_is_reported():
    def die(piece):
        if piece == 1:
            os._exit(9)
        return piece

    with pytest.raises(RuntimeError, match="worker process died"):
        run_in_workers(die, range(3), workers=2)


def test_worker_count_and_its_cap(monkeypatch):
    monkeypatch.delenv(WORKERS_VARIABLE, raising=False)
    assert resolve_workers(3) == 3
    assert resolve_workers(0) == len(os.sched_getaffinity(0))
    monkeypatch.setenv(WORKERS_VARIABLE, "1")
    assert resolve_workers(0) == 1
    assert resolve_workers(4) == 1
    monkeypatch.setenv(WORKERS_VARIABLE, "lots")
    assert resolve_workers(2) == 2


_INTERRUPT_DURING_FORK = """
import os, signal, sys
from romosaic.parallel import run_in_workers

sent = []

def interrupt_once():
    # Runs in the parent right after each fork, where the pool's own fork
    # hooks run too: the worst moment for a Ctrl-C to arrive.
    if not sent:
        sent.append(True)
        os.kill(os.getpid(), signal.SIGINT)

os.register_at_fork(after_in_parent=interrupt_once)
try:
    run_in_workers(lambda piece: piece, range(4), workers=2)
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(0)
print("not interrupted")
"""


def test_an_interrupt_while_the_workers_fork_is_not_lost():
    run = subprocess.run([sys.executable, "-c", _INTERRUPT_DURING_FORK], capture_output=True,
                         text=True, timeout=120)
    assert run.stdout.strip() == "interrupted", (run.stdout, run.stderr)
    assert "Exception ignored" not in run.stderr, run.stderr

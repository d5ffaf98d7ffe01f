"""Every romosaic error survives a pickle round trip (errors from worker processes)."""

import errno
import pickle

import pytest

from romosaic.errors import (
    INPUT_ERROR_EXIT_STATUS,
    OUTPUT_ERROR_EXIT_STATUS,
    AssociationError,
    ModelTypeError,
    OutputError,
    RomosaicError,
    RomosaicInputError,
)
from romosaic.skycell.tessellation import SkycellNotFoundError


@pytest.mark.parametrize("error, status", [
    (RomosaicError(5, "a_cal.asdf: something"), 5),
    (RomosaicInputError("a_cal.asdf: bad input"), INPUT_ERROR_EXIT_STATUS),
    (AssociationError("asn.json: no members"), INPUT_ERROR_EXIT_STATUS),
    (ModelTypeError("x.asdf: a MosaicModel, not an ImageModel"), INPUT_ERROR_EXIT_STATUS),
    (SkycellNotFoundError("skycell 999p99x99y99 does not exist"), INPUT_ERROR_EXIT_STATUS),
    (OutputError("out/: disk full", errno.ENOSPC), OUTPUT_ERROR_EXIT_STATUS),
    (OutputError("out/: cannot write"), OUTPUT_ERROR_EXIT_STATUS),
])
def test_errors_survive_pickling(error, status):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error) and copy.message == error.message
    assert copy.exit_status == status
    if isinstance(error, OSError):
        assert copy.errno == error.errno and copy.strerror == error.message
    with pytest.raises(type(error), match=str(error).split(":")[0]):
        raise copy


def test_an_input_error_from_a_worker_process_keeps_its_message():
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        future = pool.submit(_fail_in_worker, "b_cal.asdf")
        with pytest.raises(RomosaicInputError, match="^b_cal.asdf: exposure time 0 is not"):
            future.result()


def _fail_in_worker(name):
    raise RomosaicInputError(f"{name}: exposure time 0 is not a positive number of seconds")

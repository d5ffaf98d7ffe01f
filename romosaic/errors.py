"""Exceptions that romosaic raises for problems a user can fix.

Every error a user can cause (a bad association, a missing file, a model of
the wrong type, nonsense parameters) is a `RomosaicInputError`. Its message is a
single line naming the problem and the file or parameter involved. A product
that cannot be written (output directory not writable, disk full) is an
`OutputError`.

Both derive from `RomosaicError`, an stpipe `StpipeExitException`, so ``strun``
reports them as one short message and a non-zero exit status instead of a
traceback. The exit status tells a batch system whether a retry can help:
2 (`INPUT_ERROR_EXIT_STATUS`) means the input or the parameters must change;
3 (`OUTPUT_ERROR_EXIT_STATUS`) means the same run may succeed once the output
location is fixed. `RomosaicInputError` is also a `ValueError` and
`OutputError` an `OSError`, so Python callers can catch them the usual way.
"""

from stpipe.exceptions import StpipeExitException

__all__ = [
    "INPUT_ERROR_EXIT_STATUS",
    "OUTPUT_ERROR_EXIT_STATUS",
    "AssociationError",
    "ModelTypeError",
    "OutputError",
    "RomosaicError",
    "RomosaicInputError",
]

#: Exit status of ``strun`` and ``romosaic`` when the input or a parameter is at fault.
INPUT_ERROR_EXIT_STATUS = 2

#: Exit status of ``strun`` when a product cannot be written.
OUTPUT_ERROR_EXIT_STATUS = 3


class RomosaicError(StpipeExitException):
    """A problem romosaic reports in one line, with an exit status for ``strun``.

    Parameters
    ----------
    exit_status : int
        Status ``strun`` exits with.
    message : str
        One line naming the problem and the file or parameter concerned.
    """

    def __init__(self, exit_status, message):
        super().__init__(exit_status, message)
        self.message = message

    def __str__(self):
        return self.message

    def __reduce__(self):
        # The default pickle calls the class with ``self.args`` (status and
        # message), which the subclasses' constructors do not take: errors
        # raised in worker processes (the survey's Dask workers) would not
        # come back. Rebuild without calling the constructor instead.
        errno = getattr(self, "errno", None) if isinstance(self, OSError) else None
        return _rebuild_error, (type(self), self.args, dict(self.__dict__), errno)


def _rebuild_error(cls, args, state, errno=None):
    error = cls.__new__(cls, *args)
    error.__dict__.update(state)
    if errno is not None or isinstance(error, OSError):
        error.errno = errno
        error.strerror = state.get("message")
    return error


class RomosaicInputError(RomosaicError, ValueError):
    """A problem with the user's input, described in one line.

    Parameters
    ----------
    message : str
        One line naming the problem and the file or parameter concerned.
    """

    def __init__(self, message):
        super().__init__(INPUT_ERROR_EXIT_STATUS, message)


class AssociationError(RomosaicInputError):
    """An association file or dictionary that cannot be used."""


class ModelTypeError(RomosaicInputError):
    """A file that opened as a data model of a type the step cannot process."""


class OutputError(RomosaicError, OSError):
    """A product or temporary file that cannot be written.

    Parameters
    ----------
    message : str
        One line naming the file or directory and the system's reason.
    errno : int, optional
        The underlying system error number (e.g. ``errno.ENOSPC``), if any.
    """

    def __init__(self, message, errno=None):
        super().__init__(OUTPUT_ERROR_EXIT_STATUS, message)
        # OSError's own slots; set after __init__ so that they are not
        # taken from the (status, message) arguments.
        self.errno = errno
        self.strerror = message

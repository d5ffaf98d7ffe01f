"""Exceptions that romosaic raises for problems a user can fix.

Every error a user can cause (a bad association, a missing file, a model of
the wrong type, nonsense parameters) is a `RomosaicInputError`. Its message is a
single line naming the problem and the file or parameter involved.

`RomosaicInputError` derives from stpipe's `StpipeExitException`, so ``strun``
reports it as a short message and a non-zero exit status instead of a
traceback, and from `ValueError`, so Python callers can catch it the usual way.
"""

from stpipe.exceptions import StpipeExitException

__all__ = [
    "INPUT_ERROR_EXIT_STATUS",
    "AssociationError",
    "RomosaicInputError",
    "ModelTypeError",
]

#: Exit status of ``strun`` and ``romosaic`` when the input is at fault.
INPUT_ERROR_EXIT_STATUS = 2


class RomosaicInputError(StpipeExitException, ValueError):
    """A problem with the user's input, described in one line.

    Parameters
    ----------
    message : str
        One line naming the problem and the file or parameter concerned.
    """

    def __init__(self, message):
        super().__init__(INPUT_ERROR_EXIT_STATUS, message)
        self.message = message

    def __str__(self):
        return self.message


class AssociationError(RomosaicInputError):
    """An association file or dictionary that cannot be used."""


class ModelTypeError(RomosaicInputError):
    """A file that opened as a data model of a type the step cannot process."""

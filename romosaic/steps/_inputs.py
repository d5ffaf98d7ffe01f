"""A library's images as drizzle inputs, read one at a time, for the drizzling steps."""

from ..resample.inputs import INPUT_VARIANCES, input_from_model

__all__ = ["read_inputs"]


def read_inputs(library, indices=None, *, variances=INPUT_VARIANCES):
    """Yield each image of ``library`` as a `~romosaic.resample.ResampleInput`.

    An image is read when the consumer asks for it. Its model is shelved as
    soon as the arrays are taken, and this generator keeps no reference to
    what it yielded, so an array the consumer drops (the DQ array once the
    weights are made, say) is freed at once rather than when the next image
    is asked for.

    Parameters
    ----------
    library : romosaic.library.ModelLibrary
    indices : iterable of int, optional
        The images to read, in order; all by default.
    variances : sequence of str, optional
        The variance planes to read (see `romosaic.resample.input_from_model`).
    """
    with library:
        for index in range(len(library)) if indices is None else indices:
            yield _read_input(library, index, variances)


def _read_input(library, index, variances):
    model = library.borrow(index)
    try:
        return input_from_model(model, variances=variances)
    finally:
        library.shelve(model, index, modify=False)

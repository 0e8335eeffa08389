"""The one exception type the engine raises for bad input.

`InputError` is a `ValueError`, so callers that already catch `ValueError`
keep working; the command line tool and the Slicer module catch it and show
its message, which always says what is wrong and what to do about it.
"""


class InputError(ValueError):
    """Input that DiffReg cannot use: wrong shape, non-finite values, missing geometry, ..."""

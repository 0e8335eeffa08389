"""`limits.check_number`: finite numbers in range pass as float/int; everything else is an InputError naming it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from DiffRegLogic.errors import InputError
from DiffRegLogic.limits import check_number


@pytest.mark.parametrize("value, kwargs, expected", [
    (5, {}, 5.0), (np.float32(2.5), {}, 2.5), (np.int64(7), {"integer": True}, 7), (3.0, {"integer": True}, 3),
    (0.0, {"low": 0.0}, 0.0), (1e5, {"low": 1.0, "high": 1e5}, 1e5),
])
def test_accepted(value, kwargs, expected):
    result = check_number("x", value, **kwargs)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("value, kwargs, message", [
    (math.nan, {}, "x must be a finite number, got nan"),
    (-math.inf, {}, "x must be a finite number, got -inf"),
    (10**400, {}, "x must be a finite number, got an integer of 401 digits"),
    (10**400, {"integer": True, "high": 10}, "x must be <= 10, got an integer of 401 digits"),
    (2**70, {"integer": True, "low": 0, "high": 2**32 - 1}, "got an integer of 22 digits"),
    pytest.param(10**5000, {}, "got an integer of 5001 digits", id="10**5000"),
    (2.5, {"integer": True}, "x must be a whole number, got 2.5"),
    (True, {}, "x must be a number, got True"),
    ("3", {}, "x must be a number, got '3'"),
    (None, {}, "x must be a number, got None"),
    (0.0, {"low": 0.0, "low_open": True, "unit": "mm"}, "x must be > 0 mm, got 0.0 mm"),
    (1e308, {"low": 1.0, "high": 1e5, "unit": "mm"}, r"x must be >= 1 mm and <= 100000 mm, got 1e\+308 mm"),
])
def test_refused(value, kwargs, message):
    with pytest.raises(InputError, match=message):
        check_number("x", value, **kwargs)

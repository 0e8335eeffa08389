"""`DiffRegLogic.registry.Registry`: the name tables behind every choice (similarities, optimisers)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from DiffRegLogic.errors import InputError
from DiffRegLogic.registry import Registry


def test_lazy_references_resolve_on_lookup_and_objects_are_kept():
    table = Registry("thing", {"sqrt": "math:sqrt", "three": 3}, {"sqrt": "square root"})
    import math

    assert table["sqrt"] is math.sqrt and table.lookup("three") == 3
    assert list(table) == ["sqrt", "three"] and len(table) == 2 and "sqrt" in table
    assert table.names() == ("sqrt", "three") and table.description("sqrt") == "square root"
    assert table.description("three") == ""


def test_unknown_names_list_the_valid_ones_and_duplicates_are_refused():
    table = Registry("measure", {"b": 1, "a": 2})
    with pytest.raises(InputError, match="unknown measure 'c'; valid names: a, b"):
        table.lookup("c")
    with pytest.raises(InputError, match="already registered"):
        table.register("a", 5)
    table.register("a", 5, replace=True)
    assert table["a"] == 5
    table.unregister("a")
    assert "a" not in table
    with pytest.raises(InputError, match="non-empty string"):
        table.register("", 1)


def test_the_engine_tables_list_names_without_importing_torch():
    code = ("import sys; from DiffRegLogic.similarity.registry import SIMILARITIES, RESIDUALS; "
            "from DiffRegLogic.registration.optimizers import OPTIMIZERS; "
            "names = list(SIMILARITIES) + list(RESIDUALS) + list(OPTIMIZERS); "
            "assert 'zncc' in names and 'adam' in names; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_engine_table_entry_resolves():
    from DiffRegLogic.registration.optimizers import BASELINE_OPTIMIZERS, GRADIENT_OPTIMIZERS, OPTIMIZERS
    from DiffRegLogic.similarity.registry import RESIDUALS, SIMILARITIES

    for table in (SIMILARITIES, RESIDUALS):
        assert all(callable(table[name]) for name in table)
    for name in OPTIMIZERS:
        level = OPTIMIZERS[name]
        assert callable(level.run) and isinstance(level.one_start_at_a_time, bool)
        assert level.one_start_at_a_time == (name in BASELINE_OPTIMIZERS)
    assert set(OPTIMIZERS) == set(GRADIENT_OPTIMIZERS) | set(BASELINE_OPTIMIZERS) | {"lm"}
    assert OPTIMIZERS["lm"].needs_residual and not OPTIMIZERS["adam"].needs_residual

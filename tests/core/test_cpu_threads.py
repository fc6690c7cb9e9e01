"""The CPU platform's intra-op thread count: a core left to the engine's host threads, the user's setting kept."""

from __future__ import annotations

import pytest

from sgl.plugins.xpu_cpu.platform import intra_op_threads


def test_one_core_is_left_to_the_engine_threads() -> None:
    assert intra_op_threads(2, None, omp_set=False) == 1
    assert intra_op_threads(16, None, omp_set=False) == 15
    assert intra_op_threads(1, None, omp_set=False) == 1


def test_the_users_settings_win() -> None:
    assert intra_op_threads(16, "4", omp_set=True) == 4
    assert intra_op_threads(16, None, omp_set=True) is None


def test_a_bad_setting_names_the_variable() -> None:
    with pytest.raises(ValueError, match="SGL_CPU_THREADS"):
        intra_op_threads(4, "0", omp_set=False)

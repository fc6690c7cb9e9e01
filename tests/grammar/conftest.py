"""Engines shared by the grammar tests: one default engine per module keeps the suite's wall time down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import sgl
from tests.core.engine_utils import make_engine


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> Iterator[sgl.Engine]:
    eng = make_engine(demo_model_dir)
    yield eng
    eng.shutdown()

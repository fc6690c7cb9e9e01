"""uvicorn's HTTP parser: httptools where installed, h11 otherwise, and the fallback is said once in the log."""

from __future__ import annotations

import logging
import sys

import pytest

from sgl.api.server import http_parser


def test_httptools_is_used_where_installed_and_h11_is_logged_otherwise(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("httptools")
    assert http_parser() == "httptools"
    monkeypatch.setitem(sys.modules, "httptools", None)  # NOTE: makes the import fail
    with caplog.at_level(logging.INFO, logger="sgl.serve"):
        assert http_parser() == "h11"
    assert "httptools is not installed" in caplog.text

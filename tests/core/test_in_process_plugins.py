"""Plugins added in-process (``add_in_process_plugin``): a benchmark's own algorithm joins the process-wide plugin
set through the same hooks and contract checks as an entry point's, and leaves it when removed."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from sgl.core.hooks import hookimpl
from sgl.core.plugins import add_in_process_plugin, get_plugins, remove_in_process_plugin

TARGET = "sgl.plugins.speculative.ngram:NgramAlgorithm"


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    added: list[str] = []
    yield added
    for name in added:
        remove_in_process_plugin(name)


def test_an_in_process_plugin_registers_through_its_hooks_until_removed(cleanup: list[str]) -> None:
    hooks = SimpleNamespace(sgl_speculative_algorithms=hookimpl(lambda: {"IN_PROCESS_NGRAM": TARGET}))
    add_in_process_plugin("in-process-test", hooks)
    cleanup.append("in-process-test")
    registry = get_plugins().speculative_algorithms
    assert "IN_PROCESS_NGRAM" in registry and registry.origin("IN_PROCESS_NGRAM") == "in-process-test"
    assert [i.distribution for i in get_plugins().infos if i.name == "in-process-test"] == ["(in-process)"]
    remove_in_process_plugin("in-process-test")
    assert "IN_PROCESS_NGRAM" not in get_plugins().speculative_algorithms


def test_an_in_process_plugin_that_breaks_the_contract_is_skipped_and_named(cleanup: list[str]) -> None:
    hooks = SimpleNamespace(sgl_speculative_algorithm=hookimpl(lambda: {"X": TARGET}))  # NOTE: misspelt hook
    add_in_process_plugin("misspelt", hooks)
    cleanup.append("misspelt")
    failures = {f.plugin.name: f.error for f in get_plugins().failures}
    assert "unknown hook 'sgl_speculative_algorithm'" in failures["misspelt"]
    assert "EAGLE3" in get_plugins().speculative_algorithms  # the entry points' plugins still load

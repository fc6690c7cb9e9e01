"""Hook implementations of the speculative plugin (light: names the algorithms by string, imports nothing heavy)."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_speculative_algorithms() -> dict[str, str]:
    return {
        "NGRAM": "sgl.plugins.speculative.ngram:NgramAlgorithm",
        "STANDALONE": "sgl.plugins.speculative.standalone:StandaloneAlgorithm",
    }

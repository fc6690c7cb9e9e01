"""Hook implementations of the grammar plugin (light: names the backend by string, imports no grammar library)."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_grammar_backends() -> dict[str, str]:
    return {"xgrammar": "sgl.plugins.grammar.xgrammar_backend:XGrammarBackend"}

"""Tool calling on /v1/chat/completions: the parser contract (base), request checks (request) and streaming (stream).

Parsers for model families are plugins (``sgl_tool_call_parsers``), chosen by ``--tool-call-parser``.
"""

"""Tool-call parsers for the model families' formats, registered through ``sgl_tool_call_parsers``."""

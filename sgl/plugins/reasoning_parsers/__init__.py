"""Reasoning parsers of the model families, registered through ``sgl_reasoning_parsers``."""

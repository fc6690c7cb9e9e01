"""The grammar feature plugin: constrained decoding backends registered through ``sgl_grammar_backends``."""

"""The model graph's building blocks: config, context, parallel linear/embedding layers, norms, rope, attention, loader.

Architectures in ``sgl/core/models`` compose these; no layer reads a global, everything arrives in a ModelContext.
"""

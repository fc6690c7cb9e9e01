"""ModelRunner built from parts: input prep, attention metadata, graph runner, sampler."""

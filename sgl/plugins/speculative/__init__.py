"""The speculative decoding plugin: NGRAM (and the draft-model algorithms), registered through
``sgl_speculative_algorithms`` exactly as a third party's plugin would be."""

"""The speculative decoding plugin: NGRAM, STANDALONE, EAGLE and EAGLE3 (with the EAGLE draft heads' architectures),
registered through ``sgl_speculative_algorithms`` and ``sgl_models`` exactly as a third party's plugin would be."""

"""Speculative decoding: the algorithm contract (base.py); algorithms are plugins (``sgl_speculative_algorithms``)."""

"""Quantization: the method contract (base.py); methods themselves are plugins (``sgl_quantization_methods``)."""

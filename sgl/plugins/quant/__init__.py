"""Quantization methods (FP8, AWQ, GPTQ, NVFP4) as a feature plugin: each reads its checkpoint config, lays out its
weights for the layers' loaders, and computes through a torch reference LinearMethod that runs on every platform
(the oracle the Triton kernels in ``sgl.kernels`` are tested against)."""

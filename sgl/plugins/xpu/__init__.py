"""The Intel XPU platform: Intel GPUs through PyTorch's native ``xpu`` device (no Intel Extension for PyTorch), the
portable Triton kernels through Triton's XPU backend, XCCL collectives. Not yet run on an Intel GPU
(docs/hardware.md)."""

"""The ROCm platform: AMD Instinct GPUs through PyTorch's HIP build, the portable Triton kernels, AMD's aiter kernels
where they import, RCCL collectives. Written against the public APIs; not yet run on AMD hardware (docs/hardware.md)."""

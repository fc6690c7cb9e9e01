"""The CUDA platform: NVIDIA GPUs, Triton kernels, NCCL collectives."""

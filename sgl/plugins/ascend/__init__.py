"""The Ascend platform: Huawei Ascend NPUs through torch_npu (the ``npu`` device), torch_npu's fused attention, norm
and rotary ops, HCCL collectives. Written against torch_npu's public API; not yet run on an NPU (docs/hardware.md)."""

"""The LoRA feature plugin: PEFT adapters served many to a batch, registered through ``sgl_lora_backends``."""

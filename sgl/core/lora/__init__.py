"""LoRA serving: the backend contract (base.py); backends are plugins (``sgl_lora_backends``)."""

"""Model architectures, one file each, registered by name through the ``sgl_models`` hook (see builtin.py)."""

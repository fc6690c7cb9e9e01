"""`sgl bench`: one-batch latency, offline throughput and online serving, over synthetic token-id workloads.

Workloads are token ids, never text, so any config (a shipped architecture with ``--load-format dummy``) can be
measured without weights or a real tokenizer.
"""

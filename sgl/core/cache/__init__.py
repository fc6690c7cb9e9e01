"""Prefix caches over the KV pool.

``base.py`` is the contract the scheduler codes against; ``radix_cache.py`` shares KV between requests through a radix
tree of token runs, and ``chunk_cache.py`` is the no-sharing cache used with ``--disable-radix-cache``.
"""

"""The request-to-token table, the KV pool, and the slot/page allocator."""

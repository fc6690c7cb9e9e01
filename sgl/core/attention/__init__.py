"""The AttentionBackend contract and the torch-native paged attention backend."""

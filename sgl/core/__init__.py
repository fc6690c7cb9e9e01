"""The hardware-neutral engine. Imports only torch, numpy, the stdlib and small pure-Python libraries."""

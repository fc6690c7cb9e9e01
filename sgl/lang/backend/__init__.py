"""Backends: the servers a program can run against (the contract is base.py)."""

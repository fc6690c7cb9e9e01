"""The CPU platform: the torch reference path, available everywhere."""

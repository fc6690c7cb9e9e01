"""Every SGL_* environment variable, read in this one place."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str | None
    help: str

    def get(self) -> str | None:
        return os.environ.get(self.name, self.default) or None

    def get_bool(self) -> bool:
        value = self.get()
        return value is not None and value.lower() in ("1", "true", "yes", "on")


BACKEND = EnvVar("SGL_BACKEND", None, "platform to use when --backend is not given")
CACHE_DIR = EnvVar("SGL_CACHE_DIR", None, "where the demo model and other generated files are kept")
DEBUG_INVARIANTS = EnvVar("SGL_DEBUG_INVARIANTS", None, "check KV-pool accounting after every scheduler step")
LOG_LEVEL = EnvVar("SGL_LOG_LEVEL", None, "logging level (debug, info, warning)")
FAULT_INJECT = EnvVar("SGL_FAULT_INJECT", None, "test seam: raise@forward or sleep=SECONDS@forward (sgl/core/faults.py)")
FAULT_INJECT_ARM = EnvVar("SGL_FAULT_INJECT_ARM", None, "test seam: the fault fires once, when this file appears")

ALL = [BACKEND, CACHE_DIR, DEBUG_INVARIANTS, LOG_LEVEL, FAULT_INJECT, FAULT_INJECT_ARM]

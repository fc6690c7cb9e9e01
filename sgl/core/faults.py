"""Fault injection: a documented test seam that makes one named point of the engine fail or hang on demand.

Tests (and operators rehearsing an incident) set two environment variables before the server starts:

- ``SGL_FAULT_INJECT=ACTION@POINT``: ``raise@forward`` raises ``InjectedFault`` inside a model forward;
  ``sleep=SECONDS@forward`` hangs the forward that long (what a stuck device or collective looks like).
- ``SGL_FAULT_INJECT_ARM=PATH``: the fault fires once, at the first call after PATH appears, and removes PATH, so a
  test chooses exactly which request meets the fault and the next ones are served. Without it, every call fires.

Unset (always, in production), ``fault_injector()`` is None and the engine pays one ``is None`` test per forward.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from sgl.core import env

logger = logging.getLogger(__name__)

POINTS = ("forward",)


class InjectedFault(RuntimeError):
    """The error a ``raise`` fault raises; its message names the point, so a test can find it in a 500's text."""


@dataclass(frozen=True)
class FaultInjector:
    action: str  # "raise" | "sleep"
    point: str
    sleep_s: float = 0.0
    arm_path: str | None = None

    @classmethod
    def parse(cls, spec: str, arm_path: str | None = None) -> FaultInjector:
        action, sep, point = spec.partition("@")
        if not sep or point not in POINTS:
            raise ValueError(f"{env.FAULT_INJECT.name}={spec!r}: expected ACTION@POINT with POINT one of "
                             f"{', '.join(POINTS)} (e.g. raise@forward, sleep=30@forward)")
        if action == "raise":
            return cls("raise", point, arm_path=arm_path)
        name, _, seconds = action.partition("=")
        try:
            sleep_s = float(seconds)
        except ValueError:
            sleep_s = -1.0
        if name != "sleep" or sleep_s < 0:
            raise ValueError(f"{env.FAULT_INJECT.name}={spec!r}: ACTION is raise or sleep=SECONDS")
        return cls("sleep", point, sleep_s, arm_path)

    def at(self, point: str) -> None:
        """Called by the engine at ``point``; fires when this injector targets it (and is armed)."""
        if point != self.point or not self._take_arm():
            return
        logger.warning("fault injection: %s at %s", self.action, point)
        if self.action == "raise":
            raise InjectedFault(f"injected fault in {point}")
        time.sleep(self.sleep_s)

    def _take_arm(self) -> bool:
        if self.arm_path is None:
            return True
        try:
            os.remove(self.arm_path)
        except FileNotFoundError:
            return False
        return True


def fault_injector() -> FaultInjector | None:
    """The injector the environment asks for, or None (the normal case)."""
    spec = env.FAULT_INJECT.get()
    return FaultInjector.parse(spec, env.FAULT_INJECT_ARM.get()) if spec else None

"""The replay algorithm's plugin: its hook implementations and options (light: strings and a dataclass only).

Never an entry point: ``benchmarks/spec_replay.py`` adds it to its own process with
``sgl.core.plugins.add_in_process_plugin``, so no server offers ``--speculative-algorithm EAGLE3_REPLAY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sgl.core.hooks import hookimpl

PLUGIN = "spec_replay"
ALGORITHM = "EAGLE3_REPLAY"


@dataclass(frozen=True)
class ReplayArgs:
    """The acceptance the replay algorithm imposes on its drafts."""

    corrupt: float = field(default=0.0, metadata={"help": "probability that a draft is rejected (the first rejection "
                                                          "ends the accepted run)"})
    seed: int = field(default=0, metadata={"help": "seed of the acceptance draws"})


@hookimpl
def sgl_speculative_algorithms() -> dict[str, str]:
    return {ALGORITHM: "benchmarks.replay_proposer:Eagle3ReplayAlgorithm"}


@hookimpl
def sgl_server_args() -> str:
    return "benchmarks.spec_replay_plugin:ReplayArgs"

"""A benchmark-only speculative proposer: EAGLE-3's draft forwards run as usual (their time is paid), then their
proposals are replaced by the target's recorded greedy continuation, each drafted token made wrong with probability
``corrupt`` (seeded).

Why: dummy draft weights accept nothing, so they cannot show what the speculative machinery delivers at a given
acceptance. With the recording right, a chain of k drafts is accepted up to its first wrong token, so its mean
acceptance length is 1 + sum_(j=1..k) (1 - p)^j (``expected_accept_length``). It never changes what is emitted: the
target verifies every draft. A request whose tokens leave its recording (device numerics moved a near-tie between
the plain run and the verify forward) is counted in ``replay_diverged_requests`` and gets the draft head's own
proposals from then on; each finished request's output then replaces its prompt's recording, so later runs of the
same prompt replay what this engine's target emits.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from benchmarks.spec_replay_plugin import ALGORITHM, ReplayArgs
from sgl.core.plugin_options import plugin_args
from sgl.plugins.speculative.eagle import Eagle3Algorithm

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.runner.model_runner import ModelRunner
    from sgl.core.scheduler.batch import ScheduleBatch
    from sgl.core.scheduler.req import Req

Recording = dict[tuple[int, ...], list[int]]  # prompt ids -> the target's greedy continuation


def save_recording(path: Path, prompts: list[list[int]], outputs: list[list[int]]) -> Path:
    rows = [{"prompt": p, "output": o} for p, o in zip(prompts, outputs, strict=True)]
    path.write_text(json.dumps({"continuations": rows}))
    return path


def load_recording(path: str) -> Recording:
    if not path:
        raise ValueError(f"--speculative-algorithm {ALGORITHM} needs ReplayArgs.recording (a JSON file)")
    rows = json.loads(Path(path).read_text())["continuations"]
    return {tuple(r["prompt"]): list(r["output"]) for r in rows}


def expected_accept_length(corrupt: float, steps: int) -> float:
    """Tokens per verify forward when each of ``steps`` drafts is wrong with probability ``corrupt``, independently."""
    return 1.0 + sum((1.0 - corrupt) ** j for j in range(1, steps + 1))


def corruption_for(accept_length: float, steps: int) -> float:
    """The corruption rate whose expected acceptance length is ``accept_length`` (1 .. steps + 1)."""
    if not 1.0 <= accept_length <= steps + 1:
        raise ValueError(f"acceptance length {accept_length}: a chain of {steps} drafts gives 1 to {steps + 1}")
    lo, hi = 0.0, 1.0
    for _ in range(60):  # NOTE: expected_accept_length falls as the rate rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_accept_length(mid, steps) > accept_length else (lo, mid)
    return round((lo + hi) / 2, 6)


@dataclass
class _Track:
    """A request's recorded continuation and how much of its output was checked against it."""

    continuation: list[int]
    checked: int = 0
    diverged: bool = False


class Replayer:
    """Turns a request's drafts into its recorded continuation, each token wrong with probability ``corrupt``."""

    def __init__(self, recording: Recording, corrupt: float, seed: int, vocab_size: int) -> None:
        if not 0.0 <= corrupt <= 1.0:
            raise ValueError(f"ReplayArgs.corrupt {corrupt}: a probability, 0 to 1")
        self.recording = recording
        self.corrupt = corrupt
        self.rng = random.Random(seed)
        self.vocab_size = vocab_size
        self.tracks: dict[str, _Track] = {}
        self.unrecorded = 0  # requests whose prompt is not in the recording
        self.diverged = 0

    def _track(self, r: Req) -> _Track | None:
        track = self.tracks.get(r.rid)
        if track is None:
            continuation = self.recording.get(tuple(r.origin_input_ids))
            if continuation is None:
                self.unrecorded += 1
                continuation = []
            track = self.tracks[r.rid] = _Track(continuation, diverged=not continuation)
        out = r.output_ids
        if not track.diverged and out[track.checked :] != track.continuation[track.checked : len(out)]:
            track.diverged = True
            self.diverged += 1
        track.checked = len(out)
        return None if track.diverged else track

    def _wrong(self, token: int) -> int:
        """Any other token of the vocabulary, uniformly (``random()`` rather than ``randrange``: host time)."""
        return (token + 1 + int(self.rng.random() * (self.vocab_size - 1))) % self.vocab_size

    def replay(self, r: Req, own: list[int]) -> list[int]:
        """``own`` (the draft head's proposals) replaced by what the recording says comes next, as far as it goes."""
        track = self._track(r)
        if track is None:
            return own
        n = len(r.output_ids)
        recorded = track.continuation[n : n + len(own)]
        if self.corrupt == 0.0:
            drafts = recorded
        else:
            drafts = [self._wrong(t) if self.rng.random() < self.corrupt else t for t in recorded]
        return drafts + own[len(drafts) :]

    def release(self, r: Req) -> None:
        """Forgets the request; a finished one's output becomes its prompt's recording (an abort's shorter one not)."""
        if self.tracks.pop(r.rid, None) is None or not r.finished:
            return
        key = tuple(r.origin_input_ids)
        if len(r.output_ids) >= len(self.recording.get(key, ())):
            self.recording[key] = list(r.output_ids)


class Eagle3ReplayAlgorithm(Eagle3Algorithm):
    """EAGLE3 whose proposals are replayed (chains only: ``--speculative-eagle-topk 1``)."""

    algorithm = ALGORITHM
    replayer: Replayer

    @classmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> Eagle3ReplayAlgorithm:
        topk = server_args.speculative_eagle_topk
        if topk not in (None, 1):
            raise ValueError(f"--speculative-eagle-topk {topk}: {ALGORITHM} replays chains (topk 1)")
        opts = plugin_args(server_args, ReplayArgs)
        replayer = Replayer(load_recording(opts.recording), opts.corrupt, opts.seed, runner.model_config.vocab_size)
        algo = super().create(server_args, runner)
        assert isinstance(algo, cls)
        algo.replayer = replayer
        return algo

    @torch.inference_mode()
    def _draft(self, batch: ScheduleBatch, budgets: list[int], rows: list[list[int]]) -> list[list[int]]:
        drafts = super()._draft(batch, budgets, rows)  # NOTE: the draft head's forwards, paid as EAGLE3 pays them
        return [self.replayer.replay(r, d) if d else d for r, d in zip(batch.reqs, drafts)]

    def release(self, req: Req) -> None:
        self.replayer.release(req)
        super().release(req)

    def info(self) -> dict[str, Any]:
        rep = self.replayer
        return {
            **super().info(), "spec_verify_rows": self.stats.verify_rows, "replay_corrupt": rep.corrupt,
            "replay_expected_accept_length": round(expected_accept_length(rep.corrupt, self.num_steps), 4),
            "replay_diverged_requests": rep.diverged, "replay_unrecorded_requests": rep.unrecorded,
        }

"""--max-queued-requests bounds the waiting queue in the scheduler: past it a request ends at once (503 at the
HTTP edge, tests/api/test_faults_and_limits.py); sgl.Engine has no bound unless given, so an offline batch runs whole."""

from __future__ import annotations

from pathlib import Path

from sgl.core.config import ServerArgs
from tests.core.engine_utils import PROMPTS, make_engine

PARAMS = {"temperature": 0.0, "max_new_tokens": 4, "ignore_eos": True}


def test_the_server_default_is_bounded_and_the_engine_default_is_not(demo_model_dir: Path) -> None:
    assert ServerArgs().max_queued_requests == 8192
    engine = make_engine(demo_model_dir, max_running_requests=1)
    try:
        assert engine.server_args.max_queued_requests is None
        outs = engine.generate(PROMPTS, PARAMS)
        assert all(o["meta_info"]["finish_reason"]["type"] == "length" for o in outs)
    finally:
        engine.shutdown()


def test_requests_past_the_queue_bound_end_at_once_naming_the_flag(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir, max_running_requests=1, max_queued_requests=2)
    try:
        # six at once, each long enough to hold the one running slot while the others arrive: one runs, two wait,
        # the rest are refused (one more may be served when the first arrives alone)
        outs = engine.generate(PROMPTS, {**PARAMS, "max_new_tokens": 48})
        reasons = [o["meta_info"]["finish_reason"] for o in outs]
        refused = [r for r in reasons if r["type"] == "abort"]
        assert len(PROMPTS) - 3 <= len(refused) <= len(PROMPTS) - 2, reasons
        assert all("--max-queued-requests 2" in r["message"] for r in refused)
        assert [r["type"] for r in reasons].count("length") == len(PROMPTS) - len(refused)
        again = engine.generate(PROMPTS[:2], PARAMS)  # the queue drained: served again
        assert all(o["meta_info"]["finish_reason"]["type"] == "length" for o in again)
    finally:
        engine.shutdown()

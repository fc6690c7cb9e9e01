"""`sgl serve --nnodes N --node-rank K` for K > 0: this machine runs its share of the tensor-parallel ranks and no
HTTP server; node 0 serves and leads. The node lives as long as its ranks: when node 0 shuts down (its ShutdownReq
reaches every rank through the broadcast) or any rank dies, the node stops them all and exits."""

from __future__ import annotations

import logging
import multiprocessing.connection
import signal
import threading
from types import FrameType

from sgl.core.config import ServerArgs
from sgl.core.distributed.rank_process import SchedulerStartError, spawn_rank, stop_ranks, wait_ranks_ready
from sgl.core.distributed.topology import local_ranks, replica_addr

logger = logging.getLogger("sgl.serve")


def serve_node(args: ServerArgs) -> int:
    """Runs this node's ranks until they end; returns the exit code (0 when every rank ended cleanly)."""
    places = local_ranks(args, 0, replica_addr(args, 0))
    logger.info("node %d of %d: starting ranks %s, group store at %s", args.node_rank, args.nnodes,
                ", ".join(p.name for p in places), places[0].init_addr)
    ranks = [spawn_rank(args, p) for p in places]
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        logger.info("%s: stopping this node's ranks", signal.Signals(sig).name)
        stop.set()

    originals = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            wait_ranks_ready(ranks)
        except SchedulerStartError as exc:
            logger.error("node %d failed to start: %s", args.node_rank, exc)
            return 1
        logger.info("node %d: ranks ready, serving for node 0", args.node_rank)
        sentinels = [r.process.sentinel for r in ranks]
        while not stop.is_set():
            ended = multiprocessing.connection.wait(sentinels, 0.5)
            if ended:
                r = next(r for r in ranks if r.process.sentinel in ended)
                r.process.join(1)
                code = r.process.exitcode
                (logger.info if code == 0 else logger.error)(
                    "rank %s (pid %s) exited with code %s; stopping this node", r.place.name, r.process.pid, code)
                break
    finally:
        codes = stop_ranks(ranks)
        for sig, handler in originals.items():
            signal.signal(sig, handler)
    return 0 if stop.is_set() or all(c == 0 for c in codes) else 1

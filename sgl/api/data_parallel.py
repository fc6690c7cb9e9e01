"""`--dp-size N`: N scheduler replicas (each a tensor-parallel group) behind one dispatcher in the API process.

The dispatcher looks to the TokenizerManager like one scheduler: a request goes to the replica the load-balance
method picks (siblings of an n > 1 request go where their first went, so they share its prompt's KV), an abort to
the replica serving the rid, and the control messages (info, flush, feature calls) to every replica, whose answers
are merged into one. A replica that dies takes the server down, as a lone scheduler's death does.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from sgl.api.scheduler_process import SchedulerProcess
from sgl.core.config import ServerArgs
from sgl.core.distributed.load_balance import make_load_balancer
from sgl.core.distributed.topology import replica_addr
from sgl.core.ipc import (
    AbortReq,
    BatchOutput,
    FeatureCallReq,
    FlushCacheReq,
    FlushCacheResp,
    GenerateReq,
    GetInfoReq,
    InfoResp,
    SchedulerFailed,
)

logger = logging.getLogger(__name__)

_EOF = object()
# NOTE: figures that are one replica's setting, not an amount that adds up over replicas
_NOT_SUMMED = frozenset({"page_size", "scheduler_pid"})


def merge_infos(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Replica 0's answer with every count summed over the replicas, and each replica's own under ``replicas``."""
    merged = dict(infos[0])
    for key, value in infos[0].items():
        if key in _NOT_SUMMED or isinstance(value, bool) or not isinstance(value, int):
            continue
        merged[key] = sum(int(i.get(key, 0)) for i in infos)
    total, free, evictable = merged.get("max_total_tokens"), merged.get("available_tokens"), \
        merged.get("evictable_tokens")
    if isinstance(total, int) and total and isinstance(free, int) and isinstance(evictable, int):
        merged["token_usage"] = round((total - free - evictable) / total, 4)
    if "cached_tokens" in merged and "prompt_tokens" in merged:
        merged["cache_hit_rate"] = round(merged["cached_tokens"] / max(merged["prompt_tokens"], 1), 4)
    merged["replicas"] = infos
    return merged


@dataclass
class _Pending:
    """Answers to a control message sent to every replica, until all have come."""

    merge: bool = True  # info figures are merged; a feature call's result is replica 0's (or the first refusal)
    answers: dict[int, Any] = field(default_factory=dict)


class DataParallelScheduler:
    def __init__(self, args: ServerArgs, replicas: list[SchedulerProcess]) -> None:
        self.replicas = replicas
        self.balancer = make_load_balancer(args.load_balance_method, len(replicas))
        self.loads = [0] * len(replicas)  # requests dispatched and not finished, per replica
        self._where: dict[str, int] = {}  # rid -> replica
        self._groups: dict[str, int] = {}  # n > 1 group -> replica
        self._group_live: dict[str, int] = {}
        self._rid_group: dict[str, str] = {}
        self._lock = threading.Lock()
        self._info: dict[int, _Pending] = {}
        self._flush: list[_Pending] = []
        self._inbox: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._dead: int | None = None
        self._readers: list[threading.Thread] = []

    @classmethod
    def spawn(cls, args: ServerArgs) -> DataParallelScheduler:
        addrs: list[str] = []
        for i in range(args.dp_size):
            addr = replica_addr(args, i)
            while addr and addr in addrs:  # NOTE: two free-port probes may return the same port
                addr = replica_addr(args, i)
            addrs.append(addr)
        return cls(args, [SchedulerProcess.spawn(args, i, addr) for i, addr in enumerate(addrs)])

    # start-up and shutdown --------------------------------------------------------------------------------------
    def wait_ready(self, timeout: float | None = None) -> dict[str, Any]:
        infos = [r.wait_ready(timeout) for r in self.replicas]
        for i, r in enumerate(self.replicas):
            t = threading.Thread(target=self._read, args=(i, r), name=f"sgl-dp{i}-reader", daemon=True)
            t.start()
            self._readers.append(t)
        # NOTE: limits come from one replica's pool (a request runs on one), the pids from all
        return {**infos[0], "scheduler_pids": [p for i in infos for p in i["scheduler_pids"]]}

    def stop(self, timeout: float = 10.0) -> int | None:
        codes = [r.stop(timeout) for r in self.replicas]
        return next((c for c in codes if c), codes[0])

    # the pipe ---------------------------------------------------------------------------------------------------
    def _read(self, i: int, replica: SchedulerProcess) -> None:
        while True:
            try:
                msg = replica.recv()
            except (EOFError, OSError):
                self._inbox.put((i, _EOF))
                return
            self._inbox.put((i, msg))

    def send(self, msg: Any) -> None:
        if isinstance(msg, GenerateReq):
            self._dispatch(msg)
        elif isinstance(msg, AbortReq):
            with self._lock:
                where = self._where.get(msg.rid)
            targets = [where] if where is not None else range(len(self.replicas))
            for i in targets:
                self.replicas[i].send(msg)
        else:
            with self._lock:
                if isinstance(msg, (GetInfoReq, FeatureCallReq)):
                    self._info[msg.token] = _Pending(merge=isinstance(msg, GetInfoReq))
                elif isinstance(msg, FlushCacheReq):
                    self._flush.append(_Pending())
            for r in self.replicas:
                r.send(msg)

    def _dispatch(self, msg: GenerateReq) -> None:
        with self._lock:
            i = self._groups.get(msg.group) if msg.group is not None else None
            if i is None:
                i = self.balancer.pick(msg.input_ids, self.loads)
            if msg.group is not None:
                self._groups[msg.group] = i
                self._group_live[msg.group] = self._group_live.get(msg.group, 0) + 1
                self._rid_group[msg.rid] = msg.group
            self.loads[i] += 1
            self._where[msg.rid] = i
        self.replicas[i].send(msg)

    def _finished(self, rid: str) -> None:
        i = self._where.pop(rid, None)
        if i is not None:
            self.loads[i] -= 1
        group = self._rid_group.pop(rid, None)
        if group is not None:
            self._group_live[group] -= 1
            if not self._group_live[group]:
                del self._group_live[group], self._groups[group]

    def recv(self) -> Any:
        """The next message for the TokenizerManager; EOFError when a replica is gone."""
        while True:
            i, msg = self._inbox.get()
            if msg is _EOF:
                self._dead = i
                raise EOFError(f"data-parallel replica {i} is gone")
            if isinstance(msg, BatchOutput):
                with self._lock:
                    for out in msg.outputs:
                        if out.finished is not None:
                            self._finished(out.rid)
                return msg
            if isinstance(msg, SchedulerFailed):
                self._dead = i
                return SchedulerFailed(f"data-parallel replica {i}: {self.replicas[i].explain(msg.message)}")
            merged = self._merge(i, msg)
            if merged is not None:
                return merged

    def _merge(self, i: int, msg: Any) -> Any | None:
        """A control answer once every replica's has come (None until then); anything else as it is."""
        with self._lock:
            if isinstance(msg, InfoResp) and msg.token in self._info:
                pending = self._info[msg.token]
                pending.answers[i] = msg.info
                if len(pending.answers) < len(self.replicas):
                    return None
                del self._info[msg.token]
                infos = [pending.answers[k] for k in range(len(self.replicas))]
                failed = next((x for x in infos if "error" in x), None)
                if failed is not None or not pending.merge:
                    return InfoResp(msg.token, failed if failed is not None else infos[0])
                return InfoResp(msg.token, merge_infos(infos))
            if isinstance(msg, FlushCacheResp) and self._flush:
                pending = next(p for p in self._flush if i not in p.answers)
                pending.answers[i] = msg
                if len(pending.answers) < len(self.replicas):
                    return None
                self._flush.remove(pending)
                answers = list(pending.answers.values())
                return FlushCacheResp(all(a.ok for a in answers), "; ".join(a.message for a in answers if a.message))
        return msg

    # deaths -----------------------------------------------------------------------------------------------------
    def wait_dead(self, timeout: float) -> None:
        multiprocessing.connection.wait([r.process.sentinel for r in self.replicas], timeout)

    def explain(self, message: str) -> str:
        return message  # NOTE: recv already led a replica's failure with its index and cause

    def exit_message(self) -> str:
        i = self._dead if self._dead is not None else 0
        return f"data-parallel replica {i}: {self.replicas[i].exit_message()}"

"""Test helper (not a test): a quantized MoE model's first layer on seeded routing, and its logits on one rank and on two (TP-split experts, or expert
parallel), the ranks as threads over tests.core.test_loader's in-process communicator."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sgl.core.distributed.communicator import ParallelState
from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.model.moe import FusedMoE
from sgl.core.ops.moe_routing import TopKOutput
from sgl.core.platform import Platform
from sgl.core.plugins import get_plugins
from sgl.core.quant.base import select_quantization
from tests.core.test_loader import _ThreadComm, _ThreadGroup
from tests.core.tiny_models import build_forward_batch
from tests.models.paged import make_model_paged_kv


def first_moe_layer_output(
    model: torch.nn.Module,
) -> tuple[str, FusedMoE, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(its module name, the layer, x, expert ids, weights, its output) of the model's first MoE layer on 6 seeded
    tokens, each routed to 2 seeded experts: what the per-layer exactness tests compare their own arithmetic with."""
    name, layer = next((n, m) for n, m in model.named_modules() if isinstance(m, FusedMoE))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, layer.hidden_size, generator=g)
    ids = torch.stack([torch.randperm(layer.num_experts, generator=g)[:2] for _ in range(6)])
    weights = torch.rand(6, 2, generator=g)
    with torch.no_grad():
        got = layer(x, TopKOutput(weights=weights, ids=ids))
    return name, layer, x, ids, weights, got


def prompt_logits(model: Any, config: Any) -> torch.Tensor:
    """The model's logits over two seeded prompts (7 and 19 tokens) in one extend batch."""
    rng = random.Random(0)
    prompts = [[rng.randrange(3, config.vocab_size) for _ in range(n)] for n in (7, 19)]
    fb = build_forward_batch(make_model_paged_kv(model, config), [0, 1], [0, 0], prompts)
    with torch.no_grad():
        return model.compute_logits(model(fb.input_ids, fb.positions, fb))


def one_and_two_ranks(
    path: Path, config: dict[str, Any], ep_size: int,
    check: Callable[[torch.nn.Module, ParallelState], None] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(one rank's logits, each of two ranks' logits) of the checkpoint at ``path``; ``check`` looks at each rank's
    loaded model. A failing rank's error is raised here (it aborts the other's barrier rather than hanging it)."""
    plugins = get_plugins()

    def run(parallel: ParallelState) -> torch.Tensor:
        method = select_quantization(None, config, plugins.quantization_methods, Platform())
        ctx = ModelContext.from_platform(Platform(), torch.float32, parallel, quant_config=method)
        model, cfg = load_model(str(path), ctx, models=plugins.models)
        if check is not None:
            check(model, parallel)
        return prompt_logits(model, cfg)

    expected = run(ParallelState())
    group = _ThreadGroup(2)
    results: list[Any] = [None, None]
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            results[rank] = run(ParallelState(rank, 2, _ThreadComm(rank, group), ep_size=ep_size))
        except BaseException as exc:  # noqa: BLE001 (raised below; a dead rank would otherwise hang the barrier)
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return expected, results

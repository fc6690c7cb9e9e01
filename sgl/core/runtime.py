"""Builds the scheduler side of the engine from ServerArgs: platform, model runner, tokenizer, scheduler."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sgl.core.config import ServerArgs
from sgl.core.distributed.communicator import SINGLE, ParallelState
from sgl.core.feature_select import Features, select_features
from sgl.core.grammar.base import GrammarVocab
from sgl.core.grammar.feature import GrammarFeature
from sgl.core.load_report import LoadReport, build_report, log_report
from sgl.core.model.source import load_tokenizer, resolve_paths
from sgl.core.platform import Platform
from sgl.core.plugins import get_plugins, select_platform
from sgl.core.request_input import ModelLimits
from sgl.core.runner.model_runner import ModelRunner
from sgl.core.scheduler.feature import SchedulerFeature
from sgl.core.scheduler.scheduler import Scheduler
from sgl.core.scheduler.stats_log import StatsLog
from sgl.core.tokenizer.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def resolve_model_path(args: ServerArgs) -> str:
    """The model directory: a local path as given, a Hub id's snapshot, or the demo model when none is given."""
    path = resolve_paths(args).model_path
    assert path is not None
    return path


@dataclass
class Runtime:
    args: ServerArgs
    platform: Platform
    model_path: str
    tokenizer: Tokenizer
    scheduler: Scheduler
    report: LoadReport
    features: Features  # the speculative algorithm and LoRA backend the flags chose, built on this rank

    def stats_log(self) -> StatsLog:
        """The periodic prefill/decode lines; its ``tick`` goes after every iteration of the scheduler loop."""
        return StatsLog(self.scheduler, self.args.decode_log_interval)

    @property
    def limits(self) -> ModelLimits:
        runner = self.scheduler.runner
        return ModelLimits.of(self.args, runner.context_len, runner.vocab_size, runner.max_total_tokens)

    def model_info(self) -> dict[str, object]:
        runner = self.scheduler.runner
        return {
            "model_path": self.model_path,
            "tokenizer_path": self.args.tokenizer_path or self.model_path,
            "served_model_name": self.args.served_model_name or self.model_path,
            "architecture": runner.model_config.architecture,
            "context_length": runner.context_len,
            "vocab_size": runner.vocab_size,
            "platform": self.platform.name,
            "tp_size": runner.parallel.tp_size,
            "dp_size": self.args.dp_size,
            "attention_backend": runner.attention_backend_name,
            "dtype": str(runner.dtype).replace("torch.", ""),
            "kv_cache_dtype": str(runner.kv_dtype).replace("torch.", ""),
            "chat_template": self.tokenizer.chat_template,
        }


def build_runtime(args: ServerArgs, parallel: ParallelState = SINGLE) -> Runtime:
    """Builds everything the scheduler loop needs and logs the load summary (the Engine and the server alike)."""
    t0 = time.perf_counter()
    plugins = get_plugins()
    platform = select_platform(args.backend)
    selected = select_features(args, plugins)  # NOTE: before the model loads, so a bad name fails fast
    args = resolve_paths(args)
    model_path = args.model_path
    assert model_path is not None
    plugins.manager.hook.sgl_startup_check(server_args=args)
    platform.manual_seed(args.random_seed)  # NOTE: unseeded sampling draws from this generator, as in SGLang
    tokenizer = load_tokenizer(args)
    runner = ModelRunner(args, platform, model_path, parallel, plugins=plugins)
    built = selected.build(args, runner)
    eos = set(runner.model_config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)

    def detokenize(ids: object) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)  # type: ignore[call-overload]

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    vocab = GrammarVocab(args.tokenizer_path or model_path, runner.vocab_size, tuple(sorted(eos)))
    features: list[SchedulerFeature] = [GrammarFeature.from_args(args, vocab, encode, tokenizer.decode), *built.scheduler_features()]
    scheduler = Scheduler(args, runner, detokenize, eos, features)
    report = build_report(runner, platform.name, scheduler.overlap is not None, time.perf_counter() - t0)
    log_report(report)
    return Runtime(args, platform, model_path, tokenizer, scheduler, report, built)

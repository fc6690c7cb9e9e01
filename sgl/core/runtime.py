"""Builds the scheduler side of the engine from ServerArgs: platform, model runner, tokenizer, scheduler."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sgl.core.config import ServerArgs
from sgl.core.platform import Platform
from sgl.core.plugins import get_plugins, select_platform
from sgl.core.request_input import ModelLimits
from sgl.core.runner.model_runner import ModelRunner
from sgl.core.scheduler.scheduler import Scheduler
from sgl.core.tokenizer.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def resolve_model_path(args: ServerArgs) -> str:
    """The model directory; the demo model (created once in the cache directory) when none is given."""
    if args.model_path:
        return args.model_path
    from sgl.core.demo_model import ensure_demo_model

    path = ensure_demo_model()
    logger.info("no --model-path given: serving the demo model at %s", path)
    return str(path)


@dataclass
class Runtime:
    args: ServerArgs
    platform: Platform
    model_path: str
    tokenizer: Tokenizer
    scheduler: Scheduler

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
            "attention_backend": runner.attention_backend_name,
            "dtype": str(runner.dtype).replace("torch.", ""),
            "kv_cache_dtype": str(runner.kv_dtype).replace("torch.", ""),
            "chat_template": self.tokenizer.chat_template,
        }


def build_runtime(args: ServerArgs) -> Runtime:
    platform = select_platform(args.backend)
    model_path = resolve_model_path(args)
    get_plugins().manager.hook.sgl_startup_check(server_args=args)
    tokenizer = Tokenizer.from_dir(args.tokenizer_path or model_path)
    runner = ModelRunner(args, platform, model_path)
    eos = set(runner.model_config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)

    def detokenize(ids: object) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)  # type: ignore[call-overload]

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    scheduler = Scheduler(args, runner, detokenize, eos, encode)
    return Runtime(args, platform, model_path, tokenizer, scheduler)

"""Where the model and its tokenizer come from: a directory, a Hugging Face Hub id, or (no --model-path) the demo model.

Resolved once, at the edge (``sgl serve`` before it starts any process, ``sgl.Engine`` before it builds its runtime),
into ServerArgs whose paths are local directories, so every process and every reader after that sees the same files.
"""

from __future__ import annotations

import logging

from sgl.core.config import ServerArgs
from sgl.core.model.hub import download, is_hub_id
from sgl.core.model.shipped import resolve_shipped
from sgl.core.tokenizer.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def _local(path: str, args: ServerArgs, weights: bool) -> str:
    # NOTE: --revision and --download-dir apply to Hub ids only; a local directory is used as it is (as in SGLang).
    return download(path, args.revision, args.download_dir, weights) if is_hub_id(path) else path


def resolve_paths(args: ServerArgs) -> ServerArgs:
    """``args`` with local directories for the model and the tokenizer; local paths come back unchanged.

    A Hub id stays the served model name (unless --served-model-name), so clients keep using the id they know."""
    args = resolve_shipped(args)  # a shipped config's name (llama-3.1-8b) with --load-format dummy
    served = args.served_model_name
    if args.model_path:
        if served is None and is_hub_id(args.model_path):
            served = args.model_path
        model_path = _local(args.model_path, args, weights=args.load_format != "dummy")
    else:
        from sgl.core.demo_model import ensure_demo_model

        model_path = str(ensure_demo_model())
        logger.info("no --model-path given: serving the demo model at %s", model_path)
    tokenizer_path = _local(args.tokenizer_path, args, weights=False) if args.tokenizer_path else None
    return args.replace(model_path=model_path, tokenizer_path=tokenizer_path, served_model_name=served)


def load_tokenizer(args: ServerArgs) -> Tokenizer:
    """The tokenizer of resolved ``args`` (the model's unless --tokenizer-path), with --chat-template applied."""
    assert args.model_path is not None, "resolve_paths first"
    return Tokenizer.from_dir(args.tokenizer_path or args.model_path, chat_template=args.chat_template)

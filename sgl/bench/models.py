"""The vocabulary a benchmark workload may draw token ids from (shipped configs resolve in ``core.model.shipped``)."""

from __future__ import annotations

from sgl.core.config import ServerArgs


def workload_vocab(args: ServerArgs) -> int:
    """Ids the workload may use, valid for the model and its tokenizer alike: ``[0, min(vocab, tokenizer vocab))``."""
    from sgl.core.model.config import ModelConfig
    from sgl.core.runtime import resolve_model_path
    from sgl.core.tokenizer.tokenizer import Tokenizer

    model_path = resolve_model_path(args)
    tokenizer = Tokenizer.from_dir(args.tokenizer_path or model_path)
    return min(ModelConfig.from_dir(model_path).vocab_size, tokenizer.vocab_size)

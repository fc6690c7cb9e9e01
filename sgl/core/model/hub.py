"""Hugging Face Hub ids as model paths: ``Qwen/Qwen3-0.6B`` becomes a local snapshot directory, once, at the edge.

Downloads go through ``huggingface_hub`` (its cache layout, its progress bars, its token, ``HF_HUB_OFFLINE`` and
``HF_HUB_CACHE``), fetching only the files sgl reads: JSON (config, tokenizer, generation config), chat templates and,
unless the weights are dummy, safetensors. Every failure is a ModelSourceError whose message is one line.
"""

from __future__ import annotations

import logging
import os
import re

logger = logging.getLogger(__name__)

# NOTE: org/name only; a bare name ("llama-3.1-8b") is never sent to the Hub, so a local typo stays a local error.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_META_FILES = ("*.json", "*.jinja", "additional_chat_templates/*")
_WEIGHT_FILES = ("*.safetensors",)


class ModelSourceError(ValueError):
    """A model or tokenizer that cannot be found or fetched; the message says why, in one line."""


def is_hub_id(path: str) -> bool:
    """True for ``org/name`` that is not an existing local path."""
    return bool(_HUB_ID.match(path)) and not os.path.exists(path) and ".." not in path


def download(repo_id: str, revision: str | None, cache_dir: str | None, weights: bool) -> str:
    """The local snapshot directory of ``repo_id`` at ``revision``: the cached one, else downloaded."""
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:  # pragma: no cover - a declared dependency
        raise ModelSourceError(f"{repo_id!r} is a Hub id, and huggingface_hub is not installed") from None

    at = f"{repo_id}@{revision or 'main'}"
    patterns = [*_META_FILES, *(_WEIGHT_FILES if weights else ())]
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns
        )
    except errors.GatedRepoError:
        raise ModelSourceError(f"{at} is gated: accept its terms on huggingface.co and log in (hf auth login, "
                               "or HF_TOKEN)") from None
    except errors.RepositoryNotFoundError:
        raise ModelSourceError(f"{repo_id!r} is neither a local directory nor a model on the Hugging Face Hub "
                               "(or it is private: log in with hf auth login, or set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise ModelSourceError(f"{repo_id!r} has no revision {revision!r} on the Hugging Face Hub") from None
    except errors.LocalEntryNotFoundError:
        where = cache_dir or huggingface_hub.constants.HF_HUB_CACHE
        raise ModelSourceError(f"{at} is not in the Hugging Face cache ({where}) and the Hub cannot be reached "
                               "(offline, HF_HUB_OFFLINE set, or no network)") from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise ModelSourceError(f"could not fetch {at} from the Hugging Face Hub: {exc}".splitlines()[0]) from None
    logger.info("model %s: %s (the Hugging Face cache; what was missing is downloaded)", at, path)
    return str(path)

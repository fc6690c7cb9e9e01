"""The LoRA backend contract: how a batch's low-rank adapter updates are added to its linear layers' outputs.

Backends register by name through ``sgl_lora_backends`` and are chosen by ``--lora-backend NAME`` (SGLang's default,
``triton``, when LoRA is on). The core builds the chosen backend once at startup, after the base model is loaded, by
calling ``create``; the backend is a scheduler feature, so the scheduler calls it at the fixed points of
``sgl.core.scheduler.feature``: ``admit`` checks the request's adapter (``req.lora_path``) and sets its cache
namespace, ``before_forward`` prepares the batch's adapter segments, ``release`` lets go of the adapter. The model's
linear layers reach the backend through their one seam, ``LinearBase.adapter`` (``sgl.core.model.linear``), which
the backend sets on the layers it adapts. Adapters are loaded and unloaded while serving through ``call``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

from sgl.core.scheduler.feature import SchedulerFeature

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.runner.model_runner import ModelRunner

FLAG = "--lora-backend"
FEATURE = "lora"  # the feature name control calls (ipc.FeatureCallReq) address
DEFAULT_BACKEND = "triton"  # SGLang's default name; the backend it names picks its own fallback where Triton is absent

NOT_YET_SUPPORTED: tuple[str, ...] = ("csgmv",)
"""SGLang's backend names, which no in-tree plugin implements yet: refused at startup with one line."""


class AdapterInfo(NamedTuple):
    """A loaded adapter, as /v1/models and the load route report it."""

    name: str
    path: str
    rank: int
    target_modules: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "rank": self.rank, "target_modules": list(self.target_modules)}


def parse_lora_paths(entries: tuple[str, ...] | None) -> dict[str, str]:
    """``--lora-paths`` entries, ``NAME=PATH`` or ``PATH`` (named by itself), as {name: path}; ValueError on a
    repeated name."""
    out: dict[str, str] = {}
    for entry in entries or ():
        name, sep, path = entry.partition("=")
        if not sep:
            name = path = entry
        if not name or not path:
            raise ValueError(f"--lora-paths entry {entry!r} is not NAME=PATH")
        if name in out:
            raise ValueError(f"--lora-paths names the adapter {name!r} twice")
        out[name] = path
    return out


class LoRABackend(SchedulerFeature):
    """One implementation of multi-adapter LoRA over a batch (SGMV-style kernels, or the torch reference)."""

    name = FEATURE

    @classmethod
    @abstractmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> LoRABackend:
        """Built once per rank at startup from the server's arguments (the plugin's own options included: see
        ``sgl.core.plugin_options.plugin_args``) and the base model's runner. Raise ValueError to refuse the
        configuration; the message is the startup error."""

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        """Loads a PEFT adapter directory under ``name``; ValueError (the reason) refuses it and changes nothing.
        A backend that serves a fixed set may leave this refusing."""
        raise ValueError(f"the {type(self).__name__} LoRA backend cannot load adapters while serving")

    def unload_adapter(self, name: str) -> None:
        """New requests can no longer name it; requests already admitted on it finish first, then its memory is
        freed. ValueError for a name that is not loaded."""
        raise ValueError(f"the {type(self).__name__} LoRA backend cannot unload adapters while serving")

    def adapters(self) -> list[AdapterInfo]:
        """The loaded adapters (an unloaded one disappears at once, even while its last requests finish)."""
        return []

    def call(self, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The control operations: ``load`` (lora_name, lora_path), ``unload`` (lora_name), ``list``."""
        if method == "load":
            info = self.load_adapter(str(kwargs["lora_name"]), str(kwargs["lora_path"]))
            return {"adapter": info.to_dict(), "adapters": [a.to_dict() for a in self.adapters()]}
        if method == "unload":
            self.unload_adapter(str(kwargs["lora_name"]))
            return {"adapters": [a.to_dict() for a in self.adapters()]}
        if method == "list":
            return {"adapters": [a.to_dict() for a in self.adapters()]}
        return super().call(method, kwargs)

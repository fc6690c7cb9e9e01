"""What the feature flags select: ``--speculative-algorithm`` and ``--lora-backend``, looked up in their registries.

``select_features`` runs before the model loads, so an unknown or not-yet-supported name fails fast; ``build`` then
creates the chosen implementations once the runner exists. (``--quantization`` is chosen by the ModelRunner, where
the checkpoint's ``quantization_config`` is read: ``sgl.core.quant.base.select_quantization``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from sgl.core.lora import base as lora
from sgl.core.registry import Registry, select_class
from sgl.core.scheduler.feature import SchedulerFeature
from sgl.core.speculative import base as speculative

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.plugins import Plugins
    from sgl.core.runner.model_runner import ModelRunner


class Features(NamedTuple):
    """The feature implementations this server runs with (None where the flag is not given)."""

    speculative: speculative.SpeculativeAlgorithm | None
    lora: lora.LoRABackend | None

    def scheduler_features(self) -> list[SchedulerFeature]:
        """The built features, for the scheduler to call at its fixed points."""
        return [f for f in (self.speculative, self.lora) if f is not None]


def _select(registry: Registry[type], name: str | None, flag: str, base: type, not_yet: tuple[str, ...]) -> Any:
    return None if name is None else select_class(registry, name, flag, base, not_yet)


def _build(cls: type | None, base: type, args: ServerArgs, runner: ModelRunner) -> Any:
    if cls is None:
        return None
    built = cls.create(args, runner)  # type: ignore[attr-defined]
    if not isinstance(built, base):
        raise ValueError(f"{cls.__qualname__}.create returned {type(built).__name__}, not a {base.__qualname__}")
    return built


class SelectedFeatures(NamedTuple):
    """The classes the flags chose, resolved and checked; nothing is built yet."""

    speculative: type[speculative.SpeculativeAlgorithm] | None
    lora: type[lora.LoRABackend] | None

    def build(self, args: ServerArgs, runner: ModelRunner) -> Features:
        return Features(
            _build(self.speculative, speculative.SpeculativeAlgorithm, args, runner),
            _build(self.lora, lora.LoRABackend, args, runner),
        )


def select_features(args: ServerArgs, plugins: Plugins) -> SelectedFeatures:
    """ValueError (one line) for an unknown name, a name no installed plugin implements yet, or a broken plugin's."""
    speculative.check_flags(args)
    return SelectedFeatures(
        _select(
            plugins.speculative_algorithms, args.speculative_algorithm, speculative.FLAG,
            speculative.SpeculativeAlgorithm, speculative.NOT_YET_SUPPORTED,
        ),
        _select(plugins.lora_backends, args.lora_backend, lora.FLAG, lora.LoRABackend, lora.NOT_YET_SUPPORTED),
    )

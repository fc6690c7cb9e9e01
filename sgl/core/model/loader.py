"""load_model: config -> architecture (through the sgl_models hook) -> module on the device -> weights.

Every check that can fail names what failed: the directory, the architecture (with the supported ones), and each
missing, unexpected or mis-shaped tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.layernorm import RMSNorm
from sgl.core.model.weights import expected_checkpoint_names, iter_safetensors, safetensors_files
from sgl.core.registry import Registry

LOAD_FORMATS = ("auto", "safetensors", "dummy")
DUMMY_STD = 0.02


def resolve_architecture(
    config: ModelConfig, models: Registry[type] | None = None, architecture: str | None = None
) -> type[nn.Module]:
    """The class registered for the config's architecture (or ``architecture``, which replaces it), in ``models``
    (default: the discovered plugins')."""
    if models is None:
        from sgl.core.plugins import get_plugins

        models = get_plugins().models
    arch = architecture or config.architecture
    if arch not in models:
        failure = models.failure(arch)  # NOTE: the plugin that would provide it was skipped: say which and why
        if failure is not None:
            raise ValueError(f"model architecture {arch!r} is unavailable: {failure}")
        supported = ", ".join(models.names()) or "(none)"
        remote = " (the model ships its own code in auto_map, which sgl never runs)" if config.get("auto_map") else ""
        raise ValueError(f"unsupported model architecture {arch!r}{remote}; supported: {supported}")
    return models.get(arch)  # type: ignore[return-value]


def load_model(
    model_path: str, ctx: ModelContext, load_format: str = "auto", seed: int = 0, models: Registry[type] | None = None,
    architecture: str | None = None,
) -> tuple[nn.Module, ModelConfig]:
    """Builds the model for ``model_path`` on ctx.device in ctx.dtype and fills its weights; the architecture (the
    config's unless ``architecture`` is given) is looked up in ``models`` (default: the discovered plugins')."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)}; got {load_format!r}")
    config = ModelConfig.from_dir(model_path)
    cls = resolve_architecture(config, models, architecture)
    # NOTE: parameters are allocated directly on the device, in ctx.dtype; nothing is built on CPU and moved.
    with torch.device(ctx.device):
        model = cls(config, ctx)
    model.eval()
    if load_format == "dummy":
        init_dummy_weights(model, seed)
    else:
        load_checkpoint(model, model_path)
    process_weights_after_loading(model)
    return model, config


@torch.no_grad()
def process_weights_after_loading(model: nn.Module) -> None:
    """Each linear and MoE layer's method finishes its weights once all arrived (online quantization, scale
    folding); then each module with a ``weights_loaded()`` method derives what it keeps from its sublayers' weights.

    NOTE: two passes, so a module that reads a sublayer's final weights (MLA dequantizing its ``kv_b_proj``) runs
    after every method has finished with them.
    """
    for module in model.modules():
        for attr in ("linear_method", "moe_method"):
            method = getattr(module, attr, None)
            if method is not None and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(module)
    for module in model.modules():
        finish = getattr(module, "weights_loaded", None)
        if callable(finish):
            finish()


def load_checkpoint(model: nn.Module, model_path: str) -> None:
    files = safetensors_files(model_path)
    if not files:
        raise FileNotFoundError(
            f"no safetensors weights in {model_path!r} (looked for model.safetensors, its index, or *.safetensors); "
            "use load_format='dummy' for random weights"
        )
    load_weights = getattr(model, "load_weights", None)
    if load_weights is None:
        raise TypeError(f"{type(model).__name__} has no load_weights(weights) method")
    with torch.no_grad():
        loaded = load_weights(iter_safetensors(files))
    missing = [name for name, _ in model.named_parameters() if name not in loaded]
    if missing:
        stacked = getattr(model, "stacked_params_mapping", ())
        names = [n for p in missing for n in expected_checkpoint_names(p, stacked)]
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        raise ValueError(f"checkpoint {model_path!r} is missing tensor(s): {shown}")


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Seeded random weights for any config: normal(0, 0.02) for matrices and biases, 1 + small noise for norms.

    NOTE: each parameter is drawn in place on its own device from a generator seeded by (seed, its index), so an
    8B model initialises in seconds; a seed gives the same model on every run of the same device type. A parameter
    with a ``dummy_init(param, generator)`` attribute (a quantized layout: fp8 values, packed ints, scales) fills
    itself.
    """
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, RMSNorm)}
    for index, (_, param) in enumerate(model.named_parameters()):
        gen = torch.Generator(device=param.device).manual_seed(seed * 1_000_003 + index)
        dummy_init = getattr(param, "dummy_init", None)
        if dummy_init is not None:
            dummy_init(param, gen)
            continue
        with torch.no_grad():
            param.normal_(0.0, DUMMY_STD, generator=gen)
            if id(param) in norm_weights:
                param.add_(1.0)
"""Hook implementations of the speculative plugin (light: names the algorithms by string, imports nothing heavy)."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_speculative_algorithms() -> dict[str, str]:
    return {
        "NGRAM": "sgl.plugins.speculative.ngram:NgramAlgorithm",
        "STANDALONE": "sgl.plugins.speculative.standalone:StandaloneAlgorithm",
        "EAGLE": "sgl.plugins.speculative.eagle:EagleAlgorithm",
        "EAGLE3": "sgl.plugins.speculative.eagle:Eagle3Algorithm",
        "NEXTN": "sgl.plugins.speculative.eagle:NextNAlgorithm",
    }


@hookimpl
def sgl_models() -> dict[str, str]:
    """The EAGLE draft heads' architectures (and DeepSeek-V3's MTP layer as one) (only ever loaded as a draft: they read a target's hidden states)."""
    return {
        "LlamaForCausalLMEagle": "sgl.plugins.speculative.eagle_models:LlamaForCausalLMEagle",
        "LlamaForCausalLMEagle3": "sgl.plugins.speculative.eagle_models:LlamaForCausalLMEagle3",
        "DeepseekV3ForCausalLMNextN": "sgl.plugins.speculative.nextn_models:DeepseekV3ForCausalLMNextN",
    }

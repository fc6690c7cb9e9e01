"""The in-tree architectures, registered through the same ``sgl_models`` hook a third party uses."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_models() -> dict[str, str]:
    return {
        "DeepseekV2ForCausalLM": "sgl.core.models.deepseek_v2:DeepseekV2ForCausalLM",
        "DeepseekV3ForCausalLM": "sgl.core.models.deepseek_v2:DeepseekV3ForCausalLM",
        "LlamaForCausalLM": "sgl.core.models.llama:LlamaForCausalLM",
        "MistralForCausalLM": "sgl.core.models.mistral:MistralForCausalLM",
        "MixtralForCausalLM": "sgl.core.models.mixtral:MixtralForCausalLM",
        "Qwen2ForCausalLM": "sgl.core.models.qwen2:Qwen2ForCausalLM",
        "Qwen3ForCausalLM": "sgl.core.models.qwen3:Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM": "sgl.core.models.qwen3_moe:Qwen3MoeForCausalLM",
    }

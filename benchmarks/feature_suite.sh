#!/usr/bin/env bash
# The feature issues' H200 figures (quantization #14, MoE #20; LoRA #15 and speculation #22 have their own scripts),
# one stage per argument, logs and JSON lines under ${OUT:-/tmp/sgl-bench}. Stages: decode-quant decode-moe
# prefill-quant big-quant big-moe. Dummy weights throughout; a stage's engines run one after another in one lease.
set -u
out=${OUT:-/tmp/sgl-bench}; mkdir -p "$out"
ds() { timeout "${T:-240}" python3 benchmarks/decode_speed.py "$@" 2>&1 | sed 's/\r/\n/g' | grep '^{' | tee -a "$out/decode.jsonl"; }
big() {  # MODEL TAG [flags]: sgl bench offline, 1000 x (1024 in + 1024 out)
  local model=$1 tag=$2; shift 2
  timeout "${T:-420}" sgl bench offline --model-path "$model" --load-format dummy --context-length 4096 --disable-tqdm \
    --workload random --num-prompts 1000 --input-len 1024 --output-len 1024 --range-ratio 1 \
    --result-json "$out/big-$tag.json" "$@" > "$out/big-$tag.log" 2>&1
  echo "== big $tag"; grep -i "output token throughput\|duration\|decode steps\|retract\|error" "$out/big-$tag.log" | head -8
}
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    decode-quant)  # batch-1 decode, Llama-3.1-8B: bf16, FP8 quantized at load, AWQ and GPTQ checkpoints (dummy)
      ds llama-3.1-8b --variant graphs+overlap
      ds llama-3.1-8b --variant graphs+overlap --set quantization=fp8
      ds llama-3.1-8b --variant graphs+overlap --set checkpoint_quant=fp8-block
      ds llama-3.1-8b --variant graphs+overlap --set checkpoint_quant=awq ;;
    decode-gptq) ds llama-3.1-8b --variant graphs+overlap --set checkpoint_quant=gptq ;;
    decode-moe)  # batch-1 decode of the MoE configs
      T=300 ds qwen3-30b-a3b --variant graphs+overlap
      T=300 ds deepseek-v2-lite --variant graphs+overlap ;;
    prefill-quant)  # prefill 8 x 4096, bf16 then FP8 at load
      timeout 240 python3 -m benchmarks.profile_step llama-3.1-8b --prefill-only 2>&1 | grep "^prefill" | tee -a "$out/prefill.log"
      timeout 240 python3 -m benchmarks.profile_step llama-3.1-8b --prefill-only --set quantization=fp8 2>&1 \
        | grep "^prefill" | tee -a "$out/prefill.log" ;;
    big-quant) big llama-3.1-8b fp8w-fp8kv --quantization fp8 --kv-cache-dtype fp8_e4m3 ;;
    big-bf16) big llama-3.1-8b bf16w-fp8kv --kv-cache-dtype fp8_e4m3 ;;
    big-moe)
      big qwen3-30b-a3b qwen3-30b-a3b
      big deepseek-v2-lite deepseek-v2-lite ;;
    *) echo "unknown stage $stage" ;;
  esac
done

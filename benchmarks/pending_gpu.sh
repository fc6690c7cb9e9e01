#!/usr/bin/env bash
# What the sessions without a GPU built, checked and then timed on a GPU lease, one stage per argument (each fits the
# device tool's 10-minute command). Logs under ${OUT:-/tmp/sgl-bench}. Stages, in the order to run them:
#   kernels     why layer fusion is slower (H100, 2026-12-06: Llama-3.1-8B 166.2 -> 134.1 tok/s): device time per
#               kernel per layer and a graph-replayed layer, fused and unfused
#   pdl         programmatic dependent launch (on by default on sm90+ since 2026-12-06): tests/gpu/test_pdl_gpu.py, then host_bound
#               off / on (device busy at batch 1 is the figure it is for)
#   tests       tests/gpu: the modules not run on 2026-12-06 (that lease ran layer fusion: 34/35, MoE: 37/40, both
#               failures test-side and fixed), then the fixed cases
#   moe-bw      the fused MoE kernels' batch-1 bandwidth at Qwen3-30B-A3B / DeepSeek-V3 shapes (bf16, FP8, int4)
#   moe         batch-1 decode of DeepSeek-V2-Lite and Qwen3-30B-A3B
#   serve       sgl bench serving --compare-offline, 500 x 1024/256 (needs the serve wheels, httptools among them)
#   spec        the speculative step part by part (spec_host_probe), then spec_replay at batch 1, 32 and 64
#   itl         p99 / median inter-token latency at a steady 16 req/s: defaults, then mixed chunks of 512 and 1024
#   itl-mixed   the same, mixed chunks of 512 only
#   fusion      host_bound (quiet and slowed host, device busy) and the compiled-torch peer, fusion off / on
#   fusion-host overlap_trace of Qwen3-0.6B
# From the repository root, after `python3 -m pip install -q --no-deps --no-build-isolation -e .`.
set -u
out=${OUT:-/tmp/sgl-bench}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
json() { sed 's/\r/\n/g' | grep '^{'; }
itl_run() {
  echo "== itl: ${1:-defaults}"
  # shellcheck disable=SC2086
  timeout 190 sgl bench serving --launch-server --model-path llama-3.1-8b --load-format dummy --disable-tqdm \
    --num-prompts 500 --input-len 1024 --output-len 256 --range-ratio 1 --request-rate 16 $1 2>&1 \
    | grep -i "throughput\|ITL\|TTFT" | grep -v "Decode batch" | tee -a "$out/itl.log"
}
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    kernels)
      timeout 300 python3 -m benchmarks.kernels_per_layer llama-3.1-8b qwen3-0.6b --profile 2>&1 | grep -v Warn \
        | tee "$out/kernels.log" ;;
    pdl)
      timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_pdl_gpu.py 2>&1 | tail -15 \
        | tee "$out/pdl-tests.log"
      for on in false true; do
        timeout 240 python3 -m benchmarks.host_bound qwen3-0.6b llama-3.1-8b --steps 1 --set cuda.pdl=$on 2>&1 \
          | json | tee -a "$out/pdl.jsonl"
      done ;;
    tests)
      timeout 580 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_speculative_gpu.py tests/gpu/test_engine_gpu.py \
        tests/gpu/test_kernels_gpu.py tests/gpu/test_lora_gpu.py tests/gpu/test_quant_gpu.py \
        "tests/gpu/test_layer_fusion_gpu.py::test_decode_merge_by_the_last_split_under_graph_replay" \
        tests/gpu/test_moe_gpu.py -k "not bandwidth" 2>&1 | tail -40 | tee "$out/gpu-tests.log" ;;
    moe-bw)
      timeout 300 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_moe_gpu.py -k bandwidth 2>&1 \
        | grep "GB/s\|passed\|failed" | tee "$out/moe-bw.log" ;;
    fusion)
      for fusion in false true; do
        timeout 240 python3 -m benchmarks.host_bound qwen3-0.6b llama-3.1-8b --steps 1 \
          --set enable_layer_fusion=$fusion 2>&1 | json | tee -a "$out/host.jsonl"
      done
      timeout 400 python3 -m benchmarks.compiled_peer qwen3-0.6b llama-3.1-8b 2>&1 | json | tee "$out/peer.jsonl" ;;
    fusion-host)
      timeout 200 python3 -m benchmarks.overlap_trace qwen3-0.6b > "$out/overlap_trace.json" 2>&1 ;;
    spec)
      timeout 200 python3 -m benchmarks.spec_host_probe llama-3.1-8b --tokens 256 2>&1 | tail -40 | tee "$out/spec-probe.log"
      timeout 380 python3 -m benchmarks.spec_replay llama-3.1-8b --batch 1,32,64 --steps 3 --corrupt 1 --accept 3.0 \
        --reps 1 2>&1 | json | tee "$out/spec.jsonl" ;;
    serve)
      timeout 580 sgl bench serving --compare-offline --model-path llama-3.1-8b --load-format dummy --disable-tqdm \
        --num-prompts 500 --input-len 1024 --output-len 256 --result-json "$out/serve.json" 2>&1 | tail -30 \
        | tee "$out/serve.log" ;;
    itl)
      for flags in "" "--enable-mixed-chunk --chunked-prefill-size 512" "--enable-mixed-chunk --chunked-prefill-size 1024"; do
        itl_run "$flags"
      done ;;
    itl-mixed)
      itl_run "--enable-mixed-chunk --chunked-prefill-size 512" ;;
    moe)
      timeout 280 python3 benchmarks/decode_speed.py deepseek-v2-lite --variant graphs+overlap 2>&1 | json \
        | tee -a "$out/moe.jsonl"
      timeout 300 python3 benchmarks/decode_speed.py qwen3-30b-a3b --variant graphs+overlap 2>&1 | json \
        | tee -a "$out/moe.jsonl" ;;
    *) echo "unknown stage $stage (kernels pdl tests moe-bw moe serve spec itl itl-mixed fusion fusion-host)" ;;
  esac
done

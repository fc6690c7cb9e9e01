#!/usr/bin/env bash
# What the sessions without a GPU built, checked and then timed on the first GPU lease, one stage per argument (each
# fits the device tool's 10-minute command). Logs under ${OUT:-/tmp/sgl-bench}. Stages, in the order to run them:
#   tests       tests/gpu: layer fusion, FP8 MoE experts, EAGLE catch-up graphs, and the older GPU modules
#   fusion      batch-1 decode, layer fusion off / on alternately, 3 runs each, then its host_bound and overlap_trace
#   spec        the speculative step part by part (spec_host_probe), then spec_replay at batch 1, 32 and 64
#   serve       sgl bench serving --compare-offline, 500 x 1024/256 (needs the serve wheels, httptools among them)
#   itl         p99 / median inter-token latency at a steady 16 req/s: defaults, then mixed chunks of 512 and 1024
#   moe         batch-1 decode of Qwen3-30B-A3B and DeepSeek-V2-Lite
# From the repository root, after `python3 -m pip install -q --no-deps --no-build-isolation -e .`.
set -u
out=${OUT:-/tmp/sgl-bench}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
json() { sed 's/\r/\n/g' | grep '^{'; }
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    tests)
      timeout 580 python3 -m pytest -q -p no:cacheprovider tests/gpu -x 2>&1 | tail -40 | tee "$out/gpu-tests.log" ;;
    fusion)
      for run in 1 2 3; do
        for fusion in false true; do
          timeout 120 python3 benchmarks/decode_speed.py qwen3-0.6b llama-3.1-8b --variant graphs+overlap \
            --set enable_layer_fusion=$fusion 2>&1 | json | sed "s/^{/{\"fusion\": $fusion, \"run\": $run, /" \
            | tee -a "$out/fusion.jsonl"
        done
      done
      timeout 60 python3 -m benchmarks.kernels_per_layer qwen3-0.6b --profile 2>&1 | tail -20 | tee "$out/kernels.log" ;;
    fusion-host)
      timeout 300 python3 -m benchmarks.host_bound qwen3-0.6b llama-3.1-8b --steps 1 2>&1 | json | tee "$out/host.jsonl"
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
        echo "== itl: ${flags:-defaults}"
        # shellcheck disable=SC2086
        timeout 190 sgl bench serving --launch-server --model-path llama-3.1-8b --load-format dummy --disable-tqdm \
          --num-prompts 500 --input-len 1024 --output-len 256 --range-ratio 1 --request-rate 16 $flags 2>&1 \
          | grep -i "throughput\|ITL\|TTFT" | tee -a "$out/itl.log"
      done ;;
    moe)
      timeout 300 python3 benchmarks/decode_speed.py qwen3-30b-a3b --variant graphs+overlap 2>&1 | json \
        | tee -a "$out/moe.jsonl"
      timeout 280 python3 benchmarks/decode_speed.py deepseek-v2-lite --variant graphs+overlap 2>&1 | json \
        | tee -a "$out/moe.jsonl" ;;
    *) echo "unknown stage $stage (tests fusion fusion-host spec serve itl moe)" ;;
  esac
done

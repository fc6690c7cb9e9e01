#!/usr/bin/env bash
# The issue-5 figures on one H200, in one run (dummy weights). Logs and JSON go to ${OUT:-/tmp/sgl-bench}.
set -u
out=${OUT:-/tmp/sgl-bench}; mkdir -p "$out"
llama=(--model-path llama-3.1-8b --load-format dummy --context-length 4096 --disable-tqdm)
b() { local tag=$1; shift; echo "== $tag"; timeout "${T:-300}" sgl bench offline "${llama[@]}" --result-json "$out/$tag.json" "$@" > "$out/$tag.log" 2>&1; grep -v -i "warn\|capturing\|INFO" "$out/$tag.log" | tail -22; }
python3 benchmarks/decode_speed.py qwen3-0.6b llama-3.1-8b 2>&1 | sed 's/\r/\n/g' | grep '^{' | tee "$out/decode.jsonl"
b small-batch --workload random --num-prompts 64 --input-len 512 --output-len 128 --range-ratio 1
timeout 240 python3 -m benchmarks.hf_peer llama-3.1-8b 64 512 128 2>&1 | grep '^{' | tee "$out/hf_peer.json"
b shared-prefix --workload shared-prefix --num-groups 4 --questions-per-group 32 --system-prompt-len 2000 \
  --question-len 128 --output-len 128 --compare-radix
b no-sharing --workload random --num-prompts 256 --input-len 1024 --output-len 128 --range-ratio 1 --compare-radix
T=420 b big --workload random --num-prompts 1000 --input-len 1024 --output-len 1024 --range-ratio 1
T=420 b big-fp8 --workload random --num-prompts 1000 --input-len 1024 --output-len 1024 --range-ratio 1 \
  --kv-cache-dtype fp8_e4m3
T=420 b big-fp8-mixed --workload random --num-prompts 1000 --input-len 1024 --output-len 1024 --range-ratio 1 \
  --kv-cache-dtype fp8_e4m3 --enable-mixed-chunk
for spec in "auto 384" "fp8_e4m3 800"; do  # batch: as many ~1,540-token contexts as each pool holds
  set -- $spec
  timeout 200 python3 -m benchmarks.big_decode llama-3.1-8b "$2" 1536 --kv-cache-dtype "$1" 2>&1 \
    | sed 's/\r/\n/g' | grep -v "it/s\]" | tee -a "$out/big_decode.log" | grep '^{'
done
timeout 150 python3 -m benchmarks.decode_kernel_sweep 384 1536 > "$out/decode_kernel_sweep.jsonl" 2>&1
timeout 200 python3 -m benchmarks.skinny_gemm_sweep 1 4 2>&1 | grep '^{' > "$out/skinny_gemm_sweep.jsonl"
timeout 200 python3 -m benchmarks.overlap_trace llama-3.1-8b > "$out/overlap_trace.json" 2>&1
# issue 6: needs xgrammar (+ apache-tvm-ffi, pydantic, pydantic-core, annotated-types, typing-inspection) carried as wheels
python3 -c "import xgrammar" 2>/dev/null && python3 -m benchmarks.grammar_speed llama-3.1-8b 2>&1 | grep '^{' | tee "$out/grammar.jsonl"

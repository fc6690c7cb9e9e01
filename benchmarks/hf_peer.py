"""The peer figure: transformers' continuous-batching generate_batch on the same config and workload as sgl.

python benchmarks/hf_peer.py llama-3.1-8b 64 512 128   -> one JSON line with output tok/s
"""

from __future__ import annotations

import json
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from benchmarks.decode_speed import model_dir


def main(name: str, n: int, input_len: int, output_len: int) -> None:
    cfg = AutoConfig.from_pretrained(model_dir(name))
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 2000, (input_len,), generator=g).tolist() for _ in range(n)]
    gen = GenerationConfig(max_new_tokens=output_len, do_sample=False, eos_token_id=-1, pad_token_id=0)
    model.generate_batch(inputs=inputs[:4], generation_config=gen, max_new_tokens=8)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate_batch(inputs=inputs, generation_config=gen)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = sum(len(o.generated_tokens) for o in out.values())
    print(json.dumps({"peer": "transformers.generate_batch", "model": name, "requests": n, "output_tokens": tokens,
                      "duration_s": round(dt, 2), "output_tok_s": round(tokens / dt, 1)}))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), int(a[2]), int(a[3]))

"""Sampling: per-request SamplingParams, the per-step SamplingBatchInfo, penalties, logprobs and the Sampler.

Read `params.py` first (what a request may ask for), then `batch_info.py` (what one step of the batch needs, as
tensors) and `sampler.py` (logits in, token ids and logprobs out). The Sampler is the torch reference; a platform may
return a faster one from `Platform.sampler()`, tested against this one.
"""

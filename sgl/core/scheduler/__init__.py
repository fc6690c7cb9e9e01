"""Continuous batching: requests, batches, policies, the prefill adder and the scheduler loop."""

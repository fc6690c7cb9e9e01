"""The HTTP serving layer: `sgl serve` runs FastAPI + the TokenizerManager here and the scheduler in a child process.

Modules: server (app factory, lifecycle, signals), state (phases and the 503 gate), scheduler_process (the child and
its watchdog), tokenizer_manager (the pipe around the RequestManager), openai_protocol / openai_common / openai_chat /
openai_completions / openai_routes, native_routes, streaming (SSE), metrics, auth, limits, errors.
"""

"""Text in and out: the tokenizer wrapper (tokenizer.py), chat templates (chat_template.py) and the streaming
detokenizer (detokenizer.py). Built on the `tokenizers` library so core never needs `transformers`."""

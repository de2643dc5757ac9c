"""The generative language model: it reads a user's live behaviour and writes (or
re-orders) a recommendation list, off the request path.

backend.py   the LanguageModel protocol every backend speaks
local.py     a GGUF model in-process (transformers; default: SmolLM2-135M-Instruct from PyPI)
openai.py    any OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, a hosted API)
prompt.py    what the model reads: the user's recent items, lettered candidates
rerank.py    LlamaRec-style re-ranking: one forward pass, the letters' probabilities
titles.py    a token prefix tree of the catalogue's titles (constrained decoding)
generate.py  the model writes the next items' titles; every one exists
"""

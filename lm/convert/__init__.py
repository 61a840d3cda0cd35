"""Checkpoint interop: HuggingFace transformers (GPT-2 and Llama families) via safetensors, and
llama.cpp's GGUF files (Llama family) via the `gguf` package.

Nothing here imports torch or transformers: safetensors files are read and written directly.
"""

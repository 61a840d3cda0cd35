"""Checkpoint interop with HuggingFace transformers (GPT-2 and Llama families), via safetensors.

Nothing here imports torch or transformers: safetensors files are read and written directly.
"""

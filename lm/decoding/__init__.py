"""Decoding (TensorFlow-free): KV-cache prefill, decode steps, sampling, generate_ids; stream
(chunks of steps), beam (beam search), windowed (the cache-less sampler of lm-train)."""
from lm.decoding.cache import KVCache, cache_length, init_cache, take_rows
from lm.decoding.generate import (bucket, decode, decode_step, generate_ids, pad_prompts, prefill,
                                  prepare, round_rows)
from lm.decoding.sampling import filter_logits, row_keys, sample, sampling_filters

__all__ = ["KVCache", "bucket", "cache_length", "decode", "decode_step", "filter_logits",
           "generate_ids", "init_cache", "pad_prompts", "prefill", "prepare", "round_rows",
           "row_keys", "sample", "sampling_filters", "take_rows"]

"""The KV cache seen from decoding: allocation, sizing and row selection.

The cache itself (`KVCache`, what each field holds, how the model reads and writes it) lives
with the model in lm.models.attention; this module adds what a decoding loop needs around it.
"""
import jax
import jax.numpy as jnp

from lm.models.attention import KVCache, init_cache
from lm.models.config import ModelConfig

__all__ = ["KVCache", "init_cache", "cache_length", "take_rows", "cache_bytes"]


def cache_length(cfg: ModelConfig, total_len: int) -> int:
  """Slots needed to decode up to `total_len` tokens (padding included): total_len, or the
  attention window when that is smaller (the cache is then a ring buffer)."""
  if cfg.attention_window is not None:
    return min(total_len, cfg.attention_window)
  return total_len


def take_rows(cache: KVCache, rows_N) -> KVCache:
  """A cache of N rows: row i is row rows_N[i] of `cache` (to repeat prompts for several
  samples, or to reorder beams). The layer axis of scanned k/v stays first."""
  rows_N = jnp.asarray(rows_N, jnp.int32)
  if isinstance(cache.k, tuple):
    take_kv = lambda kv: tuple(jnp.take(x, rows_N, axis=0) for x in kv)
  else:
    take_kv = lambda kv: jnp.take(kv, rows_N, axis=1)
  return cache.replace(k=take_kv(cache.k), v=take_kv(cache.v),
                       pos_BS=jnp.take(cache.pos_BS, rows_N, axis=0),
                       next_pos_B=jnp.take(cache.next_pos_B, rows_N, axis=0))


def cache_bytes(cache: KVCache) -> int:
  """Bytes held by the keys and values."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((cache.k, cache.v)))

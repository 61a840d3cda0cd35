"""Decoding in chunks of steps, resumable from the host: streaming output and stop strings.

`lm.decoding.decode` runs a whole generation in one jitted loop. Here the same steps (the same
decode_step, sampling and per-(seed, prompt position, sample, step) keys, so the same tokens)
run `num_steps` at a time and hand their state back, so the host can print what arrived, look
for stop strings and mark rows done before the next chunk.
"""
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.decoding.cache import cache_length, take_rows
from lm.decoding.generate import _check_request, bucket, decode_step, pad_prompts, prefill
from lm.decoding.sampling import row_keys, sample, sampling_filters
from lm.models.attention import KVCache


class ChunkState(NamedTuple):
  """After `step` chosen tokens: the last one per row (not yet in the cache) and who is done."""
  step: jax.Array
  tok_B: jax.Array
  cache: KVCache
  done_B: jax.Array


class Sampling(NamedTuple):
  """Per-row prompt position and sample index, and the sampling settings (filters None when
  off)."""
  position_B: jax.Array
  sample_index_B: jax.Array
  max_new_tokens: jax.Array
  seed: jax.Array
  temperature: jax.Array
  top_k: jax.Array | None = None
  top_p: jax.Array | None = None
  min_p: jax.Array | None = None


def _choose(logits_BV, step, done_B, s: Sampling, eos, greedy):
  keys_B = row_keys(jax.random.PRNGKey(s.seed), s.position_B, s.sample_index_B, step)
  tok_B = sample(logits_BV, keys_B, s.temperature, s.top_k, s.top_p, s.min_p, greedy=greedy)
  tok_B = jnp.where(done_B, -1, tok_B)
  return tok_B, done_B | jnp.isin(tok_B, eos) | (step + 1 >= s.max_new_tokens)


@functools.partial(jax.jit, static_argnames=("eos_ids", "greedy"))
def start(logits_BV, cache, done_B, s: Sampling, *, eos_ids: tuple[int, ...] = (),
          greedy: bool = False):
  """(state, first new token [B] or -1) from a prefill's logits_BV and cache."""
  done_B = done_B | (s.max_new_tokens <= 0)
  tok_B, done_B = _choose(logits_BV, 0, done_B, s, jnp.asarray(eos_ids, jnp.int32), greedy)
  return ChunkState(jnp.ones((), jnp.int32), tok_B, cache, done_B), tok_B


@functools.partial(jax.jit, static_argnames=("module", "num_steps", "eos_ids", "greedy"))
def decode_chunk(module, params, state: ChunkState, s: Sampling, *, num_steps: int,
                 eos_ids: tuple[int, ...] = (), greedy: bool = False):
  """Up to num_steps more steps from `state` (fewer when every row is done).

  Returns (new state, the tokens chosen [B, num_steps], -1 where a row produced nothing).
  Rows the host marks done in state.done_B produce nothing more.
  """
  eos = jnp.asarray(eos_ids, jnp.int32)
  first = state.step

  def body(carry):
    st, out_BT = carry
    logits_BV, cache = decode_step(module, params, jnp.maximum(st.tok_B, 0), st.cache)
    tok_B, done_B = _choose(logits_BV, st.step, st.done_B, s, eos, greedy)
    out_BT = jax.lax.dynamic_update_slice_in_dim(out_BT, tok_B[:, None], st.step - first,
                                                 axis=1)
    return ChunkState(st.step + 1, tok_B, cache, done_B), out_BT

  def cond(carry):
    st, _ = carry
    return (st.step - first < num_steps) & ~jnp.all(st.done_B)

  out_BT = jnp.full((state.tok_B.shape[0], num_steps), -1, jnp.int32)
  return jax.lax.while_loop(cond, body, (state, out_BT))


def stream_ids(module, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               min_p: float | None = None, num_samples: int = 1, eos_ids: Sequence[int] = (),
               seed: int = 0, chunk_steps: int = 16, batch_multiple: int = 1):
  """Like lm.decoding.generate_ids (same arguments, same tokens), but a generator: after each
  chunk of decode steps it yields the new tokens of every row so far, as a list of
  len(prompts) * num_samples lists (row r is sample r % num_samples of prompt
  r // num_samples). `send(done)` (a bool per row) instead of `next()` ends rows early.
  Call under the params' mesh; batch_multiple: its data-parallel size.
  """
  cfg = module.cfg
  prompts = [list(map(int, p)) for p in prompts]
  _check_request(cfg, prompts, max_new_tokens, num_samples)
  filters = sampling_filters(temperature, top_k, top_p, min_p)
  rows = len(prompts) * num_samples
  if not rows or max_new_tokens == 0:
    yield [[] for _ in range(rows)]
    return
  round_batch = lambda n: -(-bucket(n, 1) // batch_multiple) * batch_multiple
  length = bucket(max(len(p) for p in prompts))
  tokens_BP, lengths_B = pad_prompts(prompts, length, round_batch(len(prompts)))
  batch = round_batch(rows)
  prompt_of_row = np.minimum(np.arange(batch) // num_samples, len(prompts) - 1)
  greedy = temperature == 0
  s = Sampling(prompt_of_row.astype(np.int32), np.arange(batch, dtype=np.int32) % num_samples,
               np.int32(max_new_tokens), np.uint32(seed), np.float32(temperature), **filters)
  eos_ids = tuple(int(e) for e in eos_ids)
  logits_BV, cache = prefill(module, params, tokens_BP, lengths_B,
                             cache_len=cache_length(cfg, length + bucket(max_new_tokens, 1)))
  logits_BV = jnp.take(logits_BV, prompt_of_row, axis=0)
  cache = take_rows(cache, prompt_of_row)
  state, tok_B = start(logits_BV, cache, np.arange(batch) >= rows, s, eos_ids=eos_ids,
                       greedy=greedy)
  out = [[t] if t >= 0 else [] for t in np.asarray(tok_B)[:rows].tolist()]
  while True:
    done = yield out
    done_B = np.asarray(state.done_B).copy()
    if done is not None:
      done_B[:rows] |= np.asarray(done, bool)
    if done_B.all():
      return
    state, new_BT = decode_chunk(module, params, state._replace(done_B=done_B), s,
                                 num_steps=chunk_steps, eos_ids=eos_ids, greedy=greedy)
    for r, row in enumerate(np.asarray(new_BT)[:rows].tolist()):
      out[r] += [t for t in row if t >= 0]

"""KV-cache decoding: a jitted prefill of the prompt batch, then a jitted `lax.while_loop` of
one-token steps that stops as soon as every row is done.

Prompts are padded on the LEFT: every row's last prompt token then sits in the same column,
so the first new token of every row comes from one column of the prefill logits and each
decode step writes all rows into the same cache slot (one in-place slice update instead of a
per-row scatter). Positions count from each row's first real token and padding slots are
masked out (`KVCache.pos_BS` = -1), so padding changes no row's result.

Shapes are static: the prompt length, the batch and the number of new tokens are rounded up to
powers of two (`bucket`), so new prompt lengths reuse the compiled functions. `prepare` is the
one request path of generate_ids, lm.decoding.stream and lm.decoding.beam: checks, padding,
prefill and the choice of decoding rows.
"""
import contextlib
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.decoding.cache import cache_length, init_cache, take_rows
from lm.decoding.sampling import Sampling, choose, sampling_filters
from lm.errors import UserError
from lm.models.attention import KVCache
from lm.sharding import data_parallel_size, use_mesh

MIN_PROMPT = 8  # the smallest padded prompt length


def bucket(n: int, minimum: int = 1) -> int:
  """The power of two >= max(n, minimum, 1): a padded length or row count, so that new sizes
  reuse compiled functions."""
  return 1 << (max(int(n), int(minimum), 1) - 1).bit_length()


def round_rows(n: int, multiple: int = 1) -> int:
  """Rows of a padded batch of n: bucket(n) rounded up to a multiple of `multiple` (the
  data-parallel size, so the batch splits over the mesh)."""
  return -(-bucket(n) // multiple) * multiple


def pad_prompts(prompts: Sequence[Sequence[int]], length: int, batch: int):
  """Left-padded int32 tokens [batch, length] and lengths [batch]; rows past len(prompts)
  are one-token dummies (token 0)."""
  tokens_BP = np.zeros((batch, length), np.int32)
  lengths_B = np.ones((batch,), np.int32)
  for i, p in enumerate(prompts):
    tokens_BP[i, length - len(p):] = p
    lengths_B[i] = len(p)
  return tokens_BP, lengths_B


@functools.partial(jax.jit, static_argnames=("module", "cache_len"))
def prefill(module, params, tokens_BP, lengths_B, *, cache_len: int):
  """Runs the left-padded prompts tokens_BP [B, P] (real lengths lengths_B) through `module`
  (a Transformer) on a new cache of `cache_len` slots (see cache.cache_length; >= P unless the
  window makes it a ring buffer).

  Returns (logits_BV of each prompt's last token, the KVCache). A prompt needs >= 1 token.
  """
  b, p = tokens_BP.shape
  pad_B1 = (p - lengths_B)[:, None]
  cols_P = jnp.arange(p)[None, :]
  positions_BP = jnp.maximum(cols_P - pad_B1, 0)
  segments_BP = (cols_P >= pad_B1).astype(jnp.int32)
  cache = init_cache(module.cfg, b, cache_len)
  logits_B1V, cache = module.apply({"params": params}, tokens_BP, positions_BP, segments_BP,
                                   cache=cache, cache_mode="prefill", last_only=True)
  return logits_B1V[:, 0], cache


@functools.partial(jax.jit, static_argnames=("module",))
def decode_step(module, params, tokens_B, cache: KVCache):
  """Appends one token per row (at each row's cache.next_pos_B) and returns
  (logits_BV for the next token, the updated cache). Usable inside other jitted code."""
  logits_B1V, cache = module.apply({"params": params}, tokens_B[:, None],
                                   cache.next_pos_B[:, None], cache=cache, cache_mode="decode")
  return logits_B1V[:, 0], cache


class ChunkState(NamedTuple):
  """After `step` chosen tokens: the last one per row (not yet in the cache) and who is done."""
  step: jax.Array
  tok_B: jax.Array
  cache: KVCache
  done_B: jax.Array


@functools.partial(jax.jit, static_argnames=("eos_ids", "greedy"))
def start(logits_BV, cache, done_B, s: Sampling, *, eos_ids: tuple[int, ...] = (),
          greedy: bool = False):
  """(state, first new token [B] or -1) from a prefill's logits_BV and cache."""
  done_B = done_B | (s.max_new_tokens <= 0)
  tok_B, done_B = choose(logits_BV, 0, done_B, s, eos_ids, greedy)
  return ChunkState(jnp.ones((), jnp.int32), tok_B, cache, done_B), tok_B


@functools.partial(jax.jit, static_argnames=("module", "num_steps", "eos_ids", "greedy"))
def decode_chunk(module, params, state: ChunkState, s: Sampling, *, num_steps: int,
                 eos_ids: tuple[int, ...] = (), greedy: bool = False):
  """Up to num_steps more steps from `state` (fewer when every row is done).

  Returns (new state, the tokens chosen [B, num_steps], -1 where a row produced nothing).
  Rows the host marks done in state.done_B produce nothing more.
  """
  first = state.step

  def body(carry):
    st, out_BT = carry
    logits_BV, cache = decode_step(module, params, jnp.maximum(st.tok_B, 0), st.cache)
    tok_B, done_B = choose(logits_BV, st.step, st.done_B, s, eos_ids, greedy)
    out_BT = jax.lax.dynamic_update_slice_in_dim(out_BT, tok_B[:, None], st.step - first,
                                                 axis=1)
    return ChunkState(st.step + 1, tok_B, cache, done_B), out_BT

  def cond(carry):
    st, _ = carry
    return (st.step - first < num_steps) & ~jnp.all(st.done_B)

  out_BT = jnp.full((state.tok_B.shape[0], num_steps), -1, jnp.int32)
  return jax.lax.while_loop(cond, body, (state, out_BT))


@functools.partial(jax.jit, static_argnames=("module", "num_steps", "eos_ids", "greedy"))
def decode(module, params, logits_BV, cache: KVCache, done_B, s: Sampling, *, num_steps: int,
           eos_ids: tuple[int, ...] = (), greedy: bool = False):
  """Samples up to s.max_new_tokens (<= num_steps, traced) tokens per row from the prefill's
  logits_BV and cache; rows with done_B set from the start produce nothing.

  Returns int32 [B, num_steps]: the new tokens, the EOS that ended a row included, -1 after a
  row's end. The loop stops when every row is done. Keys per (seed, the row's prompt position,
  its sample index, step); filters as `sampling_filters` returns them. One jitted loop:
  `start`, then one `decode_chunk` of all the remaining steps.
  """
  state, tok_B = start(logits_BV, cache, done_B, s, eos_ids=eos_ids, greedy=greedy)
  _, out_BT = decode_chunk(module, params, state, s, num_steps=num_steps - 1, eos_ids=eos_ids,
                           greedy=greedy)
  return jnp.concatenate([tok_B[:, None], out_BT], axis=1)


class Prefilled(NamedTuple):
  """A request after its prefill, per decoding row (the real rows, then padding rows, which
  repeat prompt 0 and start done): the logits of its prompt's last token and its cache rows,
  the prompt position and sample index it decodes; `rows` real rows; `num_steps` new tokens
  at most (max_new_tokens rounded up to a power of two)."""
  logits_BV: jax.Array
  cache: KVCache
  prompt_of_row_B: np.ndarray
  sample_index_B: np.ndarray
  rows: int
  num_steps: int

  def sampling(self, max_new_tokens: int, seed: int, temperature: float, filters: dict):
    """The rows' Sampling (filters: as sampling_filters returns them)."""
    return Sampling(self.prompt_of_row_B, self.sample_index_B, np.int32(max_new_tokens),
                    np.uint32(seed), np.float32(temperature), **filters)

  def padding_B(self) -> np.ndarray:
    """True for the padding rows (done from the start)."""
    return np.arange(len(self.prompt_of_row_B)) >= self.rows


def prepare(module, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
            num_samples: int = 1, batch_multiple: int = 1) -> Prefilled | None:
  """Checks a request (UserError) and prefills it: row r decodes sample r % num_samples of
  prompt r // num_samples; rows are padded to round_rows(rows, batch_multiple). None when there
  is nothing to decode (no prompts, or max_new_tokens 0). Call under the params' mesh."""
  cfg = module.cfg
  prompts = [list(map(int, p)) for p in prompts]
  _check_request(cfg, prompts, max_new_tokens, num_samples)
  if not prompts or max_new_tokens == 0:
    return None
  length, num_steps = bucket(max(len(p) for p in prompts), MIN_PROMPT), bucket(max_new_tokens)
  tokens_BP, lengths_B = pad_prompts(prompts, length, round_rows(len(prompts), batch_multiple))
  logits_BV, cache = prefill(module, params, tokens_BP, lengths_B,
                             cache_len=cache_length(cfg, length + num_steps))
  rows = len(prompts) * num_samples
  batch = round_rows(rows, batch_multiple)
  prompt_of_row, sample_index = np.zeros(batch, np.int32), np.zeros(batch, np.int32)
  prompt_of_row[:rows], sample_index[:rows] = np.divmod(np.arange(rows), num_samples)
  if num_samples > 1:  # else the prefill's rows are the decoding rows already
    logits_BV = jnp.take(logits_BV, prompt_of_row, axis=0)
    cache = take_rows(cache, prompt_of_row)
  return Prefilled(logits_BV, cache, prompt_of_row, sample_index, rows, num_steps)


def generate_ids(module, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None,
                 num_samples: int = 1, eos_ids: Sequence[int] = (), seed: int = 0,
                 mesh=None):
  """Continues each token prompt; returns the new tokens only, per prompt a list of ids
  (num_samples == 1) or a list of num_samples such lists. A row ends after max_new_tokens or
  at the first token in eos_ids (which is included).

  temperature 0 is greedy; otherwise tokens are drawn from softmax(logits / temperature)
  after the top_k / top_p / min_p filters (see lm.decoding.sampling.sampling_filters: None or
  0 top_k is no filter; out-of-range values are a UserError). Sample j of the prompt at
  position i uses the keys of (seed, i, j, step): it does not depend on the other prompts of
  the batch, and repeated prompts get different samples.
  mesh: run under this mesh (params may be sharded on it); the batch is split over its
  data-parallel axes.
  """
  filters = sampling_filters(temperature, top_k, top_p, min_p)
  with _maybe_mesh(mesh):
    p = prepare(module, params, prompts, max_new_tokens=max_new_tokens,
                num_samples=num_samples,
                batch_multiple=1 if mesh is None else data_parallel_size(mesh))
    if p is None:
      empty = [[] for _ in range(num_samples)] if num_samples > 1 else []
      return [list(empty) for _ in prompts]
    out_BT = decode(module, params, p.logits_BV, p.cache, p.padding_B(),
                    p.sampling(max_new_tokens, seed, temperature, filters),
                    num_steps=p.num_steps, eos_ids=tuple(int(e) for e in eos_ids),
                    greedy=temperature == 0)
  out_BT = np.asarray(out_BT)
  per_row = [[int(t) for t in row if t >= 0] for row in out_BT[:p.rows]]
  if num_samples == 1:
    return per_row
  return [per_row[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def _check_request(cfg, prompts, max_new_tokens, num_samples):
  if max_new_tokens < 0 or num_samples < 1:
    raise UserError(f"max_new_tokens={max_new_tokens} must be >= 0 and num_samples="
                    f"{num_samples} >= 1")
  for i, p in enumerate(prompts):
    if not p:
      raise UserError(f"prompt {i} is empty: a prompt needs at least one token (e.g. BOS)")
    if min(p) < 0 or max(p) >= cfg.vocab_size:
      raise UserError(f"prompt {i} has a token id outside [0, {cfg.vocab_size})")
  longest = max((len(p) for p in prompts), default=0)
  if cfg.positions == "learned" and longest + max_new_tokens > cfg.max_len:
    raise UserError(f"a prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                    f"model's {cfg.max_len} learned positions")


def _maybe_mesh(mesh):
  return contextlib.nullcontext() if mesh is None else use_mesh(mesh)

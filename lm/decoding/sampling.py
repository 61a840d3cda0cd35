"""Next-token choice from logits: greedy, temperature, top-k, top-p (nucleus), min-p.

Filters apply in vLLM's / HF's order to the temperature-scaled distribution: top-k keeps the
k most likely tokens (all of them on a tie at the k-th), top-p then keeps the smallest set of
most likely tokens whose probability (renormalised after top-k) reaches p (always at least
one), min-p then drops tokens below min_p times the most likely token's probability.
`sampling_filters` checks the settings and switches filters off as HF / OpenAI do.

Random keys are derived per row from (seed, the prompt's position in the request, sample
index, step), never from the row's place in the padded batch or from the other prompts: a
prompt at position i decodes to the same tokens whatever else is in the batch, and repeated
prompts (other positions) get their own draws.
"""
import math
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError


def row_keys(key, position_B, sample_index_B, step):
  """One PRNG key per row: fold_in(fold_in(fold_in(key, position), sample_index), step).

  key: e.g. jax.random.PRNGKey(seed); position_B: each row's prompt position in the request.
  """
  fold = lambda i, s: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, i), s),
                                         step)
  return jax.vmap(fold)(position_B, sample_index_B)


def sampling_filters(temperature, top_k=None, top_p=None, min_p=None) -> dict:
  """Checks the sampling settings; returns {"top_k", "top_p", "min_p"} as `sample` takes them
  (numpy scalars, None where a filter is off; all None when temperature is 0: greedy).

  As in HF / OpenAI: top_k None or 0 is no filter (k > vocabulary keeps every token); top_p in
  [0, 1] (1: no filter, 0: the most likely token); min_p in [0, 1]. Raises UserError otherwise.
  """
  errors = []
  if not 0 <= temperature < math.inf:  # NaN fails too
    errors.append(f"temperature={temperature!r} must be a finite number >= 0")
  if top_k is not None:
    try:
      k = operator.index(top_k)  # an int (numpy ints too), not 2.5
    except TypeError:
      k = -1
    if k < 0:
      errors.append(f"top_k={top_k!r} must be an integer >= 0 (0 or None: no top-k filter)")
  for name, value in (("top_p", top_p), ("min_p", min_p)):
    if value is not None and not 0 <= value <= 1:
      errors.append(f"{name}={value!r} must be in [0, 1] (None: no {name} filter)")
  if errors:
    raise UserError("; ".join(errors))
  if temperature == 0:
    return dict(top_k=None, top_p=None, min_p=None)
  return dict(top_k=np.int32(min(k, 2**31 - 1)) if top_k else None,
              top_p=None if top_p is None else np.float32(top_p),
              min_p=None if min_p is None else np.float32(min_p))


def filter_logits(logits_BV, temperature, top_k=None, top_p=None, min_p=None):
  """Temperature-scaled logits with the filtered-out tokens at -inf.

  temperature > 0 (traced is fine). top_k >= 1, top_p and min_p in [0, 1], as
  `sampling_filters` returns them: None to switch a filter off (the switch is static; the
  values may be traced).
  """
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  neg_inf = jnp.float32(-jnp.inf)
  if top_k is not None or top_p is not None:
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)  # descending
    rank_V = jnp.arange(logits_BV.shape[-1])
    if top_k is not None:
      k = jnp.clip(top_k, 1, logits_BV.shape[-1])
      kth_B1 = jnp.take(sorted_BV, k - 1, axis=-1)[:, None]
      logits_BV = jnp.where(logits_BV < kth_B1, neg_inf, logits_BV)
      sorted_BV = jnp.where(sorted_BV < kth_B1, neg_inf, sorted_BV)
    if top_p is not None:
      probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
      before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass of the more likely tokens
      keep_BV = (before_BV < top_p) | (rank_V == 0)
      cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
      logits_BV = jnp.where(logits_BV < cutoff_B1, neg_inf, logits_BV)
  if min_p is not None:
    probs_BV = jax.nn.softmax(logits_BV, axis=-1)
    floor_B1 = min_p * jnp.max(probs_BV, axis=-1, keepdims=True)
    logits_BV = jnp.where(probs_BV < floor_B1, neg_inf, logits_BV)
  return logits_BV


def sample(logits_BV, keys_B, temperature, top_k=None, top_p=None, min_p=None,
           greedy: bool = False):
  """int32 [B] next tokens: argmax if `greedy` (static), else a draw from the filtered
  softmax(logits / temperature) with each row's own key."""
  if greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = filter_logits(logits_BV, temperature, top_k, top_p, min_p)
  return jax.vmap(jax.random.categorical)(keys_B, logits_BV).astype(jnp.int32)


class Sampling(NamedTuple):
  """Per-row prompt position and sample index, and the sampling settings (filters None when
  off, as `sampling_filters` returns them)."""
  position_B: jax.Array
  sample_index_B: jax.Array
  max_new_tokens: jax.Array
  seed: jax.Array
  temperature: jax.Array
  top_k: jax.Array | None = None
  top_p: jax.Array | None = None
  min_p: jax.Array | None = None


def choose(logits_BV, step, done_B, s: Sampling, eos_ids, greedy: bool):
  """(token [B] of decode step `step`, -1 for rows already done; done_B after it): a row ends
  at a token of eos_ids or at its max_new_tokens-th token. Keys as `row_keys` of PRNGKey(seed)."""
  keys_B = row_keys(jax.random.PRNGKey(s.seed), s.position_B, s.sample_index_B, step)
  tok_B = sample(logits_BV, keys_B, s.temperature, s.top_k, s.top_p, s.min_p, greedy=greedy)
  tok_B = jnp.where(done_B, -1, tok_B)
  eos = jnp.asarray(eos_ids, jnp.int32)
  return tok_B, done_B | jnp.isin(tok_B, eos) | (step + 1 >= s.max_new_tokens)

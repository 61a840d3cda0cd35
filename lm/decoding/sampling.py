"""Next-token choice from logits: greedy, temperature, top-k, top-p (nucleus), min-p.

Filters apply in vLLM's / HF's order to the temperature-scaled distribution: top-k keeps the
k most likely tokens (all of them on a tie at the k-th), top-p then keeps the smallest set of
most likely tokens whose probability (renormalised after top-k) reaches p (always at least
one), min-p then drops tokens below min_p times the most likely token's probability.

Random keys are derived per row from (seed, sample index, step) only, never from a row's place
in the batch, so a prompt decodes to the same tokens whatever else is in the batch.
"""
import jax
import jax.numpy as jnp


def row_keys(seed, sample_index_B, step):
  """One PRNG key per row: fold_in(fold_in(PRNGKey(seed), sample_index), step)."""
  base = jax.random.PRNGKey(seed)
  fold = lambda s: jax.random.fold_in(jax.random.fold_in(base, s), step)
  return jax.vmap(fold)(sample_index_B)


def filter_logits(logits_BV, temperature, top_k=None, top_p=None, min_p=None):
  """Temperature-scaled logits with the filtered-out tokens at -inf.

  temperature > 0 (traced is fine). top_k, top_p, min_p: None to switch a filter off (the
  switch is static; the values may be traced).
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

"""Sampling without a KV cache: each step re-reads a fixed-size window.

Tokens are chosen as in the KV-cache decoder (lm.decoding.sampling: the same checks, filters
and per-row keys; row b of the batch is the prompt at position b, sample 0).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm.decoding.sampling import row_keys, sample, sampling_filters


def generate(model, params, prompt_BP, rng, *, num_steps: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             window: int = 256):
  """Extends `prompt_BP` by `num_steps` sampled tokens; returns [B, P + num_steps].

  The model sees at most the last `window` tokens (nanoGPT's crop to block_size); the buffer
  has a fixed shape so the whole loop compiles once. temperature 0 means greedy; the filters
  are checked by lm.decoding.sampling.sampling_filters (top_k None or 0: no filter). rng: the
  key the per-row keys fold from (lm.decoding uses PRNGKey(seed)).
  """
  filters = sampling_filters(temperature, top_k, top_p, min_p)
  return _generate(model, params, jnp.asarray(prompt_BP, jnp.int32), rng,
                   np.float32(temperature), **filters, num_steps=num_steps, window=window,
                   greedy=temperature == 0)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "window", "greedy"))
def _generate(model, params, prompt_BP, rng, temperature, top_k, top_p, min_p, *,
              num_steps: int, window: int, greedy: bool):
  b, p = prompt_BP.shape
  total = p + num_steps
  tokens_BT = jnp.zeros((b, total + window), jnp.int32).at[:, window:window + p].set(prompt_BP)
  position_B, sample_index_B = jnp.arange(b), jnp.zeros((b,), jnp.int32)

  def body(i, tokens_BT):
    end = window + p + i  # position after the last filled token
    ctx_BW = jax.lax.dynamic_slice_in_dim(tokens_BT, end - window, window, axis=1)
    # Left padding would shift positions: place the real tokens first, padding after.
    n_real = jnp.minimum(p + i, window)
    ctx_BW = jnp.roll(ctx_BW, n_real - window, axis=1)
    logits_BV = model.apply({"params": params}, ctx_BW)[:, n_real - 1]
    keys_B = row_keys(rng, position_B, sample_index_B, i)
    next_B = sample(logits_BV, keys_B, temperature, top_k, top_p, min_p, greedy=greedy)
    return tokens_BT.at[:, end].set(next_B)

  tokens_BT = jax.lax.fori_loop(0, num_steps, body, tokens_BT)
  return tokens_BT[:, window:]

"""Temperature / top-k sampling without a KV cache: each step re-reads a fixed-size window."""
import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "top_k", "window"))
def generate(model, params, prompt_BP, rng, *, num_steps: int, temperature: float = 1.0,
             top_k: int | None = None, window: int = 256):
  """Extends `prompt_BP` by `num_steps` sampled tokens; returns [B, P + num_steps].

  The model sees at most the last `window` tokens (nanoGPT's crop to block_size); the buffer
  has a fixed shape so the whole loop compiles once. temperature 0 means greedy.
  """
  b, p = prompt_BP.shape
  total = p + num_steps
  tokens_BT = jnp.zeros((b, total + window), jnp.int32).at[:, window:window + p].set(prompt_BP)

  def body(i, carry):
    tokens_BT, rng = carry
    end = window + p + i  # position after the last filled token
    ctx_BW = jax.lax.dynamic_slice_in_dim(tokens_BT, end - window, window, axis=1)
    # Left padding would shift positions: place the real tokens first, padding after.
    n_real = jnp.minimum(p + i, window)
    ctx_BW = jnp.roll(ctx_BW, n_real - window, axis=1)
    logits_BV = model.apply({"params": params}, ctx_BW)[:, n_real - 1]
    rng, key = jax.random.split(rng)
    next_B = _sample(logits_BV, key, temperature, top_k)
    return tokens_BT.at[:, end].set(next_B), rng

  tokens_BT, _ = jax.lax.fori_loop(0, num_steps, body, (tokens_BT, rng))
  return tokens_BT[:, window:]


def _sample(logits_BV, key, temperature, top_k):
  if top_k:
    kth_BV = jax.lax.top_k(logits_BV, min(top_k, logits_BV.shape[-1]))[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_BV, -jnp.inf, logits_BV)
  greedy_B = jnp.argmax(logits_BV, axis=-1)
  sampled_B = jax.random.categorical(key, logits_BV / jnp.maximum(temperature, 1e-6), axis=-1)
  return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)

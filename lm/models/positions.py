"""Position encodings: learned absolute table and rotary embeddings (RoPE)."""
import flax.linen as nn
import jax.numpy as jnp

from lm.models.config import ModelConfig
from lm.models.layers import param_with_axes


class LearnedPositions(nn.Module):
  """GPT-2 style absolute position table, indexed by each token's (segment) position."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, positions_BL):
    cfg = self.cfg
    table = param_with_axes(self, "embedding", nn.initializers.normal(cfg.init_std),
                            (cfg.max_len, cfg.d_model), (None, "embed"), cfg.weight_dtype)
    return jnp.take(table, positions_BL, axis=0).astype(cfg.compute_dtype)


def rope(x_BLHK, positions_BL, theta: float):
  """Rotates pairs (i, i + K/2) of each head by position * theta^(-2i/K) ("rotate-half").

  This is the layout of HF Llama / GPT-NeoX; computed in float32 for long positions.
  """
  k = x_BLHK.shape[-1]
  inv_freq_K2 = theta ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)
  angles_BLK2 = positions_BL[..., None].astype(jnp.float32) * inv_freq_K2
  sin, cos = jnp.sin(angles_BLK2)[:, :, None, :], jnp.cos(angles_BLK2)[:, :, None, :]
  x1, x2 = jnp.split(x_BLHK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BLHK.dtype)

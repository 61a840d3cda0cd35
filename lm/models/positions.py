"""Position information: learned and sinusoidal tables, RoPE, ALiBi and T5 relative bias.

Everything is a function of each token's (segment) position, never of its index in the
array, so packed sequences and a decode step against a KV cache use the same code.
"""
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

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


def sinusoidal(positions_BL, d: int, dtype):
  """The original Transformer's fixed encoding: [sin(p w_i), cos(p w_i)], w_i = 1e4^(-2i/d)."""
  inv_freq_A = 10_000.0 ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)  # A = d / 2
  angles_BLA = positions_BL[..., None].astype(jnp.float32) * inv_freq_A
  return jnp.concatenate([jnp.sin(angles_BLA), jnp.cos(angles_BLA)], axis=-1).astype(dtype)


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies of the rotated dims (float32, as HF computes them).

  With rope_scaling='llama3', Llama 3.1's rule: wavelengths longer than
  original_max_len / low_freq_factor are slowed down by `factor`, those shorter than
  original_max_len / high_freq_factor are kept, and the band between is interpolated.
  """
  r = cfg.rotary_dims
  inv_freq = (1.0 / cfg.rope_theta ** (np.arange(0, r, 2, dtype=np.float32) / r)).astype(
      np.float32)
  if cfg.rope_scaling == "llama3":
    factor, low, high = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > cfg.rope_original_max_len / low, inv_freq / factor, inv_freq)
    smooth = (cfg.rope_original_max_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ((wavelen >= cfg.rope_original_max_len / high)
              & (wavelen <= cfg.rope_original_max_len / low))
    inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
  return inv_freq


def rope(x_BLHK, positions_BL, inv_freq_A, layout: str = "half"):
  """Rotates the first 2A dims of each head (A = len(inv_freq)) by position * inv_freq.

  layout 'half' pairs dim i with i + A (HF Llama, GPT-NeoX); 'interleaved' pairs 2i with
  2i + 1 (GPT-J, Meta's original Llama). Dims past 2A pass through unrotated (partial rotary).
  Computed in float32 so long positions keep their precision.
  """
  r = 2 * inv_freq_A.shape[-1]
  angles_BLA = positions_BL[..., None].astype(jnp.float32) * jnp.asarray(inv_freq_A)
  sin, cos = jnp.sin(angles_BLA)[:, :, None, :], jnp.cos(angles_BLA)[:, :, None, :]
  x32 = x_BLHK.astype(jnp.float32)
  rot, rest = x32[..., :r], x32[..., r:]
  if layout == "half":
    x1, x2 = jnp.split(rot, 2, axis=-1)
    rot = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  else:
    x1, x2 = rot[..., 0::2], rot[..., 1::2]
    rot = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rot.shape)
  out = rot if r == x_BLHK.shape[-1] else jnp.concatenate([rot, rest], axis=-1)
  return out.astype(x_BLHK.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """ALiBi's per-head slopes 2^(-8h/n); for n not a power of two, Press et al.'s interleave."""
  def power_of_2(n):
    return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
  n = 2 ** math.floor(math.log2(num_heads))
  slopes = power_of_2(n) + power_of_2(2 * n)[0::2][:num_heads - n]
  return np.asarray(slopes, np.float32)


def alibi_bias(q_pos_BL, k_pos_BS, num_heads: int):
  """[B, H, L, S] bias -slope_h * (q - k): linearly fading attention to distant keys."""
  distance_BLS = (q_pos_BL[:, :, None] - k_pos_BS[:, None, :]).astype(jnp.float32)
  return -jnp.asarray(alibi_slopes(num_heads))[None, :, None, None] * distance_BLS[:, None]


def relative_bucket(distance, num_buckets: int, max_distance: int):
  """T5's causal bucketing of distance = q - k >= 0: exact below num_buckets/2, then log-spaced."""
  distance = jnp.maximum(distance, 0)
  exact = num_buckets // 2
  log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact)
  large = exact + (log_ratio / math.log(max_distance / exact) * (num_buckets - exact)).astype(
      jnp.int32)
  return jnp.where(distance < exact, distance, jnp.minimum(large, num_buckets - 1))


class RelativeBias(nn.Module):
  """T5-style learned bias per (distance bucket, head); one table per layer."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, q_pos_BL, k_pos_BS):
    cfg = self.cfg
    table_UH = param_with_axes(self, "embedding", nn.initializers.normal(cfg.init_std),
                               (cfg.relative_buckets, cfg.num_heads), (None, "heads"),
                               cfg.weight_dtype)
    buckets_BLS = relative_bucket(q_pos_BL[:, :, None] - k_pos_BS[:, None, :],
                                  cfg.relative_buckets, cfg.relative_max_distance)
    bias_BLSH = jnp.take(table_UH.astype(jnp.float32), buckets_BLS, axis=0)
    return bias_BLSH.transpose(0, 3, 1, 2)

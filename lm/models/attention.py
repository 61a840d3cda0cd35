"""Multi-head attention (MHA / GQA / MQA) with masks built from query and key positions.

Masks come from positions and segment ids rather than from a fixed square, so a decoding
step (one query against a cache of keys) runs the same code as training.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.models.config import ModelConfig
from lm.models.layers import DenseGeneral, constrain
from lm.models.positions import rope


def make_mask(q_pos_BL, k_pos_BS, q_seg_BL=None, k_seg_BS=None, window: int | None = None):
  """Boolean [B, 1, L, S] mask: causal, within one packed segment, optionally local."""
  q, k = q_pos_BL[:, :, None], k_pos_BS[:, None, :]
  mask_BLS = k <= q
  if window is not None:
    mask_BLS &= q - k < window
  if q_seg_BL is not None:
    mask_BLS &= q_seg_BL[:, :, None] == k_seg_BS[:, None, :]
  return mask_BLS[:, None]


def dot_product_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, backend: str = "jnp"):
  """softmax(q k^T / sqrt(K) + mask) v; G key/value heads are shared by H/G query heads.

  `jnp` is the readable reference; `xla` calls `jax.nn.dot_product_attention`, which picks
  cuDNN flash attention on GPUs that support it.
  """
  if backend == "xla":
    return jax.nn.dot_product_attention(q_BLHK, k_BSGK, v_BSGK, mask=mask_B1LS)
  b, l, h, k = q_BLHK.shape
  g = k_BSGK.shape[2]
  q_BLGRK = q_BLHK.reshape(b, l, g, h // g, k) * (k ** -0.5)
  scores_BGRLS = jnp.einsum("blgrk,bsgk->bgrls", q_BLGRK, k_BSGK).astype(jnp.float32)
  scores_BGRLS = jnp.where(mask_B1LS[:, :, None], scores_BGRLS, jnp.finfo(jnp.float32).min)
  probs_BGRLS = jax.nn.softmax(scores_BGRLS, axis=-1).astype(v_BSGK.dtype)
  out_BLGRK = jnp.einsum("bgrls,bsgk->blgrk", probs_BGRLS, v_BSGK)
  return out_BLGRK.reshape(b, l, h, k)


class Attention(nn.Module):
  """Self-attention block: projections, optional RoPE, masked attention, output projection."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL):
    cfg = self.cfg
    d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    q_BLHK = DenseGeneral((d,), (h, k), ("embed", "heads", "head_dim"), cfg, name="query")(x_BLD)
    k_BLGK = DenseGeneral((d,), (g, k), ("embed", "kv_heads", "head_dim"), cfg, name="key")(x_BLD)
    v_BLGK = DenseGeneral((d,), (g, k), ("embed", "kv_heads", "head_dim"), cfg, name="value")(x_BLD)
    if cfg.positions == "rope":
      q_BLHK = rope(q_BLHK, positions_BL, cfg.rope_theta)
      k_BLGK = rope(k_BLGK, positions_BL, cfg.rope_theta)
    q_BLHK = constrain(q_BLHK, ("batch", "length", "heads", "head_dim"))
    k_BLGK = constrain(k_BLGK, ("batch", "length", "kv_heads", "head_dim"))
    v_BLGK = constrain(v_BLGK, ("batch", "length", "kv_heads", "head_dim"))
    mask = make_mask(positions_BL, positions_BL, segment_ids_BL, segment_ids_BL)
    out_BLHK = dot_product_attention(q_BLHK, k_BLGK, v_BLGK, mask, cfg.attention_backend)
    out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
    return DenseGeneral((h, k), (d,), ("heads", "head_dim", "embed"), cfg, init_std=out_std,
                        name="out")(out_BLHK)

"""Decoder-only transformer language model assembled from lm.models' pieces."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.models.attention import Attention
from lm.models.config import ModelConfig
from lm.models.layers import DenseGeneral, Embed, Mlp, Norm, constrain
from lm.models.positions import LearnedPositions

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL):
    cfg = self.cfg
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    h_BLD = Attention(cfg, name="attn")(Norm(cfg, name="ln_attn")(x_BLD), positions_BL,
                                        segment_ids_BL)
    x_BLD = constrain(x_BLD + drop(h_BLD), ("batch", "length", "embed"))
    h_BLD = Mlp(cfg, name="mlp")(Norm(cfg, name="ln_mlp")(x_BLD))
    return constrain(x_BLD + drop(h_BLD), ("batch", "length", "embed"))


class _ScanBlock(Block):
  """Block with nn.scan's (carry, output) signature."""

  def __call__(self, x_BLD, positions_BL, segment_ids_BL):
    return super().__call__(x_BLD, positions_BL, segment_ids_BL), None


class Transformer(nn.Module):
  """tokens [B, L] -> logits [B, L, vocab] (float32).

  positions and segment_ids describe packed sequences (seqio's decoder_positions and
  decoder_segment_ids); left out, each row is one sequence starting at position 0.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, segment_ids_BL=None,
               deterministic: bool = True):
    cfg = self.cfg
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
    embed = Embed(cfg, name="embed")
    x_BLD = embed(tokens_BL)
    if cfg.positions == "learned":
      x_BLD = x_BLD + LearnedPositions(cfg, name="pos_embed")(positions_BL)
    x_BLD = nn.Dropout(cfg.dropout_rate)(x_BLD, deterministic=deterministic)
    x_BLD = constrain(x_BLD, ("batch", "length", "embed"))

    block = _ScanBlock if cfg.scan_layers else Block
    if cfg.remat != "none":
      block = nn.remat(block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True,
                      "dropout": True}, in_axes=(nn.broadcast, nn.broadcast),
                      length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x_BLD, _ = stack(cfg, deterministic, name="layers")(x_BLD, positions_BL, segment_ids_BL)
    else:
      for i in range(cfg.num_layers):
        x_BLD = block(cfg, deterministic, name=f"layer_{i}")(x_BLD, positions_BL,
                                                             segment_ids_BL)

    x_BLD = Norm(cfg, name="ln_final")(x_BLD)
    if cfg.tie_embeddings:
      logits_BLV = embed.attend(x_BLD)
    else:
      logits_BLV = DenseGeneral((cfg.d_model,), (cfg.vocab_size,), ("embed", "vocab"), cfg,
                                use_bias=False, name="unembed")(x_BLD)
    return constrain(logits_BLV.astype(jnp.float32), ("batch", "length", "vocab"))

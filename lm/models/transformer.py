"""Decoder-only transformer language model assembled from lm.models' pieces."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.models.attention import Attention
from lm.models.config import ModelConfig
from lm.models.layers import DenseGeneral, Embed, Mlp, Norm, constrain
from lm.models.positions import LearnedPositions, sinusoidal

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nn.Module):
  """Residual block, by cfg.block and cfg.norm_position:

  sequential pre-norm (GPT-2, Llama): x += attn(ln_attn(x)); x += mlp(ln_mlp(x))
  sequential post-norm (2017 Transformer): x = ln_attn(x + attn(x)); x = ln_mlp(x + mlp(x))
  parallel (GPT-J, GPT-NeoX): x += attn(ln_attn(x)) + mlp(ln_mlp(x))
  """
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL):
    cfg = self.cfg
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    attn = lambda y: Attention(cfg, self.deterministic, name="attn")(y, positions_BL,
                                                                     segment_ids_BL)
    mlp = Mlp(cfg, name="mlp")
    ln_attn, ln_mlp = Norm(cfg, name="ln_attn"), Norm(cfg, name="ln_mlp")
    if cfg.block == "parallel":
      x_BLD = x_BLD + drop(attn(ln_attn(x_BLD))) + drop(mlp(ln_mlp(x_BLD)))
    elif cfg.norm_position == "post":
      x_BLD = ln_attn(x_BLD + drop(attn(x_BLD)))
      x_BLD = ln_mlp(constrain(x_BLD, ("batch", "length", "embed")) + drop(mlp(x_BLD)))
    else:
      x_BLD = constrain(x_BLD + drop(attn(ln_attn(x_BLD))), ("batch", "length", "embed"))
      x_BLD = x_BLD + drop(mlp(ln_mlp(x_BLD)))
    return constrain(x_BLD, ("batch", "length", "embed"))


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
    elif cfg.positions == "sinusoidal":
      x_BLD = x_BLD + sinusoidal(positions_BL, cfg.d_model, cfg.compute_dtype)
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

    if cfg.norm_position == "pre":  # post-norm blocks already end in a norm
      x_BLD = Norm(cfg, name="ln_final")(x_BLD)
    if cfg.tie_embeddings:
      logits_BLV = embed.attend(x_BLD)
    else:
      logits_BLV = DenseGeneral((cfg.d_model,), (cfg.vocab_size,), ("embed", "vocab"), cfg,
                                use_bias=False, name="unembed")(x_BLD)
    return constrain(logits_BLV.astype(jnp.float32), ("batch", "length", "vocab"))

"""Decoder-only transformer language model assembled from lm.models' pieces."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.models.attention import Attention, KVCache, LayerInputs, write_prefill, write_step
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

  Returns (x, the layer's updated (k, v) cache or None); see Attention for `inputs` and `kv`.
  """
  cfg: ModelConfig
  deterministic: bool = True
  cache_mode: str = "prefill"
  causal: bool = False

  @nn.compact
  def __call__(self, x_BLD, inputs: LayerInputs, kv=None):
    cfg = self.cfg
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    new_kv = []

    def attn(y):
      out = Attention(cfg, self.deterministic, self.cache_mode, self.causal, name="attn")(
          y, inputs, kv)
      if kv is None:
        return out
      new_kv.append(out[1])
      return out[0]

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
    return constrain(x_BLD, ("batch", "length", "embed")), (new_kv[0] if new_kv else None)


class _ScanBlock(Block):
  """Block with nn.scan's signature: carry (x, stacked (k, v) cache or None), layer number, and
  the call's LayerInputs (broadcast to every layer)."""

  def __call__(self, carry, layer, inputs: LayerInputs):
    x_BLD, kv = carry
    layer_kv = None if kv is None else (kv[0], kv[1], layer)
    x_BLD, kv = super().__call__(x_BLD, inputs, layer_kv)
    return (x_BLD, kv), None


class Transformer(nn.Module):
  """tokens [B, L] -> logits [B, L, vocab] (float32).

  positions and segment_ids describe packed sequences (seqio's decoder_positions and
  decoder_segment_ids); left out, each row is one sequence starting at position 0.

  prefix_ids (with segment_ids, no cache): per token a second segment it also attends to, so
  that several continuations packed after one shared context each see it (Attention's mask).

  With `cache` (a KVCache, see lm.models.attention) it returns (logits, updated cache):
  cache_mode='prefill' runs a prompt batch on an empty cache (segment_ids 1 for real tokens, 0
  for padding); cache_mode='decode' appends tokens at cache.index. The model holds no decoding
  loop: lm.decoding drives it. last_only: logits of the last column only ([B, 1, vocab]);
  logits_at_BC: logits of those columns only ([B, C, vocab]).

  Every layer gets these per-call inputs as one LayerInputs (lm.models.attention).
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, segment_ids_BL=None,
               deterministic: bool = True, cache: KVCache | None = None,
               cache_mode: str = "prefill", last_only: bool = False, prefix_ids_BL=None,
               logits_at_BC=None):
    cfg = self.cfg
    causal = positions_BL is None and segment_ids_BL is None and cache is None
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

    kv, inputs = None, LayerInputs(positions_BL, segment_ids_BL, prefix_ids_BL)
    if cache is not None:
      kv = (cache.k, cache.v)
      if cache_mode == "prefill":
        cache_pos_BS = write_prefill(cache.pos_BS, jnp.where(segment_ids_BL > 0, positions_BL, -1))
      else:
        cache_pos_BS = write_step(cache.pos_BS, positions_BL, cache.index)
      inputs = inputs.replace(cache_pos_BS=cache_pos_BS, cache_index=cache.index)

    block_args = dict(deterministic=deterministic, cache_mode=cache_mode, causal=causal)
    block = _ScanBlock if cfg.scan_layers else Block
    if cfg.remat != "none":
      block = nn.remat(block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      # The carry holds x and the stacked cache; the scanned input is the layer number.
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True,
                      "dropout": True}, in_axes=(0, nn.broadcast),
                      length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      (x_BLD, kv), _ = stack(cfg, name="layers", **block_args)(
          (x_BLD, kv), jnp.arange(cfg.num_layers), inputs)
    else:
      new_kv = []
      for i in range(cfg.num_layers):
        layer_kv = None if kv is None else (kv[0][i], kv[1][i])
        x_BLD, layer_kv = block(cfg, name=f"layer_{i}", **block_args)(x_BLD, inputs, layer_kv)
        new_kv.append(layer_kv)
      if kv is not None:
        kv = tuple(zip(*new_kv))

    if last_only:
      x_BLD = x_BLD[:, -1:]
    if logits_at_BC is not None:
      x_BLD = jnp.take_along_axis(x_BLD, logits_at_BC[..., None], axis=1)
    if cfg.norm_position == "pre":  # post-norm blocks already end in a norm
      x_BLD = Norm(cfg, name="ln_final")(x_BLD)
    if cfg.tie_embeddings:
      logits_BLV = embed.attend(x_BLD)
    else:
      logits_BLV = DenseGeneral((cfg.d_model,), (cfg.padded_vocab_size,), ("embed", "vocab"),
                                cfg, use_bias=False, name="unembed")(x_BLD)
    logits_BLV = logits_BLV[..., :cfg.vocab_size]  # padded rows are never predicted
    logits_BLV = constrain(logits_BLV.astype(jnp.float32), ("batch", "length", "vocab"))
    if cache is None:
      return logits_BLV
    length = tokens_BL.shape[1]
    if cache_mode == "prefill":
      next_pos_B = jnp.max(jnp.where(segment_ids_BL > 0, positions_BL + 1, 0), axis=1)
    else:
      next_pos_B = positions_BL[:, -1] + 1
    return logits_BLV, KVCache(k=kv[0], v=kv[1], pos_BS=inputs.cache_pos_BS,
                               index=cache.index + length,
                               next_pos_B=next_pos_B.astype(jnp.int32))

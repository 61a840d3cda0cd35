"""ModelConfig: every architectural choice of the decoder, one gin binding each.

Parameter and FLOP counts are derived from the config alone (no weights are allocated), so
MFU and `params: N` never disagree with what is built.
"""
import dataclasses
from typing import Optional

import gin
import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder-only transformer (see README for each switch)."""
  vocab_size: int = 256
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: Optional[int] = None  # None: = num_heads (MHA); 1: MQA; else GQA.
  head_dim: Optional[int] = None  # None: d_model // num_heads.
  mlp_dim: int = 512
  activation: str = "gelu"  # gelu | gelu_tanh | relu | silu | swiglu | geglu
  norm: str = "layernorm"  # layernorm | rmsnorm
  norm_eps: float = 1e-5
  use_bias: bool = False  # biases on dense layers and layernorm
  positions: str = "learned"  # learned | rope | none
  max_len: int = 1024  # size of the learned position table
  rope_theta: float = 10_000.0
  dropout_rate: float = 0.0
  tie_embeddings: bool = True
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype of activations and matmuls
  param_dtype: str = "float32"
  scan_layers: bool = False  # one compiled layer applied num_layers times (fast compiles)
  remat: str = "none"  # none | full | save_dots
  attention_backend: str = "jnp"  # jnp (reference) | xla (jax.nn.dot_product_attention)

  def __post_init__(self):
    checks = [
        (self.d_model > 0 and self.num_layers > 0 and self.num_heads > 0, "sizes must be > 0"),
        (self.num_heads % self.kv_heads == 0,
         f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.kv_heads}"),
        (self.activation in ("gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu"),
         f"unknown activation {self.activation!r}"),
        (self.norm in ("layernorm", "rmsnorm"), f"unknown norm {self.norm!r}"),
        (self.positions in ("learned", "rope", "none"), f"unknown positions {self.positions!r}"),
        (self.remat in ("none", "full", "save_dots"), f"unknown remat {self.remat!r}"),
        (self.attention_backend in ("jnp", "xla"),
         f"unknown attention_backend {self.attention_backend!r}"),
        (self.dtype in _DTYPES and self.param_dtype in _DTYPES, "dtypes: float32|bfloat16|float16"),
        (self.positions != "rope" or self.dim_per_head % 2 == 0, "rope needs an even head_dim"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f"ModelConfig: {message}")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def gated(self) -> bool:
    return self.activation in ("swiglu", "geglu")


def num_params(cfg: ModelConfig, include_embedding: bool = True) -> int:
  """Exact parameter count of `lm.models.transformer.Transformer(cfg)`."""
  d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  norm = d * (2 if cfg.norm == "layernorm" and cfg.use_bias else 1)
  attn = d * (h + 2 * kv) * hd + h * hd * d
  mlp = d * cfg.mlp_dim * (3 if cfg.gated else 2)
  if cfg.use_bias:
    attn += (h + 2 * kv) * hd + d
    mlp += cfg.mlp_dim * (2 if cfg.gated else 1) + d
  total = cfg.num_layers * (attn + mlp + 2 * norm) + norm
  if include_embedding:
    total += cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    total += cfg.max_len * d if cfg.positions == "learned" else 0
  return total


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward = 3x forward), MaxText's formula.

  Counts the matmuls of every layer and the output projection; causal attention scores and
  values count half of the full seq_len x seq_len product.
  """
  d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  mlp = 2 * d * cfg.mlp_dim * (3 if cfg.gated else 2)
  qkv_out = 2 * d * (h + 2 * kv) * hd + 2 * h * hd * d
  attention = 4 * seq_len * h * hd / 2
  logits = 2 * d * cfg.vocab_size
  return 3 * (cfg.num_layers * (mlp + qkv_out + attention) + logits)

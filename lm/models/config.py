"""ModelConfig: every architectural choice of the decoder, one gin binding each.

Parameter and FLOP counts are derived from the config alone (no weights are allocated), so
MFU and `params: N` never disagree with what is built.
"""
import dataclasses
from typing import Optional

import gin
import jax.numpy as jnp

from lm.errors import ConfigError

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "relative", "none")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder-only transformer (docs/models.md describes each switch)."""
  vocab_size: int = 256
  # Embedding / unembedding rows padded up to a multiple of this (e.g. 128: GPT-2's 50,257 ->
  # 50,304, divisible by the tensor axis). Padded rows are never predicted: the model returns
  # logits for the vocab_size real tokens only.
  vocab_pad_multiple: int = 1
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
  norm_position: str = "pre"  # pre (GPT-2, Llama) | post (original Transformer, no final norm)
  qk_norm: bool = False  # normalize queries and keys per head before the scores
  block: str = "sequential"  # sequential | parallel (GPT-J / NeoX: x + attn(ln1 x) + mlp(ln2 x))
  positions: str = "learned"  # learned | sinusoidal | rope | alibi | relative | none
  max_len: int = 1024  # size of the learned position table
  rope_theta: float = 10_000.0
  rotary_dim: Optional[int] = None  # rotate only the first rotary_dim dims of a head (None: all)
  rope_layout: str = "half"  # half (Llama, NeoX: i with i + K/2) | interleaved (GPT-J: 2i, 2i+1)
  rope_scaling: str = "none"  # none | llama3 (Llama 3.1 frequency scaling, parameters below)
  rope_scaling_factor: float = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  relative_buckets: int = 32  # T5 bucketed relative bias (positions='relative')
  relative_max_distance: int = 128
  attention_window: Optional[int] = None  # sliding window: a query sees its last N keys
  sparse_block_size: Optional[int] = None  # block-sparse: own block + summary + global keys
  sparse_summary_tokens: int = 1  # the last N keys of every earlier block (strided pattern)
  sparse_global_tokens: int = 0  # the first N keys of the sequence are seen by every query
  attn_logit_softcap: Optional[float] = None  # scores -> cap * tanh(scores / cap) (Gemma 2)
  dropout_rate: float = 0.0  # embeddings and residual branches
  attention_dropout_rate: float = 0.0  # attention probabilities (jnp backend)
  tie_embeddings: bool = True
  init_std: float = 0.02
  scaled_residual_init: bool = True  # output projections at init_std / sqrt(2 num_layers)
  dtype: str = "float32"  # compute dtype of activations and matmuls
  param_dtype: str = "float32"
  scan_layers: bool = False  # one compiled layer applied num_layers times (fast compiles)
  remat: str = "none"  # none | full | save_dots
  attention_backend: str = "jnp"  # jnp (reference) | xla (jax.nn.dot_product_attention)

  def __post_init__(self):
    sizes = ("vocab_size", "vocab_pad_multiple", "d_model", "num_layers", "num_heads",
             "num_kv_heads", "head_dim", "mlp_dim", "max_len")
    for name in sizes:  # first: the checks below divide by some of these
      value = getattr(self, name)
      if value is not None and not (isinstance(value, int) and value > 0):
        raise ConfigError(f"ModelConfig: {name} must be a positive integer, got {value!r}")
    checks = [
        (self.num_heads % self.kv_heads == 0,
         f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.kv_heads}"),
        (self.activation in ("gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu"),
         f"unknown activation {self.activation!r}"),
        (self.norm in ("layernorm", "rmsnorm"), f"unknown norm {self.norm!r}"),
        (self.positions in _POSITIONS, f"unknown positions {self.positions!r}"),
        (self.norm_position in ("pre", "post"), f"unknown norm_position {self.norm_position!r}"),
        (self.block in ("sequential", "parallel"), f"unknown block {self.block!r}"),
        (self.block == "sequential" or self.norm_position == "pre", "a parallel block is pre-norm"),
        (self.rope_layout in ("half", "interleaved"), f"unknown rope_layout {self.rope_layout!r}"),
        (self.rope_scaling in ("none", "llama3"), f"unknown rope_scaling {self.rope_scaling!r}"),
        (0 < self.rotary_dims <= self.dim_per_head and self.rotary_dims % 2 == 0,
         f"rotary_dim={self.rotary_dim} must be even and at most head_dim={self.dim_per_head}"),
        (self.attention_window is None or self.attention_window > 0,
         "attention_window must be > 0"),
        (self.sparse_block_size is None
         or 0 <= self.sparse_summary_tokens <= self.sparse_block_size,
         "sparse_summary_tokens must be in [0, sparse_block_size]"),
        (self.attention_backend == "jnp" or not (self.attn_logit_softcap
                                                 or self.attention_dropout_rate),
         "attn_logit_softcap and attention_dropout_rate need attention_backend='jnp'"),
        (self.remat in ("none", "full", "save_dots"), f"unknown remat {self.remat!r}"),
        (self.attention_backend in ("jnp", "xla"),
         f"unknown attention_backend {self.attention_backend!r}"),
        (self.dtype in _DTYPES and self.param_dtype in _DTYPES, "dtypes: float32|bfloat16|float16"),
    ]
    for ok, message in checks:
      if not ok:
        raise ConfigError(f"ModelConfig: {message}")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def padded_vocab_size(self) -> int:
    """Rows of the embedding and unembedding tables: vocab_size rounded up to vocab_pad_multiple."""
    return -(-self.vocab_size // self.vocab_pad_multiple) * self.vocab_pad_multiple

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def rotary_dims(self) -> int:
    return self.rotary_dim or self.dim_per_head

  @property
  def residual_init_std(self) -> float:
    """Init std of the projections back into the residual stream (GPT-2's 1/sqrt(2L))."""
    scale = (2 * self.num_layers) ** -0.5 if self.scaled_residual_init else 1.0
    return self.init_std * scale

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
  norm_width = 2 if cfg.norm == "layernorm" and cfg.use_bias else 1
  attn = d * (h + 2 * kv) * hd + h * hd * d
  attn += 2 * hd * norm_width if cfg.qk_norm else 0
  attn += cfg.relative_buckets * h if cfg.positions == "relative" else 0
  mlp = d * cfg.mlp_dim * (3 if cfg.gated else 2)
  if cfg.use_bias:
    attn += (h + 2 * kv) * hd + d
    mlp += cfg.mlp_dim * (2 if cfg.gated else 1) + d
  total = cfg.num_layers * (attn + mlp + 2 * d * norm_width)
  total += d * norm_width if cfg.norm_position == "pre" else 0  # the final norm
  if include_embedding:
    total += cfg.padded_vocab_size * d * (1 if cfg.tie_embeddings else 2)
    total += cfg.max_len * d if cfg.positions == "learned" else 0
  return total


def attended_keys(cfg: ModelConfig, seq_len: int) -> float:
  """Average number of keys a query attends to, with MaxText's convention (causal = L / 2)."""
  keys = seq_len / 2
  if cfg.attention_window is not None and cfg.attention_window < seq_len:
    w = cfg.attention_window
    keys = min(keys, w * (1 - w / (2 * seq_len)))
  if cfg.sparse_block_size is not None:
    b = cfg.sparse_block_size
    sparse = b / 2 + cfg.sparse_summary_tokens * max(seq_len / b - 1, 0) / 2
    keys = min(keys, sparse + cfg.sparse_global_tokens)
  return keys


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward = 3x forward), MaxText's formula.

  Counts the matmuls of every layer and the output projection; attention scores and values
  count the keys a query really attends to (`attended_keys`: half of seq_len when causal).
  """
  d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  mlp = 2 * d * cfg.mlp_dim * (3 if cfg.gated else 2)
  qkv_out = 2 * d * (h + 2 * kv) * hd + 2 * h * hd * d
  attention = 4 * attended_keys(cfg, seq_len) * h * hd
  logits = 2 * d * cfg.padded_vocab_size  # padded rows are multiplied too
  return 3 * (cfg.num_layers * (mlp + qkv_out + attention) + logits)

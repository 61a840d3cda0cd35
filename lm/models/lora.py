"""LoRA (Hu et al., 2021) as a pure transform of the params: W' = W + (alpha / rank) * A @ B.

The model is unchanged. A LoRA run trains a tree of adapters, one (A, B) pair per chosen
kernel, and its forward pass runs the ordinary Transformer on `merge(frozen_base, adapters)`.
Kernels are chosen by name (TARGETS) and keep this codebase's x @ W layout: a kernel of shape
X + I + O (X: the stacked `layers` axis of scan_layers, if any; I: contracted input dims; O:
output dims) gets A of shape X + I + (rank,) and B of shape X + (rank,) + O, whose logical
axis names are the kernel's (plus an unsharded `lora_rank`), so adapters shard like their base.
A starts normal with std 1/sqrt(prod(I)), B at zero: a new run starts exactly at the base.

Dropout (`LoraConfig.dropout`): the original applies dropout to the input x of the low-rank
path, per token. A weight-space transform cannot: here dropout zeroes input features of A
(rows of the flattened [prod(I), rank] matrix, scaled by 1/(1-p)), one mask per kernel, per
layer and per step, shared by every token of the batch. It regularizes the same path more
coarsely; 0 (the default) is exact LoRA.

A base written by lm-prune keeps its sparsity: `merge` leaves the update at zero where W is zero
in the kernels it is given (`pruned`), so W' is zero exactly where W is. Training with a frozen
base and adapters is lm.finetuning.lora's; a LoRA run directory is read by lm.model_dir.
"""
import dataclasses
import math

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
from flax import traverse_util

from lm.errors import UserError
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer

RANK_AXIS = "lora_rank"  # no sharding rule names it: replicated
# Target name -> the (module, kernel owner) pairs of lm.models it adapts, and how many leading
# (after `layers`) kernel dims are contracted inputs.
TARGETS = {
    "query": ((("attn", "query"), 1),),
    "key": ((("attn", "key"), 1),),
    "value": ((("attn", "value"), 1),),
    "out": ((("attn", "out"), 2),),  # [heads, head_dim, embed]
    "mlp_in": ((("mlp", "wi"), 1), (("mlp", "wi_gate"), 1)),
    "mlp_out": ((("mlp", "wo"), 1),),
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank r, alpha (the update is scaled by alpha / r), dropout (see the module doc), targets
  (names of TARGETS), base_dtype ('bfloat16' holds the frozen base in bf16; None: as stored)."""
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = ("query", "key", "value", "out", "mlp_in", "mlp_out")
  base_dtype: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))  # gin gives lists
    unknown = sorted(set(self.targets) - set(TARGETS))
    if unknown or not self.targets:
      raise UserError(f"LoraConfig.targets: unknown {unknown or 'empty'}; choose from "
                      f"{', '.join(TARGETS)}")
    if self.rank < 1:
      raise UserError(f"LoraConfig.rank must be >= 1, got {self.rank}")
    if not 0 <= self.dropout < 1:
      raise UserError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout}")
    if self.base_dtype not in (None, "float32", "bfloat16", "float16"):
      raise UserError(f"LoraConfig.base_dtype: float32|bfloat16|float16 or None, got "
                      f"{self.base_dtype!r}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def kernels(self) -> dict[tuple[str, str], int]:
    """(module, kernel owner) -> number of contracted input dims, for every adapted kernel."""
    return {owner: n_in for t in self.targets for owner, n_in in TARGETS[t]}


class Adapters:
  """The adapter tree of a model, with the interface lm.sharding.param_shardings expects of a model:
  init(rng, tokens_BL) -> {"params": adapters boxed with logical axis names}."""

  def __init__(self, model_cfg: ModelConfig, lora: LoraConfig):
    self.model_cfg, self.lora = model_cfg, lora

  def init(self, rng, tokens_BL):
    base = jax.eval_shape(Transformer(self.model_cfg).init, jax.random.PRNGKey(0), tokens_BL)
    flat = traverse_util.flatten_dict(base["params"])
    kernels = self.lora.kernels()
    adapters = {}
    for i, (path, box) in enumerate(sorted(flat.items())):
      if path[-1] != "kernel" or path[-3:-1] not in kernels:
        continue
      stack = 1 if box.names[0] == "layers" else 0
      split = stack + kernels[path[-3:-1]]
      shape, names, r = box.value.shape, box.names, self.lora.rank
      fan_in = math.prod(shape[stack:split])
      a = jax.random.normal(jax.random.fold_in(rng, i), shape[:split] + (r,)) / fan_in ** 0.5
      b = jnp.zeros(shape[:stack] + (r,) + shape[split:])
      adapters[path[:-1] + ("lora_a",)] = nn.LogicallyPartitioned(a, names[:split] + (RANK_AXIS,))
      adapters[path[:-1] + ("lora_b",)] = nn.LogicallyPartitioned(
          b, names[:stack] + (RANK_AXIS,) + names[split:])
    if not adapters:
      raise UserError(f"LoraConfig.targets {self.lora.targets} match no kernel of this model")
    return {"params": traverse_util.unflatten_dict(adapters)}


def merge(base, adapters, lora: LoraConfig, rng=None, dtype=None, pruned=()):
  """`base` with every adapted kernel W replaced by W + (alpha / r) * A @ B (in float32, or
  `dtype`). rng: draws the dropout masks (see the module doc); None: no dropout. pruned: the
  kernel paths (tuples of keys) of an lm-prune base, whose zeros the update leaves at zero."""
  flat, flat_adapters = traverse_util.flatten_dict(base), traverse_util.flatten_dict(adapters)
  kernels = lora.kernels()
  for i, (path, a) in enumerate(sorted(flat_adapters.items())):
    if path[-1] != "lora_a":
      continue
    owner = path[:-1]
    b, w = flat_adapters[owner + ("lora_b",)], flat[owner + ("kernel",)]
    split = a.ndim - 1  # stacked + input dims
    stack = split - kernels[owner[-2:]]
    a_XIR = a.astype(jnp.float32).reshape(a.shape[:stack] + (-1, lora.rank))
    if rng is not None and lora.dropout:
      keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1 - lora.dropout,
                                  a_XIR.shape[:-1] + (1,))
      a_XIR = jnp.where(keep, a_XIR / (1 - lora.dropout), 0)
    b_XRO = b.astype(jnp.float32).reshape(b.shape[:stack] + (lora.rank, -1))
    delta = jnp.matmul(a_XIR, b_XRO).reshape(w.shape) * lora.scale
    if owner + ("kernel",) in pruned:
      delta = jnp.where(w == 0, 0.0, delta)
    flat[owner + ("kernel",)] = (w.astype(jnp.float32) + delta).astype(dtype or jnp.float32)
  return traverse_util.unflatten_dict(flat)

"""LoRA (Hu et al., 2021) as a pure transform of the params: W' = W + (alpha / rank) * A @ B.

The model is unchanged. A LoRA run trains a tree of adapters, one (A, B) pair per chosen
kernel, and its forward pass runs the ordinary Transformer on `merge(frozen_base, adapters)`.
Kernels are chosen by name (TARGETS) and keep this codebase's x @ W layout: a kernel of shape
S + I + O (S: the stacked `layers` axis of scan_layers, if any; I: contracted input dims; O:
output dims) gets A of shape S + I + (rank,) and B of shape S + (rank,) + O, whose logical
axis names are the kernel's (plus an unsharded `lora_rank`), so adapters shard like their base.
A starts normal with std 1/sqrt(prod(I)), B at zero: a new run starts exactly at the base.

Dropout (`LoraConfig.dropout`): the original applies dropout to the input x of the low-rank
path, per token. A weight-space transform cannot: here dropout zeroes input features of A
(rows of the flattened [prod(I), rank] matrix, scaled by 1/(1-p)), one mask per kernel, per
layer and per step, shared by every token of the batch. It regularizes the same path more
coarsely; 0 (the default) is exact LoRA.

Only the adapters reach the optimizer, so its state is 2x (AdamW) the adapters' size. The
frozen base can be held in bfloat16 (`base_dtype`); the merged kernels are float32 whatever
the base's dtype (a bf16 W + a small delta would round the delta away). A LoRA run directory
holds the adapters' checkpoints and lora.json: the config, the base directory and the base
step it was trained on, the trainable parameter count and optimizer-state bytes.
`restore_params` (what lm.load uses) gives the merged params of a LoRA run directory.

A base written by lm-prune keeps its sparsity: in the kernels its model.json lists, the update
is masked where W is zero (W' = W + mask * delta), in training and in every merge after it, so
W' is zero exactly where W is and the adapters get no gradient through those entries.
"""
import dataclasses
import json
import math
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
from flax import traverse_util

from lm.compression.masks import pruned_kernels
from lm.errors import UserError
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer
from lm.sharding import DEFAULT_RULES, param_shardings, with_shardings
from lm.training import checkpoints

LORA_JSON = "lora.json"
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
    a_SIR = a.astype(jnp.float32).reshape(a.shape[:stack] + (-1, lora.rank))
    if rng is not None and lora.dropout:
      keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1 - lora.dropout,
                                  a_SIR.shape[:-1] + (1,))
      a_SIR = jnp.where(keep, a_SIR / (1 - lora.dropout), 0)
    b_SRO = b.astype(jnp.float32).reshape(b.shape[:stack] + (lora.rank, -1))
    delta = jnp.matmul(a_SIR, b_SRO).reshape(w.shape) * lora.scale
    if owner + ("kernel",) in pruned:
      delta = jnp.where(w == 0, 0.0, delta)
    flat[owner + ("kernel",)] = (w.astype(jnp.float32) + delta).astype(dtype or jnp.float32)
  return traverse_util.unflatten_dict(flat)


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def state_sizes(params, opt_state) -> dict:
  """What an optimizer trains: parameter count and the bytes of its state (shapes suffice)."""
  return {"trainable_params": sum(x.size for x in jax.tree.leaves(params)),
          "optimizer_state_bytes": tree_bytes(opt_state)}


def read_lora_json(model_dir: str) -> dict | None:
  path = os.path.join(model_dir, LORA_JSON)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


class FrozenBase:
  """The frozen params of a LoRA run in `model_dir`: init_from's latest checkpoint (on a
  resume: the base directory and step lora.json records, which must match), on the base's
  shardings, in lora.base_dtype. Every check runs here, before the run writes anything."""

  def __init__(self, model_dir: str, model: Transformer, lora: LoraConfig,
               init_from: str | None, mesh, seq_len: int, rules=DEFAULT_RULES):
    if not init_from:
      raise UserError("a LoRA run (train.lora) needs train.init_from: the base model directory")
    self.lora, self.base_dir = lora, os.path.abspath(os.path.expanduser(init_from))
    saved = read_lora_json(model_dir)
    if saved is None:
      self.base_step = checkpoints.latest_step(os.path.join(self.base_dir, "checkpoints"))
      if self.base_step is None:
        raise UserError(f"cannot initialize from {init_from}: no complete checkpoint")
    else:
      diffs = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in self._description().items()
               if saved.get(k) != v]
      if diffs:
        raise UserError(f"{model_dir} is a LoRA run configured otherwise (saved -> "
                        f"configured: {'; '.join(diffs)}); use a new --model_dir")
      self.base_step = saved["base_step"]
    self.pruned = frozenset(pruned_kernels(self.base_dir))
    abstract, self.shardings = param_shardings(model, mesh, seq_len, rules)
    try:
      params = restore_params(self.base_dir, self.base_step,
                              with_shardings(abstract, self.shardings))
    except (FileNotFoundError, ValueError, KeyError) as e:
      raise UserError(f"cannot initialize from {init_from}: {e}") from None
    if lora.base_dtype:
      cast = lambda t: jax.tree.map(lambda x: x.astype(lora.base_dtype), t)
      params = jax.jit(cast, out_shardings=self.shardings)(params)
    self.params = params
    self.dtype = model.cfg.weight_dtype

  def _description(self) -> dict:
    return {"base": self.base_dir, **dataclasses.asdict(self.lora),
            "targets": list(self.lora.targets)}

  def bind(self, step_fn):
    """step_fn(x, batch, *, model, ...) -> fn(x, batch, frozen, *, model, ...) that runs the
    model on merge(frozen, adapters); the loop passes self.params as `frozen` (an argument of
    the jitted step, never a constant baked into it)."""
    def fn(x, batch, frozen, *, model, **kwargs):
      return step_fn(x, batch, model=_MergedModel(model, self.lora, frozen, self.pruned),
                     **kwargs)
    return fn

  def merged(self, adapters):
    """The model's params after training, in the model's weight dtype."""
    return jax.jit(lambda f, a: merge(f, a, self.lora, dtype=self.dtype, pruned=self.pruned),
                   out_shardings=self.shardings)(self.params, adapters)

  def write_json(self, model_dir: str, state) -> dict:
    """Writes lora.json (process 0) and prints the trainable-parameter count and
    optimizer-state bytes; returns those sizes."""
    sizes = state_sizes(state.params, state.opt_state)
    if jax.process_index() == 0:
      with open(os.path.join(model_dir, LORA_JSON), "w") as f:
        json.dump({**self._description(), "base_step": self.base_step, **sizes}, f, indent=1)
      print(f"LoRA: {sizes['trainable_params']:,} trainable parameters, optimizer state "
            f"{sizes['optimizer_state_bytes']:,} bytes", flush=True)
    return sizes


def restore_params(model_dir: str, step: int | None = None, abstract_params=None):
  """The params of a model directory (checkpoint `step`, default the latest) onto
  `abstract_params` (ShapeDtypeStructs with shardings); a LoRA run's are its base's merged with
  its adapters, in the model's dtype. FileNotFoundError without a complete checkpoint."""
  model_dir = os.path.abspath(model_dir)
  saved = read_lora_json(model_dir)
  ckpt_dir = os.path.join(model_dir, "checkpoints")
  if saved is None:
    return checkpoints.restore_params(ckpt_dir, step, abstract_params)
  lora = LoraConfig(**{f.name: saved[f.name] for f in dataclasses.fields(LoraConfig)})
  base = restore_params(saved["base"], saved["base_step"], abstract_params)
  with open(os.path.join(model_dir, "model.json")) as f:
    model_cfg = ModelConfig(**json.load(f)["model"])
  pruned = frozenset(pruned_kernels(saved["base"]))
  merge_fn = lambda p, a: merge(p, a, lora, dtype=model_cfg.weight_dtype, pruned=pruned)
  if abstract_params is None:
    return jax.jit(merge_fn)(base, checkpoints.restore_params(ckpt_dir, step))
  shardings = jax.tree.map(lambda x: x.sharding, abstract_params)
  mesh = jax.tree.leaves(shardings)[0].mesh
  abstract, adapter_shardings = param_shardings(Adapters(model_cfg, lora), mesh, seq_len=1)
  adapters = checkpoints.restore_params(ckpt_dir, step, with_shardings(abstract,
                                                                       adapter_shardings))
  return jax.jit(merge_fn, out_shardings=shardings)(base, adapters)


class _MergedModel:
  """Stands in for the model inside a jitted step: apply() runs it on merge(frozen, params),
  so lm.training.step differentiates the adapters without knowing about LoRA."""

  def __init__(self, model, lora: LoraConfig, frozen, pruned=()):
    self.model, self.lora, self.frozen, self.pruned = model, lora, frozen, pruned

  def apply(self, variables, *args, rngs=None, **kwargs):
    rng = None if rngs is None else jax.random.fold_in(rngs["dropout"], 0x10A)  # own stream
    params = merge(self.frozen, variables["params"], self.lora, rng, pruned=self.pruned)
    return self.model.apply({"params": params}, *args, rngs=rngs, **kwargs)

"""Training LoRA adapters (lm.models.lora: the config, targets and merge) on a frozen base.

A LoRA run trains a tree of adapters; its forward pass runs the ordinary Transformer on
`merge(frozen_base, adapters)`. Only the adapters reach the optimizer, so its state is 2x
(AdamW) the adapters' size. The frozen base can be held in bfloat16 (`base_dtype`); the merged
kernels are float32 whatever the base's dtype (a bf16 W + a small delta would round the delta
away). A LoRA run directory holds the adapters' checkpoints and lora.json: the config, the base
directory and the base step it was trained on, the trainable parameter count and
optimizer-state bytes; lm.model_dir.restore_params (what lm.load uses) gives its merged params.

A base written by lm-prune keeps its sparsity: in the kernels its model.json lists, the update
is masked where W is zero (W' = W + mask * delta), in training and in every merge after it, so
W' is zero exactly where W is and the adapters get no gradient through those entries.
"""
import dataclasses
import json
import os

import gin
import jax

from lm.errors import UserError
from lm.model_dir import (CHECKPOINTS, LORA_JSON, latest_step, pruned_kernels, read_lora_json,
                          restore_params)
from lm.models.lora import Adapters, LoraConfig, merge
from lm.models.transformer import Transformer
from lm.sharding import DEFAULT_RULES, param_shardings, with_shardings


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def state_sizes(params, opt_state) -> dict:
  """What an optimizer trains: parameter count and the bytes of its state (shapes suffice)."""
  return {"trainable_params": sum(x.size for x in jax.tree.leaves(params)),
          "optimizer_state_bytes": tree_bytes(opt_state)}


class FrozenBase:
  """The frozen params of a LoRA run in `model_dir`: init_from's latest checkpoint (on a
  resume: the base directory and step lora.json records, which must match), on the base's
  shardings, in lora.base_dtype. Every check runs here, before the run writes anything."""

  def __init__(self, model_dir: str, model: Transformer, lora: LoraConfig,
               init_from: str | None, mesh, seq_len: int, rules=DEFAULT_RULES):
    if not init_from:
      raise UserError("a LoRA run (train.trainable = @LoraParams()) needs train.init_from: "
                      "the base model directory")
    self.lora, self.base_dir = lora, os.path.abspath(os.path.expanduser(init_from))
    saved = read_lora_json(model_dir)
    if saved is None:
      self.base_step = latest_step(os.path.join(self.base_dir, CHECKPOINTS))
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


@gin.configurable
class LoraParams:
  """lm-train's trainable-params strategy for LoRA (`train.trainable = @LoraParams()`, see
  lm/training/trainable.py): the optimizer trains the adapters of `lora` (default: LoraConfig()
  with its gin bindings), the steps run the model on their merge with init_from's frozen params
  (FrozenBase), the run directory gets lora.json and the result is the merged params."""

  def __init__(self, lora: LoraConfig | None = None):
    self.lora = LoraConfig() if lora is None else lora
    self.base = None

  def module(self, model):
    return Adapters(model.cfg, self.lora)

  def setup(self, model_dir, model, init_from, mesh, seq_len, rules):
    self.base = FrozenBase(model_dir, model, self.lora, init_from, mesh, seq_len, rules)
    self.frozen, self.frozen_shardings = (self.base.params,), (self.base.shardings,)

  def initial_params(self, params, shardings):
    del shardings
    return params  # B = 0: a new run starts exactly at the base

  def bind(self, step_fn):
    return self.base.bind(step_fn)

  def start_run(self, model_dir, state):
    self.base.write_json(model_dir, state)

  def merged(self, params):
    return self.base.merged(params)


class _MergedModel:
  """Stands in for the model inside a jitted step: apply() runs it on merge(frozen, params),
  so lm.training.step differentiates the adapters without knowing about LoRA."""

  def __init__(self, model, lora: LoraConfig, frozen, pruned=()):
    self.model, self.lora, self.frozen, self.pruned = model, lora, frozen, pruned

  def apply(self, variables, *args, rngs=None, **kwargs):
    rng = None if rngs is None else jax.random.fold_in(rngs["dropout"], 0x10A)  # own stream
    params = merge(self.frozen, variables["params"], self.lora, rng, pruned=self.pruned)
    return self.model.apply({"params": params}, *args, rngs=rngs, **kwargs)

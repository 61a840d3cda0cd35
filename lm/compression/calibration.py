"""Calibration text for Wanda and GPTQ: token windows, and input statistics of every matrix.

Sources use lm-eval's perplexity-task syntax:
  ppl:<file or glob>       text files (one document each) or .jsonl/.jsonl.gz ("text" field),
                           tokenized with the model directory's tokenizer (no TensorFlow);
  seqio:<task>[:<split>]   a registered SeqIO task's split (default "train"), in the task's own
                           vocabulary (imports lm.data, hence TensorFlow, only here).
Documents are joined (each after the prefix token) into one stream, from which `rows` windows
of `length` tokens are taken at evenly spaced offsets: no padding, every token counts.
"""
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lm.errors import UserError
from lm.models.layers import DenseGeneral, Embed
from lm.models.scanned import stack_layers, unstack_layers
from lm.models.transformer import Transformer


def calibration_tokens(model, source: str, rows: int, length: int | None = None) -> np.ndarray:
  """int32 [rows, length] windows of the source's tokens (see the module docstring); length
  defaults to 256 and is at most the model's max_len."""
  length = min(length or 256, model.config.max_len)
  kind, _, arg = source.partition(":")
  if kind == "ppl":
    from lm.evaluation.perplexity import read_documents
    docs_ids = [model.encode(t) for t in read_documents(arg)]
  elif kind == "seqio":
    from lm.data import documents  # TensorFlow only on this path
    name, _, split = arg.partition(":")
    docs_ids = documents.documents(name, split or "train")[1]
  else:
    raise UserError(f"--calibration_task {source!r}: expected ppl:<file or glob> or "
                    "seqio:<task>[:<split>]")
  prefix = [] if model.prefix_id is None else [model.prefix_id]
  stream = np.asarray([t for ids in docs_ids for t in prefix + list(ids)], np.int32)
  if len(stream) < length:
    raise UserError(f"--calibration_task {source!r} holds {len(stream)} tokens, fewer than "
                    f"one window of {length}")
  starts = np.linspace(0, len(stream) - length, rows).astype(np.int64)
  return np.stack([stream[s:s + length] for s in starts])


def _unscanned(cfg, params):
  """(cfg, params) with scanned layers unstacked into layer_0..layer_{L-1}."""
  if not cfg.scan_layers:
    return cfg, params
  return dataclasses.replace(cfg, scan_layers=False), unstack_layers(params, cfg.num_layers)


def _stat(x_NI, gram: bool):
  return x_NI.T @ x_NI if gram else jnp.sum(jnp.square(x_NI), axis=0)


@functools.partial(jax.jit, static_argnames=("cfg", "gram"))
def _batch_stats(cfg, params, tokens_BL, gram: bool):
  """{kernel path: sum over the batch's tokens of x_i^2 (gram: x x^T, [I, I])} for the input x
  of every DenseGeneral and of the tied output projection (Embed.attend)."""
  sums = {}

  def record(next_fun, args, kwargs, context):
    module, method = context.module, context.method_name
    if isinstance(module, DenseGeneral) and method == "__call__":
      path, size = tuple(module.path) + ("kernel",), math.prod(module.in_shape)
    elif isinstance(module, Embed) and method == "attend":
      path, size = tuple(module.path) + ("embedding",), args[0].shape[-1]
    else:
      return next_fun(*args, **kwargs)
    x_NI = args[0].reshape(-1, size).astype(jnp.float32)
    sums[path] = sums.get(path, 0.0) + _stat(x_NI, gram)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    Transformer(cfg).apply({"params": params}, tokens_BL)
  return sums


def input_stats(cfg, params, tokens_RL: np.ndarray, gram: bool = False,
                batch_rows: int = 8) -> dict:
  """{kernel path: [(layers,) I] sum of squared inputs over all calibration tokens (Wanda), or
  with gram=True [(layers,) I, I] sum of x x^T (GPTQ's Hessian, up to a factor of 2)}."""
  ucfg, uparams = _unscanned(cfg, params)
  total = None
  for start in range(0, len(tokens_RL), batch_rows):
    sums = _batch_stats(ucfg, uparams, jnp.asarray(tokens_RL[start:start + batch_rows]), gram)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  out = {path: np.asarray(value) for path, value in total.items()}
  if cfg.scan_layers:  # restack layer_i/... as layers/... [L, ...]
    per_layer = traverse_util.unflatten_dict({p: v for p, v in out.items()
                                              if p[0].startswith("layer_")})
    out.update(traverse_util.flatten_dict(
        {"layers": stack_layers(per_layer, cfg.num_layers)["layers"]}))
  return out

"""The notebook API: `lm.load(model_dir)` -> a model that generates, beam-searches and scores.

  model = lm.load("/tmp/lm/run")                  # or mesh_shape=(1, 1, 8)
  model.generate(["ROMEO:"], max_new_tokens=64)   # str prompts -> str outputs (new text only)
  model.score(["The cat"], [" sat"])              # (log-probabilities [N], is_greedy [N])

Params are restored onto a (data, fsdp, tensor) mesh with the shardings training uses (heads
over tensor, embed over fsdp); batches are split over the data axes.
"""
import contextlib
import dataclasses
import functools
import json
import math
import os
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lm.decoding import score as scoring
from lm.errors import UserError
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer
from lm.tokenizers import load_tokenizer
from lm.sharding import (BATCH_AXES, DEFAULT_RULES, check_divisible, data_parallel_size,
                         make_mesh, use_mesh)
from lm.training import checkpoints
from lm.training.state import param_shardings, with_shardings


@dataclasses.dataclass
class LoadedModel:
  """A model's config, params (on `mesh`) and tokenizer (None: token ids only)."""
  config: ModelConfig
  params: dict
  task: str | None = None
  tokenizer: object | None = None
  mesh: jax.sharding.Mesh | None = None

  def __post_init__(self):
    self.module = Transformer(self.config)
    if self.mesh is None:
      self.mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    self._logits = jax.jit(lambda params, tokens: self.module.apply({"params": params}, tokens))
    self._target_logprobs = jax.jit(functools.partial(scoring.target_logprobs, self.module))

  # -- plumbing ---------------------------------------------------------------------------
  def _context(self):
    """Activation constraints resolve against this model's mesh inside the context."""
    stack = contextlib.ExitStack()
    stack.enter_context(use_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(DEFAULT_RULES))
    return stack

  @property
  def data_parallel_size(self) -> int:
    return data_parallel_size(self.mesh)

  def _put_batch(self, x_B):
    """Host rows -> a device array split over the data axes (rows: a multiple of dp)."""
    return jax.device_put(np.asarray(x_B), NamedSharding(self.mesh, P(BATCH_AXES)))

  def _pad_rows(self, x_B):
    pad = -len(x_B) % self.data_parallel_size
    return np.concatenate([x_B, np.repeat(x_B[-1:], pad, axis=0)]) if pad else x_B

  def _encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    if self.tokenizer is None:
      raise UserError("this model directory has no tokenizer: pass token ids, not text")
    return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

  @property
  def prefix_id(self) -> int | None:
    """The token an empty scoring context becomes: BOS, else EOS (lm-evaluation-harness)."""
    if self.tokenizer is None:
      return None
    return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id

  def sample(self, prompt_tokens, num_steps: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0) -> np.ndarray:
    """Continues each row of `prompt_tokens` [batch, length] by num_steps sampled tokens."""
    from lm.sampling import generate
    prompt = np.asarray(prompt_tokens, np.int32)
    window = self.config.max_len if self.config.positions == "learned" else 1024
    return np.asarray(generate(self.module, self.params, prompt, jax.random.PRNGKey(seed),
                               num_steps=num_steps, temperature=temperature, top_k=top_k,
                               window=min(window, prompt.shape[1] + num_steps)))

  # -- forward and scoring ----------------------------------------------------------------
  def logits(self, tokens) -> jax.Array:
    """int tokens [batch, length] -> float32 logits [batch, length, vocab]."""
    tokens_BL = np.asarray(tokens, np.int32)
    with self._context():
      logits_BLV = self._logits(self.params, self._put_batch(self._pad_rows(tokens_BL)))
    return logits_BLV[:len(tokens_BL)]

  def _score_requests(self, requests, batch_tokens: int):
    def logprob_fn(inputs_BL, targets_BL):
      with self._context():
        return self._target_logprobs(self.params, self._put_batch(inputs_BL),
                                     self._put_batch(targets_BL))
    return scoring.score_requests(logprob_fn, requests, self.config.max_len,
                                  batch_tokens=batch_tokens,
                                  row_multiple=self.data_parallel_size)

  def score(self, contexts: Sequence, continuations: Sequence, batch_tokens: int = 4096):
    """(log p(continuation | context) [N], is_greedy [N]) as numpy arrays.

    Strings are tokenized jointly and split at the context's token count; an empty context
    becomes the BOS token (EOS when there is no BOS); context + continuation is cut on the
    left to max_len + 1 tokens (lm-evaluation-harness' `loglikelihood`). Token lists are used
    as given (an empty token context also becomes the prefix token).
    """
    if len(contexts) != len(continuations):
      raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    requests = []
    for context, continuation in zip(contexts, continuations):
      if isinstance(context, str) != isinstance(continuation, str):
        raise ValueError("a context and its continuation must both be text or both tokens")
      if isinstance(context, str):
        request = scoring.encode_pair(self._encode, context, continuation, self._prefix())
      else:
        request = (list(context) or [self._prefix()], list(continuation))
      requests.append(request)
    return self._score_requests(requests, batch_tokens)

  def score_rolling(self, texts: Sequence, context_len: int = 1,
                    batch_tokens: int = 4096) -> np.ndarray:
    """Total log-likelihood [N] of whole texts (str or token lists) of any length.

    The text is preceded by the prefix token and cut into windows of max_len tokens whose
    scored parts cover it exactly once (lm-evaluation-harness' `loglikelihood_rolling`):
    context_len=1 gives disjoint windows; context_len=c gives strided windows in which every
    scored token after the first window sees at least c - 1 earlier tokens.
    """
    requests, owner = [], []
    for i, text in enumerate(texts):
      ids = self._encode(text) if isinstance(text, str) else list(text)
      windows = scoring.rolling_windows(ids, self._prefix(), self.config.max_len, context_len)
      requests += windows
      owner += [i] * len(windows)
    logprobs, _ = self._score_requests(requests, batch_tokens)
    return np.bincount(np.asarray(owner, np.int64), weights=logprobs, minlength=len(texts))

  def _prefix(self) -> int:
    if self.prefix_id is None:
      raise UserError("an empty context needs a BOS or EOS token, and this model has no "
                      "tokenizer: give a non-empty token context")
    return self.prefix_id


def _resolve_mesh(mesh_shape) -> jax.sharding.Mesh:
  """A mesh over the first devices; None means one device."""
  if mesh_shape is None:
    return make_mesh((1, 1, 1), devices=jax.devices()[:1])
  shape = tuple(mesh_shape)
  n = len(jax.devices()) if -1 in shape else math.prod(shape)
  if n > len(jax.devices()):
    raise UserError(f"mesh_shape {shape} needs {n} devices; there are {len(jax.devices())}")
  return make_mesh(shape, devices=jax.devices()[:n])


def load(model_dir: str, step: int | None = None, mesh_shape=None) -> LoadedModel:
  """Loads the params of the latest (or given) checkpoint of a model directory onto a mesh.

  model_dir: written by lm-train or lm-convert (relative paths are fine). mesh_shape:
  (data, fsdp, tensor), default one device; params are sharded as in training.
  """
  model_dir = os.path.abspath(os.path.expanduser(model_dir))  # Orbax wants absolute paths
  path = os.path.join(model_dir, "model.json")
  if not os.path.exists(path):
    raise UserError(f"{model_dir} is not an lm model directory (no model.json)")
  with open(path) as f:
    saved = json.load(f)
  config = ModelConfig(**saved["model"])
  mesh = _resolve_mesh(mesh_shape)
  check_divisible(mesh, data_parallel_size(mesh), config.num_heads, config.kv_heads)
  abstract, shardings = param_shardings(Transformer(config), mesh, seq_len=1)
  try:
    params = checkpoints.restore_params(os.path.join(model_dir, "checkpoints"), step,
                                        with_shardings(abstract, shardings))
  except FileNotFoundError as e:
    raise UserError(str(e)) from None
  return LoadedModel(config=config, params=params, task=saved.get("task"),
                     tokenizer=load_tokenizer(model_dir), mesh=mesh)



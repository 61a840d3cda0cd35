"""The notebook API: `lm.load(model_dir)` -> a model that generates, beam-searches and scores.

  model = lm.load("/tmp/lm/run")                  # or mesh_shape=(1, 1, 8)
  model.generate(["ROMEO:"], max_new_tokens=64)   # str prompts -> str outputs (new text only)
  model.score(["The cat"], [" sat"])              # (log-probabilities [N], is_greedy [N])
  model.score_choices([[("2+2=", "4"), ("2+2=", "5")]])  # per item: (lls, is_greedy)

Params are restored onto a (data, fsdp, tensor) mesh with the shardings training uses (heads
over tensor, embed over fsdp); batches are split over the data axes.
"""
import contextlib
import dataclasses
import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lm import decoding
from lm.decoding import beam, stops, stream
from lm.errors import UserError
from lm.model_dir import eos_ids, load_params
from lm.models.config import ModelConfig
from lm.models.quantized import QuantizedTransformer
from lm.models.transformer import Transformer
from lm.scoring import forward, packed
from lm.tokenizers import load_tokenizer
from lm.sharding import BATCH_AXES, DEFAULT_RULES, data_parallel_size, make_mesh, use_mesh


@dataclasses.dataclass
class LoadedModel:
  """A model's config, params (on `mesh`), tokenizer (None: token ids only) and the token
  ids that end generation."""
  config: ModelConfig
  params: dict
  task: str | None = None
  tokenizer: object | None = None
  mesh: jax.sharding.Mesh | None = None
  eos_ids: tuple[int, ...] | None = None  # None: the tokenizer's EOS
  module: object | None = None  # None: Transformer(config); lm-quantize dirs bring their own

  def __post_init__(self):
    if self.module is None:
      self.module = Transformer(self.config)
    if self.mesh is None:
      self.mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    if self.eos_ids is None:
      eos = None if self.tokenizer is None else self.tokenizer.eos_id
      self.eos_ids = () if eos is None else (eos,)
    self._logits = jax.jit(lambda params, tokens: self.module.apply({"params": params}, tokens))
    self._target_logprobs = jax.jit(functools.partial(forward.target_logprobs, self.module))

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

  def _run(self, fn, *arrays_B):
    """fn(params, *arrays) on the mesh, each host array's rows (a multiple of dp) split over
    the data axes."""
    with self._context():
      return fn(self.params, *(self._put_batch(x_B) for x_B in arrays_B))

  def _pad_rows(self, x_B):
    pad = -len(x_B) % self.data_parallel_size
    return np.concatenate([x_B, np.repeat(x_B[-1:], pad, axis=0)]) if pad else x_B

  def encode(self, text: str) -> list[int]:
    """The ids of a text, nothing added around it."""
    if self.tokenizer is None:
      raise UserError("this model directory has no tokenizer: pass token ids, not text")
    return list(self.tokenizer.encode(text, add_special_tokens=False))

  def encode_prompt(self, text: str) -> list[int]:
    """A text as the model is given it, prompt or scoring context: the tokenizer's start ids,
    then the text's ids, as the run trained (lm.tokenizers' start rule)."""
    ids = self.encode(text)
    return list(self.tokenizer.start_ids) + ids

  def encode_pair(self, context: str, continuation: str) -> forward.Request:
    """(context ids, continuation ids) of a text pair: split as lm-evaluation-harness splits
    it, the context as encode_prompt gives it (an empty one is the prefix token)."""
    context_ids, continuation_ids = forward.encode_pair(self.encode, context, continuation,
                                                        self._prefix())
    start = list(self.tokenizer.start_ids)
    return (start + context_ids if context else start or context_ids), continuation_ids

  @property
  def prefix_id(self) -> int | None:
    """The token an empty scoring context becomes (lm.tokenizers' prefix_id: the start id,
    else BOS, else EOS)."""
    return None if self.tokenizer is None else self.tokenizer.prefix_id

  # -- forward and scoring ----------------------------------------------------------------
  def _check_ids(self, ids, what: str):
    """UserError for a token id outside [0, vocab_size): its embedding lookup would be out of
    bounds, which XLA fills with NaN."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
      raise UserError(f"{what} has a token id outside [0, {self.config.vocab_size})")

  def logits(self, tokens) -> jax.Array:
    """int tokens [batch, length] -> float32 logits [batch, length, vocab].

    Ids must lie in [0, vocab_size) and, with learned positions, length <= max_len (beyond
    either the lookups are out of bounds: a UserError rather than NaN logits)."""
    tokens_BL = np.asarray(tokens)
    if self.config.positions == "learned" and tokens_BL.shape[-1] > self.config.max_len:
      raise UserError(f"{tokens_BL.shape[-1]} tokens exceed the model's {self.config.max_len} "
                      "learned positions")
    self._check_ids(tokens_BL, "tokens")
    tokens_BL = tokens_BL.astype(np.int32)
    return self._run(self._logits, self._pad_rows(tokens_BL))[:len(tokens_BL)]

  def _score_requests(self, requests, batch_tokens: int = 4096, max_len: int | None = None):
    return forward.score_requests(functools.partial(self._run, self._target_logprobs), requests,
                                  max_len or self.config.max_len, batch_tokens=batch_tokens,
                                  row_multiple=self.data_parallel_size)

  def score(self, contexts: Sequence, continuations: Sequence, batch_tokens: int = 4096):
    """(log p(continuation | context) [N], is_greedy [N]) as numpy arrays.

    Strings are tokenized jointly and split at the context's token count, and the context
    follows the tokenizer's start ids, as a text prompt in generate() and in training does; an
    empty context becomes the prefix token (the start id, else BOS, else EOS); context +
    continuation is cut on the left to max_len + 1 tokens (lm-evaluation-harness'
    `loglikelihood`); a continuation left with no tokens of its own (it merged into the
    context's last token) scores 0.0, greedy. Token lists are used as given (an empty token
    context also becomes the prefix token).
    """
    if len(contexts) != len(continuations):
      raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    requests = []
    for context, continuation in zip(contexts, continuations):
      if isinstance(context, str) != isinstance(continuation, str):
        raise ValueError("a context and its continuation must both be text or both tokens")
      if isinstance(context, str):
        request = self.encode_pair(context, continuation)
      else:
        request = (list(context) or [self._prefix()], list(continuation))
      self._check_ids(request[0] + request[1], f"request {len(requests)}")
      requests.append(request)
    return self._score_requests(requests, batch_tokens)

  def score_rolling(self, texts: Sequence, context_len: int = 1, batch_tokens: int = 4096,
                    window: int | None = None) -> np.ndarray:
    """Total log-likelihood [N] of whole texts (str or token lists) of any length.

    The text is preceded by the prefix token and cut into windows of `window` tokens (default
    max_len; more needs positions other than learned ones) whose scored parts cover it exactly
    once (lm-evaluation-harness' `loglikelihood_rolling`): context_len=1 gives disjoint
    windows; context_len=c gives strided windows in which every scored token after the first
    window sees at least c - 1 earlier tokens.
    """
    window = self.config.max_len if window is None else window
    if window > self.config.max_len and self.config.positions == "learned":
      raise UserError(f"a window of {window} tokens exceeds the model's {self.config.max_len} "
                      "learned positions")
    requests, owner = [], []
    for i, text in enumerate(texts):
      ids = self.encode(text) if isinstance(text, str) else list(text)
      self._check_ids(ids, f"text {i}")
      windows = forward.rolling_windows(ids, self._prefix(), window, context_len)
      requests += windows
      owner += [i] * len(windows)
    logprobs, _ = self._score_requests(requests, batch_tokens, window)
    return np.bincount(np.asarray(owner, np.int64), weights=logprobs, minlength=len(texts))

  def score_choices(self, items: Sequence[Sequence[tuple[str, str]]], batch_size: int = 16):
    """Per item (a list of (context, continuation) text pairs), (log-likelihoods [n_pairs],
    is_greedy [n_pairs]): score()'s values, with each shared context computed once
    (lm.scoring.packed). batch_size: packed rows of about 128 tokens per forward pass."""
    encoded = [[self.encode_pair(c, x) for c, x in item] for item in items]
    packed_fn = functools.partial(self._run, functools.partial(packed.packed_logprobs,
                                                               self.module))
    return packed.score_items(encoded, self.config.max_len, packed_fn, self._score_requests,
                              batch_size=batch_size, row_multiple=self.data_parallel_size)

  # -- generation -------------------------------------------------------------------------
  def generate(self, prompts: Sequence, max_new_tokens: int = 64, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None,
               min_p: float | None = None, num_samples: int = 1,
               stop: Sequence[str] | None = None, seed: int = 0):
    """Continues each prompt; returns, per prompt, the new tokens only.

    prompts: list[str] (-> list[str], decoded without special tokens) or list[list[int]]
    (-> list[list[int]]); num_samples > 1 gives a list of samples per prompt. Text prompts
    follow the tokenizer's start ids (an HF tokenizer's own BOS, a document-trained run's
    start.json id), as in training and scoring; a prompt may
    also be a chat, [{"role": "user", "content": "..."}, ...], rendered with the tokenizer's
    chat template with the assistant's turn opened (-> text). A row ends at
    the tokenizer's EOS (kept in token outputs), after max_new_tokens, or at the first of the
    `stop` strings (text outputs are cut before it; token outputs end with the token that
    completed it). temperature 0 is greedy; top_k / top_p / min_p filter sampling (top_k None
    or 0: no filter; top_p, min_p in [0, 1]; a bad value is a UserError). Sample j of the
    prompt at position i depends on (seed, i, j) only, not on the rest of the batch (so
    repeated prompts get different samples).
    """
    outs = None
    for outs in self.stream(prompts, max_new_tokens, temperature, top_k, top_p, min_p,
                            num_samples, stop, seed, chunk_steps=None if not stop else 16):
      pass
    return outs

  def stream(self, prompts: Sequence, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             num_samples: int = 1, stop: Sequence[str] | None = None, seed: int = 0,
             chunk_steps: int | None = 8):
    """generate() as a generator: yields the outputs so far (same structure as generate's)
    after every chunk of `chunk_steps` decode steps; the last item equals generate()'s.
    chunk_steps=None decodes in one jitted loop and yields once."""
    ids, text = self._prompt_ids(prompts)
    if stop and self.tokenizer is None:
      raise UserError("stop strings need the model's tokenizer")
    args = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                top_p=top_p, min_p=min_p, num_samples=num_samples, eos_ids=self.eos_ids,
                seed=seed)
    with self._context():
      if chunk_steps is None:
        rows = decoding.generate_ids(self.module, self.params, ids, mesh=self.mesh, **args)
        if num_samples > 1:
          rows = [r for per_prompt in rows for r in per_prompt]
        chunks = _once(rows)
      else:
        chunks = stream.stream_ids(self.module, self.params, ids, chunk_steps=chunk_steps,
                                   batch_multiple=self.data_parallel_size, **args)
      rows = next(chunks)
      while True:
        rows, done = stops.apply_stops(self.tokenizer, rows, stop)
        yield self._format(rows, text, num_samples, stop)
        try:
          rows = chunks.send(done)
        except StopIteration:
          return

  def _prompt_ids(self, prompts) -> tuple[list[list[int]], bool]:
    """(token ids per prompt, whether outputs are text). A prompt is a str (encode_prompt:
    the start ids, then its ids), a chat [{"role", "content"}, ...] (rendered by the
    tokenizer's chat template, which writes any BOS itself) or token ids."""
    kinds = {_prompt_kind(p) for p in prompts}
    if len(kinds) > 1:
      raise ValueError("prompts must be all strings / chats, or all token lists")
    if kinds != {"chat"}:
      text = kinds == {"text"}
      return ([self.encode_prompt(p) for p in prompts] if text
              else [list(p) for p in prompts]), text
    if self.tokenizer is None:
      raise UserError("chat prompts need the model's tokenizer")
    return [self.encode(self.tokenizer.apply_chat_template(p)) for p in prompts], True

  def _format(self, rows, text: bool, num_samples: int, stop=None):
    if text:
      rows = [stops.cut_at_stop(self.tokenizer.decode(r), stop) for r in rows]
    if num_samples > 1:
      rows = [rows[i:i + num_samples] for i in range(0, len(rows), num_samples)]
    return rows

  def beam_search(self, prompts: Sequence, max_new_tokens: int = 64, num_beams: int = 4,
                  length_penalty: float = 0.6):
    """Per prompt, the n-best list [(new text or tokens, score), ...], best first (T5X's
    beam search: score = log p / ((5 + length) / 6) ** length_penalty; EOS ends a beam)."""
    ids, text = self._prompt_ids(prompts)
    with self._context():
      out = beam.beam_search_ids(self.module, self.params, ids, max_new_tokens=max_new_tokens,
                                 num_beams=num_beams, length_penalty=length_penalty,
                                 eos_ids=self.eos_ids, batch_multiple=self.data_parallel_size)
    if text:
      out = [[(self.tokenizer.decode(t), s) for t, s in hyps] for hyps in out]
    return out

  def _prefix(self) -> int:
    if self.prefix_id is None:
      raise UserError("an empty context needs a BOS or EOS token, and this model has no "
                      "tokenizer: give a non-empty token context")
    return self.prefix_id


def _prompt_kind(prompt) -> str:
  if isinstance(prompt, str):
    return "text"
  prompt = list(prompt)
  return "chat" if prompt and isinstance(prompt[0], dict) else "tokens"


def _once(rows):
  yield rows


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
  mesh = _resolve_mesh(mesh_shape)
  saved, config, params = load_params(model_dir, step, mesh)
  # lm-quantize dirs: the weights stay quantized (lm.models.quantized)
  module = QuantizedTransformer(config) if saved.get("quantization") else None
  tokenizer = load_tokenizer(model_dir)
  return LoadedModel(config=config, params=params, task=saved.get("task"), tokenizer=tokenizer,
                     mesh=mesh, eos_ids=eos_ids(model_dir, tokenizer), module=module)

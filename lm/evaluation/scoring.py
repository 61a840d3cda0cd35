"""Log-likelihoods of the choices of multiple-choice items, each context computed once.

An item is a list of (context, continuation) text pairs: a question with its answers (one
context, several continuations) or Winogrande's partial scoring (several contexts, one
continuation). Pairs are tokenized exactly as `LoadedModel.score` does (lm-evaluation-harness'
`loglikelihood`), and the pairs of an item whose context tokens are equal form a group whose
context runs through the model once: a prefill writes the context into a KV cache, the
cache is repeated for the choices and every continuation runs as one multi-token decode step
against it. Only the context's last position and the continuations' positions produce
vocabulary logits. Log-likelihoods are those of one full forward pass per pair (tested against
`LoadedModel.score`). A group too long for the model (context + continuation > max_len + 1
tokens, where the harness cuts the context on the left) is scored pair by pair instead.
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.decoding import cache_length, prefill, take_rows
from lm.decoding import score as harness_scoring

Pair = tuple[str, str]
MIN_CONTEXT, MIN_CONTINUATION = 32, 8  # smallest padded lengths


def _bucket(n: int, minimum: int, cap: int | None = None) -> int:
  """A padded length: the power of two >= max(n, minimum), at most cap. Few distinct shapes
  matter more than padding: every new one is a compilation of the whole model."""
  size = 1 << (max(n, minimum) - 1).bit_length()
  return size if cap is None else max(n, min(size, cap))


@functools.partial(jax.jit, static_argnames=("module",))
def _group_logprobs(module, params, ctx_BP, ctx_len_B, cont_BCT, cont_len_BC):
  """(summed log p [B, C], all-greedy [B, C]) of continuations cont_BCT (length cont_len_BC)
  after left-padded contexts ctx_BP (length ctx_len_B); one prefill per context."""
  b, c, t = cont_BCT.shape
  logits_BV, cache = prefill(module, params, ctx_BP, ctx_len_B,
                             cache_len=cache_length(module.cfg, ctx_BP.shape[1] + t))
  logp_BV = jax.nn.log_softmax(logits_BV)
  first_BC = jnp.take_along_axis(logp_BV, cont_BCT[:, :, 0], axis=1)
  first_greedy_BC = jnp.argmax(logp_BV, axis=1)[:, None] == cont_BCT[:, :, 0]
  # Each choice continues its own copy of the context's cache: inputs are the continuation
  # without its last token, targets the continuation without its first.
  cache = take_rows(cache, jnp.repeat(jnp.arange(b), c))
  inputs_NT = cont_BCT.reshape(b * c, t)
  positions_NT = cache.next_pos_B[:, None] + jnp.arange(t)[None, :]
  logits_NTV, _ = module.apply({"params": params}, inputs_NT, positions_NT, cache=cache,
                               cache_mode="decode")
  targets_NT = jnp.roll(inputs_NT, -1, axis=1)
  target_NT = jnp.take_along_axis(logits_NTV, targets_NT[..., None], axis=-1)[..., 0]
  lp_NT = target_NT - jax.nn.logsumexp(logits_NTV, axis=-1)
  greedy_NT = jnp.argmax(logits_NTV, axis=-1) == targets_NT
  scored_NT = jnp.arange(t)[None, :] < (cont_len_BC.reshape(-1, 1) - 1)
  rest_BC = jnp.where(scored_NT, lp_NT, 0.0).sum(axis=1).reshape(b, c)
  rest_greedy_BC = (greedy_NT | ~scored_NT).all(axis=1).reshape(b, c)
  return first_BC + rest_BC, first_greedy_BC & rest_greedy_BC


def score_items(model, items: Sequence[Sequence[Pair]], batch_size: int = 16):
  """Per item, (log-likelihoods [n_pairs], is_greedy [n_pairs]) as float64 / bool arrays.

  model: an lm.api.LoadedModel with a tokenizer. batch_size: contexts per forward pass.
  """
  encoded = [[harness_scoring.encode_pair(model._encode, c, x, model._prefix()) for c, x in item]
             for item in items]
  out = [(np.zeros(len(item)), np.ones(len(item), bool)) for item in items]
  groups, long_pairs = [], []  # groups: (context ids, [(item, pair, continuation ids)])
  for i, pairs in enumerate(encoded):
    by_context: dict[tuple, list] = {}
    for j, (context, continuation) in enumerate(pairs):
      by_context.setdefault(tuple(context), []).append((i, j, continuation))
    for context, members in by_context.items():
      if len(context) + max(len(m[2]) for m in members) - 1 <= model.config.max_len:
        groups.append((list(context), members))
      else:
        long_pairs += [(i, j) for i, j, _ in members]
  _score_groups(model, groups, batch_size, out)
  if long_pairs:
    lps, greedy = model._score_requests([encoded[i][j] for i, j in long_pairs], 4096)
    for (i, j), lp, g in zip(long_pairs, lps, greedy):
      out[i][0][j], out[i][1][j] = lp, g
  return out


def _score_groups(model, groups, batch_size: int, out):
  """Fills `out` for every group, batching groups of equal padded shape."""
  max_len, dp = model.config.max_len, model.data_parallel_size
  b = dp * -(-batch_size // dp)  # one batch shape: the last batch of a shape is padded
  by_shape: dict[tuple, list] = {}
  for group in groups:
    context, members = group
    t = _bucket(max(len(m[2]) for m in members), MIN_CONTINUATION)
    shape = (len(members), _bucket(len(context), MIN_CONTEXT, max_len), t)
    by_shape.setdefault(shape, []).append(group)
  for (c, p, t), shaped in sorted(by_shape.items()):
    shaped.sort(key=lambda g: len(g[0]))
    for start in range(0, len(shaped), batch_size):
      chunk = shaped[start:start + batch_size]
      ctx_BP = np.zeros((b, p), np.int32)
      ctx_len_B = np.ones((b,), np.int32)
      cont_BCT = np.zeros((b, c, t), np.int32)
      cont_len_BC = np.ones((b, c), np.int32)
      for r, (context, members) in enumerate(chunk):
        ctx_BP[r, p - len(context):], ctx_len_B[r] = context, len(context)
        for k, (_, _, continuation) in enumerate(members):
          cont_BCT[r, k, :len(continuation)], cont_len_BC[r, k] = continuation, len(continuation)
      with model._context():
        lp_BC, greedy_BC = _group_logprobs(
            model.module, model.params, *(model._put_batch(x) for x in
                                          (ctx_BP, ctx_len_B, cont_BCT, cont_len_BC)))
      lp_BC, greedy_BC = np.asarray(lp_BC, np.float64), np.asarray(greedy_BC)
      for r, (_, members) in enumerate(chunk):
        for k, (i, j, _) in enumerate(members):
          out[i][0][j], out[i][1][j] = lp_BC[r, k], greedy_BC[r, k]

"""Log-likelihoods of the choices of multiple-choice items, each context computed once.

An item is a list of (context, continuation) text pairs: a question with its answers (one
context, several continuations) or Winogrande's partial scoring (several contexts, one
continuation). Pairs are tokenized exactly as `LoadedModel.score` does (lm-evaluation-harness'
`loglikelihood`), and the pairs of an item whose context tokens are equal form a group whose
context runs through the model once.

Batches: contexts of one padded length (a few sizes: every new shape is a compilation of the
whole model) go through a prefill that writes them into a KV cache and gives the log-softmax
at each context's last position, which scores every continuation's first token (on the host;
a one-token continuation needs nothing more). The remaining continuation tokens, of all the
batch's groups, are sorted by length and run in chunks of rows as multi-token decode steps,
each row against its own copy of its context's cache, padded only to the chunk's longest
continuation. Log-likelihoods are those of one full forward pass per pair (tested against
`LoadedModel.score`). Pairs too long for the model (context + continuation > max_len + 1
tokens, where the harness cuts the context on the left) or for a sliding-window cache are
scored pair by pair instead; a continuation longer than max_len (which the harness cannot
score) in disjoint windows of max_len tokens, each after the tokens before it.
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.decoding import cache_length, prefill, take_rows
from lm.decoding import score as harness_scoring

Pair = tuple[str, str]
MIN_CONTEXT, MIN_CONTINUATION = 16, 4  # smallest padded lengths
ROWS_PER_CONTEXT = 2  # decode rows per call, per context of the prefill batch


def _bucket(n: int, minimum: int, cap: int | None = None) -> int:
  """A padded length: the power of two >= max(n, minimum), at most cap (and at least n)."""
  size = 1 << (max(n, minimum) - 1).bit_length()
  return size if cap is None else max(n, min(size, cap))


@functools.partial(jax.jit, static_argnames=("module", "cache_len"))
def _context_logprobs(module, params, ctx_BP, ctx_len_B, *, cache_len: int):
  """(log-softmax [B, V] after each left-padded context, the contexts' KV cache)."""
  logits_BV, cache = prefill(module, params, ctx_BP, ctx_len_B, cache_len=cache_len)
  return jax.nn.log_softmax(logits_BV), cache


@functools.partial(jax.jit, static_argnames=("module",))
def _continuation_logprobs(module, params, cache, ctx_N, inputs_NT, targets_NT, scored_N):
  """(summed log p [N], all-greedy [N]) of targets_NT[:, :scored_N] after context ctx_N (a
  row of `cache`) and inputs_NT: a continuation without its last token as inputs, without
  its first (scored from the context's log-softmax) as targets."""
  t = inputs_NT.shape[1]
  cache = take_rows(cache, ctx_N)
  positions_NT = cache.next_pos_B[:, None] + jnp.arange(t)[None, :]
  logits_NTV, _ = module.apply({"params": params}, inputs_NT, positions_NT, cache=cache,
                               cache_mode="decode")
  target_NT = jnp.take_along_axis(logits_NTV, targets_NT[..., None], axis=-1)[..., 0]
  lp_NT = target_NT - jax.nn.logsumexp(logits_NTV, axis=-1)
  greedy_NT = jnp.argmax(logits_NTV, axis=-1) == targets_NT
  scored_NT = jnp.arange(t)[None, :] < scored_N[:, None]
  return (jnp.where(scored_NT, lp_NT, 0.0).sum(axis=1),
          (greedy_NT | ~scored_NT).all(axis=1))


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
  long_pairs += _score_groups(model, groups, batch_size, out)
  if long_pairs:
    requests, owner = [], []
    for i, j in long_pairs:
      for request in _windows(*encoded[i][j], model.config.max_len):
        requests.append(request)
        owner.append((i, j))
    lps, greedy = model._score_requests(requests, 4096)
    for (i, j), lp, g in zip(owner, lps, greedy):  # out starts at 0.0 / True
      out[i][0][j] += lp
      out[i][1][j] &= g
  return out


def _windows(context, continuation, max_len: int):
  """A pair as full-forward requests: itself, or, when the continuation is longer than the
  model's positions (the harness cannot score it), its max_len-token pieces, each after
  everything before it (cut on the left), as loglikelihood_rolling's disjoint windows."""
  return [(list(context) + list(continuation[:s]), list(continuation[s:s + max_len]))
          for s in range(0, len(continuation), max_len)]


def _score_groups(model, groups, batch_size: int, out) -> list[tuple[int, int]]:
  """Fills `out` for the groups, batched by padded context length; returns the (item, pair)
  indices left for pair-by-pair scoring (a sliding-window cache too short for them)."""
  cfg, dp = model.config, model.data_parallel_size
  b = dp * -(-batch_size // dp)  # one batch shape: the last batch of a length is padded
  by_length: dict[int, list] = {}
  for group in groups:
    by_length.setdefault(_bucket(len(group[0]), MIN_CONTEXT, cfg.max_len), []).append(group)
  left = []
  for p, shaped in sorted(by_length.items()):
    # Cache room for the longest continuation of this length: one cache shape per length.
    room = _bucket(max(len(m[2]) for _, ms in shaped for m in ms) - 1, MIN_CONTINUATION)
    if cache_length(cfg, p + room) < p + room:  # a ring buffer would overwrite the context
      left += [(i, j) for _, ms in shaped for i, j, _ in ms]
      continue
    shaped.sort(key=lambda g: max(len(m[2]) for m in g[1]))  # similar continuations together
    for start in range(0, len(shaped), b):
      _score_batch(model, shaped[start:start + b], b, p, p + room, out)
  return left


def _score_batch(model, chunk, b: int, p: int, cache_len: int, out):
  """One prefill of up to b contexts (padded to p), then decode chunks of their rows."""
  ctx_BP = np.zeros((b, p), np.int32)
  ctx_len_B = np.ones((b,), np.int32)
  for r, (context, _) in enumerate(chunk):
    ctx_BP[r, p - len(context):], ctx_len_B[r] = context, len(context)
  with model._context():
    logp_BV, cache = _context_logprobs(model.module, model.params, model._put_batch(ctx_BP),
                                       model._put_batch(ctx_len_B), cache_len=cache_len)
  logp_BV = np.asarray(logp_BV)
  argmax_B = logp_BV.argmax(axis=1)
  rows = []  # (context row, item, pair, continuation ids) needing a decode step
  for r, (_, members) in enumerate(chunk):
    for i, j, continuation in members:
      out[i][0][j] = logp_BV[r, continuation[0]]
      out[i][1][j] = argmax_B[r] == continuation[0]
      if len(continuation) > 1:
        rows.append((r, i, j, continuation))
  rows.sort(key=lambda row: len(row[3]))
  n = ROWS_PER_CONTEXT * b
  for start in range(0, len(rows), n):
    part = rows[start:start + n]
    t = _bucket(len(part[-1][3]) - 1, MIN_CONTINUATION)
    ctx_N = np.zeros((n,), np.int32)
    inputs_NT = np.zeros((n, t), np.int32)
    targets_NT = np.zeros((n, t), np.int32)
    scored_N = np.zeros((n,), np.int32)
    for k, (r, _, _, continuation) in enumerate(part):
      ctx_N[k], scored_N[k] = r, len(continuation) - 1
      inputs_NT[k, :len(continuation) - 1] = continuation[:-1]
      targets_NT[k, :len(continuation) - 1] = continuation[1:]
    with model._context():
      lp_N, greedy_N = _continuation_logprobs(
          model.module, model.params, cache, *(model._put_batch(x) for x in
                                               (ctx_N, inputs_NT, targets_NT, scored_N)))
    for k, (_, i, j, _) in enumerate(part):
      out[i][0][j] += float(lp_N[k])
      out[i][1][j] &= bool(greedy_N[k])

"""Scoring with lm-evaluation-harness semantics: log-likelihoods from full forward passes.

No KV cache is needed: each request is one forward pass over context + continuation. Requests
are grouped into a few padded lengths (powers of two up to the context length) and a fixed
token budget per batch, so a new request length rarely means a new compilation.

Semantics (lm-evaluation-harness `loglikelihood` / `loglikelihood_rolling`):
  - context and continuation are tokenized jointly and split at the context's token count;
    whitespace at the end of the context moves to the continuation first;
  - an empty context is replaced by one prefix token (BOS, else EOS);
  - context + continuation is cut on the left to `max_len + 1` tokens (the last is only a
    target), so the continuation is always scored and the context loses its oldest tokens;
  - is_greedy: every continuation token is the argmax of its position's logits;
  - an empty continuation (e.g. "hel" + "lo" tokenized jointly as one token "hello", which the
    split gives to the context) scores log-likelihood 0.0, is_greedy True: the harness's
    answer (its ONNX backend says so; its HF backend asserts instead).
"""
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.decoding.generate import bucket, round_rows

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)
# (inputs [B, L], targets [B, L]) -> (log p(target) [B, L], target == argmax [B, L])
LogprobFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

MIN_BUCKET = 16


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str,
                prefix_id: int) -> Request:
  """(context ids, continuation ids) the way lm-evaluation-harness splits a text pair."""
  if not context:
    return [prefix_id], list(encode(continuation))
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  whole = list(encode(context + continuation))
  n_context = len(encode(context))
  return whole[:n_context], whole[n_context:]


def rolling_windows(ids: Sequence[int], prefix_id: int, max_len: int,
                    context_len: int = 1) -> list[Request]:
  """Requests whose continuations cover `ids` exactly once (lm-evaluation-harness' windows).

  context_len = 1: disjoint windows; each scores up to max_len tokens and sees only its own
  tokens (plus one token of the previous window, or the prefix token for the first).
  context_len = c > 1: strided windows; after the first, each window scores at most
  max_len - c + 1 new tokens and conditions on at least c - 1 earlier tokens.
  """
  if not 1 <= context_len <= max_len:
    raise ValueError(f"context_len must be in [1, max_len={max_len}], got {context_len}")
  ids, out = list(ids), []
  if not ids:
    return out
  first = min(max_len, len(ids))
  out.append(([prefix_id], ids[:first]))
  done, stride = first, max_len - context_len + 1
  while done < len(ids):
    end = min(len(ids), done + stride)
    # the window's input is ids[end - max_len - 1 : end - 1]; its targets are ids[done:end]
    out.append((ids[max(0, end - max_len - 1):done], ids[done:end]))
    done = end
  return out


def score_requests(logprob_fn: LogprobFn, requests: Sequence[Request], max_len: int, *,
                   batch_tokens: int = 4096, row_multiple: int = 1):
  """(summed log-probability [N], is_greedy [N]) of each continuation given its context.

  Batches hold at most `batch_tokens` padded tokens; row counts are powers of two rounded up
  to a multiple of `row_multiple` (the data-parallel size, so a batch splits over the mesh).
  Inputs are right padded: every row starts at position 0, and causal attention keeps padding
  out of real rows.
  """
  n = len(requests)
  logprobs, greedy = np.zeros(n, np.float64), np.ones(n, bool)
  rows = []  # (index, input ids, target ids, continuation length)
  for i, (context, continuation) in enumerate(requests):
    if not continuation:
      continue  # log p(nothing) = 0: logprobs[i], greedy[i] stay 0.0, True
    if not context:
      raise ValueError(f"request {i} has an empty context (give a prefix token)")
    if len(continuation) > max_len:
      raise ValueError(f"request {i}: a continuation of {len(continuation)} tokens does not "
                       f"fit the model's {max_len} positions (use score_rolling)")
    whole = (list(context) + list(continuation))[-(max_len + 1):]
    rows.append((i, whole[:-1], whole[1:], len(continuation)))
  buckets: dict[int, list] = {}
  for row in rows:
    # the padded length: a power of two (>= MIN_BUCKET), at most max_len
    buckets.setdefault(min(max_len, bucket(len(row[1]), MIN_BUCKET)), []).append(row)
  for length, group in sorted(buckets.items()):
    most = bucket(batch_tokens // length + 1) // 2  # the largest power of two <= the quotient
    per_batch = max(row_multiple, most // row_multiple * row_multiple)
    for start in range(0, len(group), per_batch):
      chunk = group[start:start + per_batch]
      inputs_BL = np.zeros((min(round_rows(len(chunk), row_multiple), per_batch), length),
                           np.int32)
      targets_BL = np.zeros_like(inputs_BL)
      for r, (_, inp, tgt, _) in enumerate(chunk):
        inputs_BL[r, :len(inp)], targets_BL[r, :len(tgt)] = inp, tgt
      lp_BL, greedy_BL = logprob_fn(inputs_BL, targets_BL)
      lp_BL, greedy_BL = np.asarray(lp_BL), np.asarray(greedy_BL)
      for r, (i, inp, _, m) in enumerate(chunk):
        span = slice(len(inp) - m, len(inp))  # the continuation's target positions
        logprobs[i] = lp_BL[r, span].astype(np.float64).sum()
        greedy[i] = bool(greedy_BL[r, span].all())
  return logprobs, greedy


def target_logprobs(module, params, inputs_BL, targets_BL):
  """(log p(target) [B, L], target == argmax [B, L]) from one forward pass (jit it)."""
  logits_BLV = module.apply({"params": params}, inputs_BL)
  target_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  lp_BL = target_BL - jax.nn.logsumexp(logits_BLV, axis=-1)
  return lp_BL, jnp.argmax(logits_BLV, axis=-1) == targets_BL

"""Log-likelihoods of the choices of multiple-choice items, each context computed once.

An item is a list of (context, continuation) text pairs: a question with its answers (one
context, several continuations) or Winogrande's partial scoring (several contexts, one
continuation). `LoadedModel.score_choices` tokenizes the pairs exactly as `LoadedModel.score`
does (lm-evaluation-harness' `loglikelihood`); the pairs of an item whose context tokens are
equal form a group.

A group is packed as one sequence: its context, then each continuation but its last token, as
segments of their own positioned right after the context, attending to the context through the
model's prefix_ids (and not to each other). The context's last position scores every
continuation's first token, each continuation position the next token. Groups are packed into
rows of one length (first fit, longest first), rows into batches of about batch_size x 128
tokens, and the model computes vocabulary logits only at the scored positions: no padding
between choices, no KV cache, one compiled shape per task. Log-likelihoods equal those of one
full forward pass per pair (tested against `LoadedModel.score`). Pairs too long for the model
(context + continuation > max_len + 1 tokens, where the harness cuts the context on the left)
are scored pair by pair instead; a continuation longer than max_len (which the harness cannot
score) in disjoint windows of max_len tokens, each after the tokens before it.
"""
import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


from lm.decoding.generate import bucket
from lm.scoring.forward import Request

# (tokens, positions, segments, prefixes [B, R], at [B, K], at_e, targets [B, E]) ->
# (log p [B, E], is-greedy [B, E]): packed_logprobs on the model's params and mesh
PackedFn = Callable[..., tuple[np.ndarray, np.ndarray]]
# requests -> (summed log p [N], is_greedy [N]): forward.score_requests on the model
RequestsFn = Callable[[Sequence[Request]], tuple[np.ndarray, np.ndarray]]
ROW_TOKENS = 128  # a forward pass holds about batch_size x ROW_TOKENS tokens
MIN_ROW, MIN_SCORED = 128, 16  # smallest padded row length and scored positions per row


@functools.partial(jax.jit, static_argnames=("module",))
def packed_logprobs(module, params, tokens_BR, positions_BR, segments_BR, prefixes_BR, at_BK,
                     at_BE, targets_BE):
  """(log p [B, E], is-greedy [B, E]) of targets_BE[b, e] at scored position at_BE[b, e] (an
  index into at_BK, the row positions whose logits are computed)."""
  logits_BKV = module.apply({"params": params}, tokens_BR, positions_BR, segments_BR,
                            prefix_ids_BL=prefixes_BR, logits_at_BC=at_BK)
  rows_B1 = jnp.arange(at_BE.shape[0])[:, None]
  logz_BK = jax.nn.logsumexp(logits_BKV, axis=-1)
  lp_BE = logits_BKV[rows_B1, at_BE, targets_BE] - logz_BK[rows_B1, at_BE]
  greedy_BE = jnp.argmax(logits_BKV, axis=-1)[rows_B1, at_BE] == targets_BE
  return lp_BE, greedy_BE


def score_items(encoded: Sequence[Sequence[Request]], max_len: int, packed_fn: PackedFn,
                requests_fn: RequestsFn, batch_size: int = 16, row_multiple: int = 1):
  """Per item (a list of (context ids, continuation ids) pairs), (log-likelihoods [n_pairs],
  is_greedy [n_pairs]) as float64 / bool arrays.

  batch_size: rows of about ROW_TOKENS tokens per forward pass, rounded up to a multiple of
  row_multiple (the data-parallel size); pairs that do not fit max_len go to requests_fn.
  """
  out = [(np.zeros(len(item)), np.ones(len(item), bool)) for item in encoded]
  groups, long_pairs = [], []  # groups: (context ids, [(item, pair, continuation ids)])
  for i, pairs in enumerate(encoded):
    by_context: dict[tuple, list] = {}
    for j, (context, continuation) in enumerate(pairs):
      if continuation:  # an empty one (merged into the context's tokens) stays at 0.0, True
        by_context.setdefault(tuple(context), []).append((i, j, continuation))
    for context, members in by_context.items():
      if len(context) + max(len(m[2]) for m in members) - 1 <= max_len:
        groups.append((list(context), members))
      else:
        long_pairs += [(i, j) for i, j, _ in members]
  _score_groups(packed_fn, groups, batch_size, row_multiple, out)
  if long_pairs:
    requests, owner = [], []
    for i, j in long_pairs:
      for request in _windows(*encoded[i][j], max_len):
        requests.append(request)
        owner.append((i, j))
    lps, greedy = requests_fn(requests)
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


@dataclasses.dataclass
class _Row:
  """One packed row: its tokens and mask inputs, the positions whose logits are needed and the
  scored (position index, target token, item, pair) events."""
  tokens: list = dataclasses.field(default_factory=list)
  positions: list = dataclasses.field(default_factory=list)
  segments: list = dataclasses.field(default_factory=list)
  prefixes: list = dataclasses.field(default_factory=list)
  at: list = dataclasses.field(default_factory=list)
  events: list = dataclasses.field(default_factory=list)

  def add(self, context, members):
    """Appends a group: its context, then each continuation (but its last token)."""
    context_seg = seg = (self.segments[-1] if self.segments else 0) + 1
    self.tokens += context
    self.positions += range(len(context))
    self.segments += [seg] * len(context)
    self.prefixes += [seg] * len(context)
    self.at.append(len(self.tokens) - 1)
    last = len(self.at) - 1  # the context's last position scores each first token
    for i, j, continuation in members:
      self.events.append((last, continuation[0], i, j))
      seg += 1
      for t, token in enumerate(continuation[:-1]):
        self.tokens.append(token)
        self.positions.append(len(context) + t)
        self.segments.append(seg)
        self.prefixes.append(context_seg)
        self.at.append(len(self.tokens) - 1)
        self.events.append((len(self.at) - 1, continuation[t + 1], i, j))


def _packed_length(group) -> int:
  context, members = group
  return len(context) + sum(len(m[2]) - 1 for m in members)


def _score_groups(packed_fn: PackedFn, groups, batch_size: int, dp: int, out):
  """Fills `out` for the groups, packed into rows (see the module docstring)."""
  if not groups:
    return
  sized = sorted(((_packed_length(g), g) for g in groups), key=lambda x: -x[0])
  row_len = bucket(sized[0][0], MIN_ROW)
  rows: list[_Row] = []
  for n, group in sized:  # first fit decreasing
    row = next((r for r in rows if len(r.tokens) + n <= row_len), None)
    if row is None:
      rows.append(row := _Row())
    row.add(*group)
  b = dp * -(-max(1, batch_size * ROW_TOKENS // row_len) // dp)
  for start in range(0, len(rows), b):
    _score_rows(packed_fn, rows[start:start + b], b, row_len, out)


def _score_rows(packed_fn: PackedFn, rows, b: int, row_len: int, out):
  """One forward pass over up to b packed rows (padding rows are segment 0)."""
  k = bucket(max(len(r.at) for r in rows), MIN_SCORED)
  e = bucket(max(len(r.events) for r in rows), MIN_SCORED)
  arrays = {name: np.zeros((b, n), np.int32) for name, n in (
      ("tokens", row_len), ("positions", row_len), ("segments", row_len),
      ("prefixes", row_len), ("at", k), ("at_e", e), ("targets", e))}
  for r, row in enumerate(rows):
    for name in ("tokens", "positions", "segments", "prefixes", "at"):
      arrays[name][r, :len(getattr(row, name))] = getattr(row, name)
    for x, (at, target, _, _) in enumerate(row.events):
      arrays["at_e"][r, x], arrays["targets"][r, x] = at, target
  lp_BE, greedy_BE = packed_fn(*arrays.values())
  lp_BE, greedy_BE = np.asarray(lp_BE), np.asarray(greedy_BE)
  for r, row in enumerate(rows):
    for x, (_, _, i, j) in enumerate(row.events):
      out[i][0][j] += lp_BE[r, x]
      out[i][1][j] &= bool(greedy_BE[r, x])

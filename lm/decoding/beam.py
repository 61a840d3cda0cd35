"""Beam search as T5X does it, on the KV cache of lm.decoding (prefill, decode_step).

Each step extends every live beam by every token and keeps the 2K best candidates (K beams):
those ending in EOS are scored with the length penalty and join the finished set (the best K
finished so far are kept aside); the best K that do not end in EOS stay live. Candidates that
reach max_new_tokens without EOS are finished as they are, so a search always returns K
hypotheses (fewer only when the vocabulary is smaller than the search). The score of a
finished hypothesis of n new tokens (EOS included) is

  log p(tokens | prompt) / ((5 + n) / 6) ** length_penalty     (Wu et al. 2016, T5X)

A row stops early, as in T5X, once its worst kept finished score beats the best score any
live beam could still reach; the loop ends when every row has stopped.
"""
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.decoding.cache import take_rows
from lm.decoding.generate import decode_step, prepare
from lm.errors import UserError
from lm.models.attention import KVCache

NEG = -1.0e30  # "no hypothesis": finite, so sums and divisions stay ordered


def brevity_penalty(length, alpha):
  """((5 + length) / 6) ** alpha: the divisor of a hypothesis' log-probability."""
  return ((5.0 + length) / 6.0) ** alpha


class BeamState(NamedTuple):
  """After `step` new tokens, per row (B) and beam (K): the live beams' tokens [B, K, T] and
  log-probabilities, the best K finished hypotheses (tokens, scores, lengths; NEG: none yet),
  the live beams' cache rows (B * K), their last tokens (not yet in the cache), and whether the
  search is over."""
  step: jax.Array
  live_seqs_BKT: jax.Array
  live_lp_BK: jax.Array
  fin_seqs_BKT: jax.Array
  fin_scores_BK: jax.Array
  fin_lens_BK: jax.Array
  cache: KVCache
  live_tok_BK: jax.Array
  done: jax.Array


@functools.partial(jax.jit, static_argnames=("module", "num_beams", "num_steps", "eos_ids"))
def beam_decode(module, params, logits_BV, cache, max_new_tokens, length_penalty, *,
                num_beams: int, num_steps: int, eos_ids: tuple[int, ...] = ()):
  """Beam search from a prefill's logits_BV [B, V] and cache (B rows).

  Returns (tokens [B, K, num_steps] (0 past a hypothesis' length), scores [B, K] (best
  first; NEG for an empty slot), lengths [B, K]). max_new_tokens <= num_steps may be traced.
  """
  b, v = logits_BV.shape
  k, t = num_beams, num_steps
  eos = jnp.asarray(eos_ids, jnp.int32)
  max_pen = brevity_penalty(max_new_tokens.astype(jnp.float32), length_penalty)
  cols_T = jnp.arange(t)

  def extend(st: BeamState, logits_BKV) -> BeamState:
    """Every live beam extended by every token: the best 2K candidates update the finished set
    (those that end) and the live set (those not ending in EOS)."""
    cand_BKV = st.live_lp_BK[:, :, None] + jax.nn.log_softmax(logits_BKV.astype(jnp.float32))
    top_lp, top_idx = jax.lax.top_k(cand_BKV.reshape(b, k * v), 2 * k)
    parent, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
    seqs = jnp.take_along_axis(st.live_seqs_BKT, parent[:, :, None], axis=1)
    seqs = jnp.where(cols_T == st.step, tok[:, :, None], seqs)
    is_eos = jnp.isin(tok, eos)
    length = st.step + 1
    ends = is_eos | (length >= max_new_tokens)
    scores = jnp.where(ends & (top_lp > NEG / 2),
                       top_lp / brevity_penalty(length.astype(jnp.float32), length_penalty), NEG)
    # The finished set: the best K of those kept so far and the new ones.
    all_scores = jnp.concatenate([st.fin_scores_BK, scores], axis=1)
    fin_scores, pick = jax.lax.top_k(all_scores, k)
    fin_seqs = jnp.take_along_axis(jnp.concatenate([st.fin_seqs_BKT, seqs], 1),
                                   pick[:, :, None], 1)
    all_lens = jnp.concatenate([st.fin_lens_BK, jnp.full((b, 2 * k), length, jnp.int32)], axis=1)
    fin_lens = jnp.take_along_axis(all_lens, pick, axis=1)
    # The live set: the best K candidates that did not end in EOS.
    live_lp, pick = jax.lax.top_k(jnp.where(is_eos, NEG, top_lp), k)
    live_seqs = jnp.take_along_axis(seqs, pick[:, :, None], axis=1)
    live_tok = jnp.take_along_axis(tok, pick, axis=1)
    rows = (jnp.arange(b)[:, None] * k + jnp.take_along_axis(parent, pick, axis=1)).reshape(-1)
    cache = take_rows(st.cache, rows)
    # T5X's stop: no live beam can still beat the worst kept finished hypothesis.
    best_pen = jnp.maximum(brevity_penalty(length.astype(jnp.float32), length_penalty), max_pen)
    hopeless_B = jnp.min(fin_scores, axis=1) >= jnp.max(live_lp, axis=1) / best_pen
    done = (length >= max_new_tokens) | jnp.all(hopeless_B)
    return BeamState(length, live_seqs, live_lp, fin_seqs, fin_scores, fin_lens, cache, live_tok,
                     done)

  def body(st: BeamState) -> BeamState:
    logits_BV, cache = decode_step(module, params, st.live_tok_BK.reshape(-1), st.cache)
    return extend(st._replace(cache=cache), logits_BV.reshape(b, k, v))

  # Only beam 0 is live at first, so the K copies of a prompt do not give K equal beams.
  live_lp = jnp.tile(jnp.asarray([0.0] + [NEG] * (k - 1), jnp.float32), (b, 1))
  cache = take_rows(cache, jnp.repeat(jnp.arange(b), k))
  state = BeamState(jnp.zeros((), jnp.int32), jnp.zeros((b, k, t), jnp.int32), live_lp,
                    jnp.zeros((b, k, t), jnp.int32), jnp.full((b, k), NEG, jnp.float32),
                    jnp.zeros((b, k), jnp.int32), cache, jnp.zeros((b, k), jnp.int32),
                    jnp.zeros((), bool))
  state = extend(state, jnp.broadcast_to(logits_BV[:, None], (b, k, v)))
  state = jax.lax.while_loop(lambda st: ~st.done, body, state)
  return state.fin_seqs_BKT, state.fin_scores_BK, state.fin_lens_BK


def beam_search_ids(module, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    num_beams: int = 4, length_penalty: float = 0.6,
                    eos_ids: Sequence[int] = (), batch_multiple: int = 1):
  """Per prompt, up to num_beams (new tokens, score) pairs, best first; a hypothesis that ended
  with EOS includes it. Call under the params' mesh; batch_multiple: its data-parallel size."""
  if num_beams < 1 or max_new_tokens < 1:
    raise UserError(f"num_beams={num_beams} and max_new_tokens={max_new_tokens} must be >= 1")
  p = prepare(module, params, prompts, max_new_tokens=max_new_tokens,
              batch_multiple=batch_multiple)
  if p is None:
    return []
  seqs, scores, lens = beam_decode(
      module, params, p.logits_BV, p.cache, np.int32(max_new_tokens), np.float32(length_penalty),
      num_beams=num_beams, num_steps=p.num_steps, eos_ids=tuple(int(e) for e in eos_ids))
  seqs, scores, lens = np.asarray(seqs), np.asarray(scores), np.asarray(lens)
  return [[(seqs[i, j, :lens[i, j]].tolist(), float(scores[i, j]))
           for j in range(num_beams) if scores[i, j] > NEG / 2] for i in range(p.rows)]

"""Decoding in chunks of steps, resumable from the host: streaming output and stop strings.

`lm.decoding.decode` runs a whole generation in one jitted loop (`start`, then one
`decode_chunk` of every step). Here the same steps (so the same tokens) run `chunk_steps` at a
time and hand their state back, so the host can print what arrived, look for stop strings and
mark rows done before the next chunk.
"""
from typing import Sequence

import numpy as np

from lm.decoding.generate import decode_chunk, prepare, start
from lm.decoding.sampling import sampling_filters


def stream_ids(module, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               min_p: float | None = None, num_samples: int = 1, eos_ids: Sequence[int] = (),
               seed: int = 0, chunk_steps: int = 16, batch_multiple: int = 1):
  """Like lm.decoding.generate_ids (same arguments, same tokens), but a generator: after each
  chunk of decode steps it yields the new tokens of every row so far, as a list of
  len(prompts) * num_samples lists (row r is sample r % num_samples of prompt
  r // num_samples). `send(done)` (a bool per row) instead of `next()` ends rows early.
  Call under the params' mesh; batch_multiple: its data-parallel size.
  """
  filters = sampling_filters(temperature, top_k, top_p, min_p)
  p = prepare(module, params, prompts, max_new_tokens=max_new_tokens, num_samples=num_samples,
              batch_multiple=batch_multiple)
  if p is None:
    yield [[] for _ in range(len(prompts) * num_samples)]
    return
  rows, greedy = p.rows, temperature == 0
  s = p.sampling(max_new_tokens, seed, temperature, filters)
  eos_ids = tuple(int(e) for e in eos_ids)
  state, tok_B = start(p.logits_BV, p.cache, p.padding_B(), s, eos_ids=eos_ids, greedy=greedy)
  out = [[t] if t >= 0 else [] for t in np.asarray(tok_B)[:rows].tolist()]
  while True:
    done = yield out
    done_B = np.asarray(state.done_B).copy()
    if done is not None:
      done_B[:rows] |= np.asarray(done, bool)
    if done_B.all():
      return
    state, new_BT = decode_chunk(module, params, state._replace(done_B=done_B), s,
                                 num_steps=chunk_steps, eos_ids=eos_ids, greedy=greedy)
    for r, row in enumerate(np.asarray(new_BT)[:rows].tolist()):
      out[r] += [t for t in row if t >= 0]

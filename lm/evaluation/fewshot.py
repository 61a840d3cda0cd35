"""Few-shot examples: drawn reproducibly from a task's pool, never the scored document.

lm-evaluation-harness draws each document's examples from one `random.Random(1234)` stream
in document order (so they depend on what was evaluated before). Here each document's draw
depends only on (seed, task, document index): the same seed gives the same examples whatever
--limit, batch or order, and a pool that is the evaluated split itself never yields the
scored document (the harness samples n + 1 and drops the document too).
"""
import random
from typing import Sequence


def sample_indices(pool_size: int, n: int, seed: int, task: str, doc_index: int,
                   exclude_self: bool = True) -> list[int]:
  """n distinct pool indices for document `doc_index` (never doc_index when exclude_self)."""
  if n <= 0:
    return []
  candidates = pool_size - (1 if exclude_self and 0 <= doc_index < pool_size else 0)
  if n > candidates:
    raise ValueError(f"{task}: {n} few-shot examples asked, the pool has {candidates}")
  rnd = random.Random(f"{seed}/{task}/{doc_index}")
  drawn = rnd.sample(range(pool_size), min(n + 1, pool_size))
  return [i for i in drawn if not (exclude_self and i == doc_index)][:n]


def join_examples(examples: Sequence[str], delimiter: str = "\n\n") -> str:
  """The few-shot prefix: each rendered example followed by the delimiter (the harness's
  fewshot_delimiter), ready for the scored document's text to follow."""
  return "".join(e + delimiter for e in examples)

"""Few-shot examples: drawn reproducibly from a task's pool, never the scored document.

Two samplers, both seeded by --seed (default 1234, the harness's `fewshot_random_seed`):

- "harness" (the default): lm-evaluation-harness 0.4.13's `ContextSampler` with the pool
  being the evaluated split (`fewshot_split` = `test_split`): one `random.Random(seed)`
  stream, consumed in document order from the first document; each document draws n + 1
  pool items, drops those equal to itself and keeps the first n (if fewer are left, n are
  drawn again from the pool without it). Few-shot prompts are then the harness's, character
  for character (tested), and the same for any --limit (the first N documents draw first).
- "per_document": each document's draw depends only on (seed, task, document index), not on
  the documents before it (so on neither --limit nor order).
"""
import random
from typing import Sequence

from lm.errors import UserError

SAMPLERS = ("harness", "per_document")


def harness_draws(pool: Sequence, docs: Sequence, n: int, seed: int,
                  exclude: Sequence | None = None) -> list[list[int]]:
  """Per document, in order, the pool indices the harness's sampler picks.

  exclude: per document, the item to keep out (default: the document itself); pool items
  equal to it are never drawn. exclude=[] draws n from the whole pool (no exclusion)."""
  if n <= 0:
    return [[] for _ in docs]
  exclude = docs if exclude is None else exclude
  rnd = random.Random(seed)
  out = []
  for i in range(len(docs)):
    if not exclude:
      out.append(_sample(rnd, list(range(len(pool))), n))
      continue
    drawn = [j for j in _sample(rnd, list(range(len(pool))), n + 1) if pool[j] != exclude[i]]
    if len(drawn) < n:  # the pool held copies of the document
      drawn = _sample(rnd, [j for j in range(len(pool)) if pool[j] != exclude[i]], n)
    out.append(drawn[:n])
  return out


def _sample(rnd: random.Random, population: list[int], k: int) -> list[int]:
  if k > len(population):  # the pool holds copies of the document: fewer are left
    raise UserError(f"--num_fewshot: {k} examples asked, the few-shot pool has "
                    f"{len(population)} to draw from")
  return rnd.sample(population, k)  # indices: the harness samples the docs, same draws


def sample_indices(pool_size: int, n: int, seed: int, task: str, doc_index: int,
                   exclude_self: bool = True) -> list[int]:
  """The "per_document" sampler: n distinct pool indices for document `doc_index` (never
  doc_index when exclude_self)."""
  if n <= 0:
    return []
  candidates = pool_size - (1 if exclude_self and 0 <= doc_index < pool_size else 0)
  if n > candidates:
    raise UserError(f"{task}: --num_fewshot {n} asks for more examples than the "
                    f"{candidates} other documents of the few-shot pool")
  rnd = random.Random(f"{seed}/{task}/{doc_index}")
  drawn = rnd.sample(range(pool_size), min(n + 1, pool_size))
  return [i for i in drawn if not (exclude_self and i == doc_index)][:n]


def draws(sampler: str, pool: Sequence, docs: Sequence, n: int, seed: int, task: str,
          exclude: Sequence | None = None) -> list[list[int]]:
  """Pool indices per document with `sampler` ("harness" or "per_document"); `exclude` as
  in harness_draws (per_document excludes the pool item at the document's own index). More
  examples than the pool holds besides the document are a UserError."""
  available = len(pool) - (0 if exclude == [] else 1)
  if docs and n > max(available, 0):
    raise UserError(f"{task}: --num_fewshot {n} asks for more examples than the {available} "
                    "other documents of the few-shot pool")
  if sampler == "harness":
    return harness_draws(pool, docs, n, seed, exclude)
  if sampler == "per_document":
    return [sample_indices(len(pool), n, seed, task, i, exclude_self=exclude != [])
            for i in range(len(docs))]
  raise ValueError(f"unknown few-shot sampler {sampler!r} (one of {', '.join(SAMPLERS)})")


def join_examples(examples: Sequence[str], delimiter: str = "\n\n") -> str:
  """The few-shot prefix: each rendered example followed by the delimiter (the harness's
  fewshot_delimiter), ready for the scored document's text to follow."""
  return "".join(e + delimiter for e in examples)

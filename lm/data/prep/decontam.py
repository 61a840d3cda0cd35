"""Decontamination: drop documents sharing a word n-gram with evaluation data."""

import re
from typing import Iterable, Optional, Set

from lm.data.prep.minhash import word_hash

_WORD = re.compile(r"\w+")


def _ngrams(text: str, n: int) -> Iterable[int]:
  ids = [word_hash(w) for w in _WORD.findall(text.lower())]
  for i in range(len(ids) - n + 1):
    yield hash(tuple(ids[i:i + n]))  # Tuples of ints hash the same everywhere.


def load_eval_ngrams(paths, n: int) -> Set[int]:
  """Hashed n-grams of evaluation files (plain text, or JSONL read as text)."""
  grams = set()
  for path in paths:
    with open(path, encoding="utf-8", errors="replace") as f:
      grams.update(_ngrams(f.read(), n))
  return grams


def contaminated(text: str, eval_ngrams: Set[int], n: int) -> Optional[str]:
  """"decontam" if `text` shares an n-gram with the evaluation data."""
  if eval_ngrams and any(g in eval_ngrams for g in _ngrams(text, n)):
    return "decontam"
  return None

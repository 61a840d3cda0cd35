"""MinHash signatures over line-bounded word n-grams, vectorized with numpy.

Shingles are lower-cased word n-grams that never cross a line break (a line
shorter than n is one shingle), so reordering lines leaves the shingle set
unchanged and only edited words lower the Jaccard similarity. Each shingle is
a 64-bit hash; permutation i maps it to the top 32 bits of (a_i * h + b_i)
mod 2**64 (multiply-shift, a universal family) and keeps the minimum.
"""

import functools
import hashlib
import re
from typing import List

import numpy as np

_WORD = re.compile(r"\w+")
_WORD_CACHE_SIZE = 1 << 20


@functools.lru_cache(maxsize=_WORD_CACHE_SIZE)
def word_hash(word: str) -> int:
  """Stable 64-bit hash of a word (cached per process)."""
  # Stable across processes, unlike hash(); the cache makes Zipfian text cheap.
  return int.from_bytes(
      hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int):
  rng = np.random.default_rng(seed)
  a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
  b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
  mix = rng.integers(1, 2**63, size=64, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
  return a, b, mix


def shingle_hashes(text: str, n: int, seed: int) -> np.ndarray:
  """Unique 64-bit hashes of the line-bounded word n-grams of `text`."""
  *_, mix = _permutations(1, seed)
  word_ids, line_ids = [], []
  for line_no, line in enumerate(text.lower().split("\n")):
    words = _WORD.findall(line)
    word_ids.extend(word_hash(w) for w in words)
    line_ids.extend([line_no] * len(words))
  if not word_ids:
    return np.zeros(1, dtype=np.uint64)  # Empty text: one constant shingle.
  words = np.array(word_ids, dtype=np.uint64)
  lines = np.array(line_ids, dtype=np.int64)
  count = len(words)
  h = np.zeros(count, dtype=np.uint64)
  for k in range(n):
    # Word k of the n-gram starting at i, if it is still on i's line.
    shifted = np.zeros(count, dtype=np.uint64)
    same_line = np.zeros(count, dtype=bool)
    shifted[:count - k] = words[k:]
    same_line[:count - k] = lines[k:] == lines[:count - k]
    h += np.where(same_line, shifted * mix[k], np.uint64(0))
  line_start = np.ones(count, dtype=bool)
  line_start[1:] = lines[1:] != lines[:-1]
  full = np.zeros(count, dtype=bool)
  full[:count - n + 1] = lines[n - 1:] == lines[:count - n + 1]
  # Every full n-gram, plus the whole line where a line is shorter than n.
  line_len = np.bincount(lines)[lines]
  keep = full | (line_start & (line_len < n))
  return np.unique(h[keep])


def signature(text: str, n: int, num_perm: int, seed: int) -> np.ndarray:
  """MinHash signature (num_perm uint32 values) of `text`."""
  a, b, _ = _permutations(num_perm, seed)
  shingles = shingle_hashes(text, n, seed)
  sig = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
  # Chunked so a 10 MB document does not build a huge matrix at once.
  for start in range(0, len(shingles), 4096):
    chunk = shingles[start:start + 4096, None]
    values = ((chunk * a[None, :] + b[None, :]) >> np.uint64(32)).astype(np.uint32)
    np.minimum(sig, values.min(axis=0), out=sig)
  return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> List[bytes]:
  """One LSH bucket key per band: band number + a digest of its rows."""
  return [bytes([i]) + hashlib.blake2b(
      sig[i * rows:(i + 1) * rows].tobytes(), digest_size=8).digest()
          for i in range(bands)]


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
  """Fraction of equal MinHash values: an unbiased Jaccard estimate."""
  return float(np.mean(sig_a == sig_b))

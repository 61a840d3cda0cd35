"""Quality stage: the MassiveText (Gopher) heuristics, thresholds in config.

Rules are checked cheapest first and the first failing one names the removal
("quality:<rule>"). A document is kept when every measured value is within
its bounds, bounds included (e.g. exactly 50 words, or a 0.1 symbol ratio,
passes), as in the paper's "remove if greater than" wording.
"""

import re
import string
from typing import List, Optional

import numpy as np

from lm.data.prep.config import QualityConfig

_PUNCT = string.punctuation + "…“”‘’«»–—•·"
_BULLETS = ("•", "-", "*", "‣", "●", "◦", "▪", "–")
_ELLIPSES = ("...", "…")
_PARAGRAPH = re.compile(r"\n\s*\n")
_WITH_LETTER = re.compile(r"\S*[^\W\d_]\S*")  # A token with a letter in it.
# Odd 64-bit multipliers of a polynomial n-gram hash (wraps mod 2**64).
_MULT = np.random.default_rng(0).integers(
    1, 2**63, size=16, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _dup_fractions(items: List[str], total_chars: int):
  """(duplicate item fraction, duplicate character fraction); repeats only."""
  seen, dup_items, dup_chars = set(), 0, 0
  for item in items:
    if item in seen:
      dup_items += 1
      dup_chars += len(item)
    else:
      seen.add(item)
  return dup_items / max(len(items), 1), dup_chars / max(total_chars, 1)


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
  h = np.zeros(len(ids) - n + 1, dtype=np.uint64)
  for k in range(n):
    h += ids[k:len(ids) - n + 1 + k] * _MULT[k]
  return h


def top_ngram_char_frac(ids, lengths, n: int) -> float:
  """Characters in all occurrences of the most frequent n-gram / all chars."""
  if len(ids) < n:
    return 0.0
  _, first, counts = np.unique(_ngram_hashes(ids, n), return_index=True,
                               return_counts=True)
  top = np.argmax(counts)
  if counts[top] < 2:
    return 0.0
  start = first[top]
  return float(lengths[start:start + n].sum() * counts[top] / lengths.sum())


def dup_ngram_char_frac(ids, lengths, n: int) -> float:
  """Characters of words inside a repeated (not first) n-gram / all chars."""
  if len(ids) < n:
    return 0.0
  _, first, inverse = np.unique(_ngram_hashes(ids, n), return_index=True,
                                return_inverse=True)
  starts = np.nonzero(first[inverse] != np.arange(len(inverse)))[0]
  cover = np.zeros(len(ids) + 1, dtype=np.int64)
  np.add.at(cover, starts, 1)
  np.add.at(cover, starts + n, -1)
  covered = np.cumsum(cover[:-1]) > 0
  return float(lengths[covered].sum() / lengths.sum())


def quality_reason(text: str, cfg: QualityConfig) -> Optional[str]:
  """Returns the first failing rule's name, or None if the text passes."""
  tokens = text.split()
  words = [t for t in (t.strip(_PUNCT) for t in tokens) if t]
  if not cfg.min_words <= len(words) <= cfg.max_words:
    return "word_count"
  mean_len = sum(map(len, words)) / len(words)
  if not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
    return "mean_word_length"
  if max(text.count("#"), text.count("...") + text.count("…")
         ) / len(words) > cfg.max_symbol_word_ratio:
    return "symbol_ratio"
  lines = [l for l in text.split("\n") if l.strip()]
  if sum(l.lstrip().startswith(_BULLETS) for l in lines
         ) / len(lines) > cfg.max_bullet_lines:
    return "bullet_lines"
  if sum(l.rstrip().endswith(_ELLIPSES) for l in lines
         ) / len(lines) > cfg.max_ellipsis_lines:
    return "ellipsis_lines"
  if len(_WITH_LETTER.findall(text)) / len(tokens) < cfg.min_alpha_words:
    return "alpha_words"
  lower = [w.lower() for w in words]
  if len(set(cfg.stop_words).intersection(lower)) < cfg.min_stop_words:
    return "stop_words"
  return _repetition_reason(text, lines, lower, cfg)


def _repetition_reason(text, lines, words, cfg: QualityConfig):
  line_frac, line_chars = _dup_fractions(lines, len(text))
  if line_frac > cfg.max_dup_line_frac:
    return "dup_line_frac"
  if line_chars > cfg.max_dup_line_char_frac:
    return "dup_line_char_frac"
  paragraphs = [p.strip() for p in _PARAGRAPH.split(text) if p.strip()]
  para_frac, para_chars = _dup_fractions(paragraphs, len(text))
  if para_frac > cfg.max_dup_para_frac:
    return "dup_para_frac"
  if para_chars > cfg.max_dup_para_char_frac:
    return "dup_para_char_frac"
  vocab = {}
  ids = np.array([vocab.setdefault(w, len(vocab)) for w in words], np.uint64)
  lengths = np.array([len(w) for w in words], np.int64)
  for n, limit in cfg.max_top_ngram_char_frac:
    if top_ngram_char_frac(ids, lengths, n) > limit:
      return f"top_{n}gram"
  rules = sorted(cfg.max_dup_ngram_char_frac)
  for i, (n, limit) in enumerate(rules):
    frac = dup_ngram_char_frac(ids, lengths, n)
    if frac > limit:
      return f"dup_{n}gram"
    # Words covered by repeated (n+1)-grams are covered by repeated n-grams,
    # so once the fraction is under every later limit, all later rules pass.
    if all(frac <= later for _, later in rules[i + 1:]):
      break
  return None


def language_reason(text: str, languages) -> Optional[str]:
  """"language:<code>" when the detected language is not in `languages`.

  Uses py3langid, whose model ships inside its wheel (nothing downloaded).
  Only the first 2,000 characters are classified, which is plenty for a
  document-level decision and keeps huge documents cheap.
  """
  import py3langid  # Optional dependency: only needed with --languages.
  lang, _ = py3langid.classify(text[:2000])
  return None if lang in languages else f"language:{lang}"

"""Clean-lines stage: C4's boilerplate line filter, reused from TFDS.

`tensorflow_datasets.text.c4_utils.clean_page` drops lines that are too short,
lack terminal punctuation, mention javascript or cookie/privacy policies, and
drops whole pages with "lorem ipsum", a curly bracket (code) or too few
sentences. It counts sentences with NLTK's punkt model, which it downloads on
first use; we never download at run time, so we install an offline splitter
(split after . ? ! followed by space) in its place before calling it.
"""

import collections
import re
from typing import Optional, Tuple

from lm.data.prep.config import CleanConfig

_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


class _OfflineSentenceTokenizer:
  """Stands in for NLTK punkt inside c4_utils (no model download)."""

  def tokenize(self, text):
    return [s for s in _SENTENCE_END.split(text) if s]


def _c4_utils():
  from tensorflow_datasets.text import c4_utils  # Heavy: import when enabled.
  if not isinstance(c4_utils._SENTENCE_TOKENIZER, _OfflineSentenceTokenizer):
    c4_utils._SENTENCE_TOKENIZER = _OfflineSentenceTokenizer()
  return c4_utils


def clean_lines(text: str, cfg: CleanConfig
                ) -> Tuple[Optional[str], Optional[str], collections.Counter]:
  """Returns (cleaned text or None, removal reason or None, line counts).

  The reason is "clean:<rule>" (loremipsum, squigglybracket,
  too_few_sentences) when C4 drops the whole document.
  """
  c4 = _c4_utils()
  counts = collections.Counter()

  def count(name, amount=1):
    counts[name] += amount

  pages = list(c4.get_clean_page_fn()(
      c4.PageFeatures(text=text), counter_inc_fn=count,
      min_words_per_line=cfg.min_words_per_line,
      min_num_sentences=cfg.min_num_sentences,
      max_word_length=cfg.max_word_length))
  if pages:
    return pages[0].text, None, counts
  dropped = [k for k in counts if k.startswith("filtered:")]
  return None, "clean:" + dropped[0].split(":", 1)[1], counts
